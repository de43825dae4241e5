"""Score a predicted connectivity matrix against the true one."""
import logging
import os

from dwi_ml.data.hdf5.connectivity import check_count_matrix
from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.safe_load import load_npy_file
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.tracking.connectivity import score_connectivity
from dwi_ml.tracking.scoring_io import (
    check_npy_extension,
    format_scores,
    scores_for_json,
)

DESCRIPTION = """\
Compare a predicted connectivity matrix (e.g. of a tracked tractogram) with
the true one (e.g. of the subject's reference tractogram), both .npy
matrices of the same shape from dwiml_compute_connectivity_matrix_from_*.py
(counts or booleans; upper-triangular or symmetric). A connection is a pair
of nodes with a non-zero entry.
  true_connections_found: share of the true connections that are predicted
    (recall).
  predicted_connections_true: share of the predicted connections that are
    true (precision).
  connections_f1: 2 x found / (nb true + nb predicted connections).
  streamlines_in_true_connections: share of the predicted streamlines (sum
    of the predicted counts) that join a true connection; 1 minus the
    reference dwi_ml's "connectivity loss". Meaningless for a binary
    predicted matrix, which counts connections; for a weighted one
    (floats), the share of its weights.
A share whose denominator is 0 is undefined (0 / 0), shown as n/a (null in
the JSON): recall without true connections, precision without predicted
ones, F1 without either, streamlines_in_true_connections without predicted
streamlines.
The scores are printed and, with --out_json, saved in a JSON dict: one key
per score (counts as integers), then "inputs" (the two matrices' absolute
paths), "options" and "dwi_ml_version"."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("predicted_matrix", help="Matrix to score (.npy).")
    parser.add_argument("true_matrix", help="Reference matrix (.npy).")
    parser.add_argument("--out_json", metavar="FILE",
                        help="Save the scores in this .json file.")
    add_output_args(parser)
    return parser


def _load_matrix(path):
    check_npy_extension(path, "matrix")
    matrix = load_npy_file(path, "matrix")
    check_count_matrix(matrix, f"matrix '{path}'")
    return matrix


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.predicted_matrix, args.true_matrix)
    if args.out_json is not None:
        check_output_free(args.out_json, args.overwrite,
                          extensions=(".json",))

    predicted = _load_matrix(args.predicted_matrix)
    true = _load_matrix(args.true_matrix)
    if predicted.shape != true.shape:
        raise DwiMLUserError(
            f"matrices '{args.predicted_matrix}' ({len(predicted)} x "
            f"{len(predicted)}) and '{args.true_matrix}' ({len(true)} x "
            f"{len(true)}): expected the same shape (the same labels or "
            "blocs).")
    scores = score_connectivity(predicted, true)
    print(format_scores(scores))
    if args.out_json is not None:
        record = run_record(args, input_paths=("predicted_matrix",
                                               "true_matrix"),
                            leave_out=("out_json",))
        write_json_atomic(args.out_json, {**scores_for_json(scores),
                                          **record}, strict=False)
        logging.info("Saved %s.", os.path.abspath(args.out_json))


if __name__ == "__main__":
    main()
