"""Count a tractogram's streamlines between the blocs of a volume grid."""

import numpy as np

from dwi_ml.io_utils.atomic import save_npy
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.script_args import (
    check_inputs_exist,
    make_parser,
    parse_script_args,
)
from dwi_ml.tracking.connectivity import (
    check_nb_blocs_fit,
    connectivity_from_blocs,
    parse_nb_blocs,
)
from dwi_ml.tracking.scoring_io import (
    add_matrix_output_args,
    check_matrix_fits,
    check_matrix_output,
    load_grid,
    load_tractogram_for_connectivity,
)

DESCRIPTION = """\
Compute the connectivity matrix of a tractogram between blocs of the
volume: the volume of the reference NIfTI is cut into NB_BLOCS equal parts
along each axis (one value for all axes, or three), and blocs are numbered
in C order, as in the reference dwi_ml. A point at x voxels along an axis
of S voxels cut in n parts is in part floor(x * n / S), clipped to [0,
n - 1]. Each streamline is counted once, between the blocs of its first
and last points, at [min(i, j), max(i, j)]: the matrix is upper-triangular
and sums to the number of streamlines. It has prod(NB_BLOCS) rows (8000
for 20 blocs per axis: 512 MB of int64) and is saved as .npy (int64
counts, or bool with --binary).

Endpoints outside the volume count in the border blocs (tracking may stop
just past the border), but a tractogram whose endpoints all lie outside
the volume is refused: it is not in that volume's space. More than half
of its points outside is warned. A tractogram without streamlines gives a
matrix of zeros, with a warning."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("in_tractogram", help="Tractogram (.trk, .tck or "
                                              ".trx).")
    parser.add_argument("in_volume",
                        help="NIfTI giving the voxel grid (shape, affine).")
    parser.add_argument("nb_blocs", type=int, nargs="+", metavar="NB_BLOCS",
                        help="Blocs per axis: 1 value, or 3.")
    add_matrix_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    nb_blocs = parse_nb_blocs(args.nb_blocs)
    check_inputs_exist(args.in_tractogram, args.in_volume)
    check_matrix_output(args)

    shape, _ = load_grid(args.in_volume)
    check_nb_blocs_fit(nb_blocs, shape)
    check_matrix_fits(int(np.prod(nb_blocs)), f"nb_blocs {list(nb_blocs)}")
    sft = load_tractogram_for_connectivity(args.in_tractogram, args.in_volume)
    matrix = connectivity_from_blocs(sft.streamlines, shape, nb_blocs,
                                     args.binary)
    save_npy(args.out_matrix, matrix)
    print(f"Saved the {len(matrix)} x {len(matrix)} matrix "
          f"({' x '.join(map(str, nb_blocs))} blocs) of {len(sft)} "
          f"streamlines in {args.out_matrix}.")


if __name__ == "__main__":
    main()
