"""Count a tractogram's streamlines between the labels of a parcellation."""
import logging

import numpy as np

from dwi_ml.io_utils.atomic import atomic_output_file, output_group, save_npy
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.output_folders import check_output_free
from dwi_ml.io_utils.script_args import (
    check_inputs_exist,
    make_parser,
    parse_script_args,
)
from dwi_ml.tracking.connectivity import connectivity_from_labels, label_nodes
from dwi_ml.tracking.scoring_io import (
    add_matrix_output_args,
    check_matrix_fits,
    check_matrix_output,
    load_label_volume,
    load_tractogram_for_connectivity,
)

DESCRIPTION = """\
Compute the connectivity matrix of a tractogram between the labels of a
parcellation (a NIfTI of integers >= 0, on the subject's grid). Each
streamline is counted once, between the labels of the voxels of its first
and last points, at [min(i, j), max(i, j)]: the matrix is upper-triangular,
as the reference dwi_ml's. Rows and columns are the labels present in the
volume, in increasing order (as in the reference dwi_ml): with a
background (label 0), row 0 gathers the endpoints there or outside the
volume, and the matrix sums to the number of streamlines; without one, a
streamline with an endpoint outside the volume is not counted (a warning
says how many). --out_labels writes the label of each row. Saved as .npy
(int64 counts, or bool with --binary).

Endpoints outside the volume are kept as above (tracking may stop just
past the border), but a tractogram whose endpoints all lie outside the
volume is refused: it is not in that volume's space. More than half of its
points outside is warned. A tractogram without streamlines gives a matrix
of zeros, with a warning."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("in_tractogram", help="Tractogram (.trk, .tck or "
                                              ".trx).")
    parser.add_argument("in_labels", help="NIfTI of integer labels >= 0.")
    add_matrix_output_args(parser)
    parser.add_argument("--out_labels", metavar="FILE",
                        help="Also write the label of each row, one per "
                             "line, in this .txt file. Default: not "
                             "written.")
    return parser


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.in_tractogram, args.in_labels)
    check_matrix_output(args)
    if args.out_labels is not None:
        check_output_free(args.out_labels, args.overwrite, "--out_labels",
                          extensions=(".txt",))

    labels, _ = load_label_volume(args.in_labels)
    check_matrix_fits(len(label_nodes(labels)),
                      f"labels '{args.in_labels}'")
    sft = load_tractogram_for_connectivity(args.in_tractogram, args.in_labels)
    matrix = connectivity_from_labels(sft.streamlines, labels)
    nb_left_out = len(sft) - int(matrix.sum())
    if nb_left_out:
        logging.warning(
            "%d of %d streamlines not counted: an endpoint outside the "
            "volume, which has no background (label 0).", nb_left_out,
            len(sft))
    nodes = label_nodes(labels)
    with output_group():
        save_npy(args.out_matrix, matrix > 0 if args.binary else matrix)
        if args.out_labels is not None:
            with atomic_output_file(args.out_labels) as tmp_path:
                np.savetxt(tmp_path, nodes, fmt="%d")
    logging.info("Labels of the rows: %s.", " ".join(map(str, nodes)))
    print(f"Saved the {len(matrix)} x {len(matrix)} matrix of "
          f"{len(sft) - nb_left_out} streamlines in {args.out_matrix}.")


if __name__ == "__main__":
    main()
