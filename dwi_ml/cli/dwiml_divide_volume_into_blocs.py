"""Label each voxel of a volume with its bloc, to see the blocs of a
connectivity matrix."""
import logging

from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.nifti_files import (
    check_nifti_extension,
    save_nifti_atomic,
    scanner_image,
)
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.tracking.connectivity import (
    bloc_label_volume,
    check_nb_blocs_fit,
    parse_nb_blocs,
)
from dwi_ml.tracking.scoring_io import load_grid

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Write a label volume (NIfTI, int32) on the grid of IN_VOLUME (its first 3
dimensions and its affine) where each voxel holds the number of its bloc,
numbered as dwiml_compute_connectivity_matrix_from_blocs.py numbers them:
label i is row i of that script's matrix for the same NB_BLOCS, so that a
connection can be found in a viewer. The volume is cut into NB_BLOCS equal
parts along each axis (one value for all axes, or three); a voxel takes the
bloc of its centre: along an axis of S voxels cut in n parts, voxel x is in
part floor((x + 0.5) * n / S), and blocs are numbered in C order. When S is
not a multiple of n, a voxel on the border of two blocs holds points of
both: the matrix counts each endpoint by its exact position. Every input
is checked, and an existing output refused without -f, before any work."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("in_volume", metavar="IN_VOLUME",
                        help="NIfTI giving the voxel grid (shape, affine).")
    parser.add_argument("nb_blocs", type=int, nargs="+", metavar="NB_BLOCS",
                        help="Blocs per axis: 1 value, or 3.")
    parser.add_argument("out_labels", metavar="OUT_LABELS",
                        help="Output label volume (.nii or .nii.gz).")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_divide_volume_into_blocs.py."""
    args = parse_script_args(_build_parser(), argv)
    nb_blocs = parse_nb_blocs(args.nb_blocs)
    check_inputs_exist(args.in_volume, what="volume")
    check_nifti_extension(args.out_labels)
    check_output_free(args.out_labels, args.overwrite)
    shape, affine = load_grid(args.in_volume)
    check_nb_blocs_fit(nb_blocs, shape)
    labels = bloc_label_volume(shape, nb_blocs)
    save_nifti_atomic(scanner_image(labels, affine), args.out_labels)
    print(f"Saved the {' x '.join(map(str, nb_blocs))} blocs (labels 0 to "
          f"{labels.max()}) in {args.out_labels}.")


if __name__ == "__main__":
    main()
