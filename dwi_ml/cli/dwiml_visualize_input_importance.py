"""Which input features and neighbours a trained model relies on."""

from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.atomic import atomic_output_file, output_group, write_json_atomic
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.script_args import (
    add_experiment_group_args,
    add_experiment_subject_args,
    add_model_run_args,
    add_output_args,
    check_model_run_args,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.monitoring.input_importance import (
    compute_input_importance,
    draw_importance,
    importance_as_dict,
    parse_feature_groups,
)
from dwi_ml.training.experiment_builder import load_experiment_model_for

DESCRIPTION = """\
Measure how much a trained model relies on each of its inputs, on one
subject's data. The experiment's model (its best model, or its latest
epoch with --use_latest_epoch; Learn2track or a Transformer, any input
embedding) runs over the subject's streamlines as in validation (no
augmentation), and its own loss, summed over the predictions, is
backpropagated to the interpolated inputs. For each input column (feature
f of neighbour k) it reports, averaged over the points whose input the
model reads, the mean |gradient x input|, to first order how much the
loss would change if that value were replaced by 0 (the mean of a
standardized input), and the mean |gradient|. Per feature, these are
summed over the neighbours; per neighbour, over the features; per group of
--feature_names, over the group's features.

Read them as a local, first-order measure: the slope of the loss at the
data, not the effect of a large change. They depend on the inputs' scale
(a feature of larger values gets a larger gradient x input): standardize
the inputs when creating the HDF5 to compare features. Each value is for
one input alone: interactions between inputs are not captured. The
previous directions added to the input come from the streamline, and are
not measured.

OUT_PNG gets a bar chart per feature (coloured by group) and, when the
model reads a neighbourhood, one per neighbour, labelled by its offset in
mm (RAS axes); --out_json the values per column (column = neighbour *
nb_features + feature), per feature, per neighbour and per group, with the
number of points. Every input is checked, and existing outputs refused
without -f, before any work."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    add_experiment_subject_args(parser)
    parser.add_argument("out_png", metavar="OUT_PNG",
                        help="Output figure (.png).")
    model = parser.add_argument_group("Model and data")
    add_model_run_args(model)
    add_experiment_group_args(model)
    model.add_argument("--max_streamlines", type=int, default=1000,
                       metavar="N",
                       help="Use up to N streamlines of the subject, evenly "
                            "spread over its file.")
    outputs = parser.add_argument_group("Outputs")
    outputs.add_argument("--feature_names", nargs="+",
                         metavar="NAME START",
                         help="Name groups of input features: each NAME "
                              "then its first feature (0-based), groups "
                              "running to the next START, the first at 0; "
                              "e.g. T1 0 FA 1 fODF 2. Default: no groups.")
    outputs.add_argument("--out_json", metavar="FILE",
                         help="Also save the values to this .json file.")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_visualize_input_importance.py."""
    args = parse_script_args(_build_parser(), argv)
    check_model_run_args(args)
    check_int("--max_streamlines", args.max_streamlines, 1)
    check_output_free(args.out_png, args.overwrite, extensions=(".png",))
    if args.out_json:
        check_output_free(args.out_json, args.overwrite, "--out_json",
                          extensions=(".json",))
    model, input_group, streamline_group = load_experiment_model_for(args)
    groups = parse_feature_groups(args.feature_names, model.nb_features)

    importance = compute_input_importance(
        model, args.hdf5_file, args.subject_id, input_group, streamline_group,
        args.batch_size, args.device, args.max_streamlines)
    figure = draw_importance(importance, groups)
    with output_group():
        with atomic_output_file(args.out_png) as tmp_path:
            figure.savefig(tmp_path, format="png")
        if args.out_json:
            write_json_atomic(args.out_json, {
                "subject": args.subject_id,
                "model": "latest epoch" if args.use_latest_epoch else "best",
                **importance_as_dict(importance, groups),
                **run_record(args, input_paths=("experiment_path",
                                                "hdf5_file"),
                             other_inputs=("subject_id",),
                             leave_out=("out_png", "out_json"))})
    values = f" and the values in {args.out_json}" if args.out_json else ""
    print(f"Saved the figure in {args.out_png}{values}.")


if __name__ == "__main__":
    main()
