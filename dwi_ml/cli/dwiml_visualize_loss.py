"""See where along the streamlines a trained model's loss is high."""

from dwi_ml.io_utils.arg_checks import check_int, extension_of
from dwi_ml.io_utils.atomic import atomic_output_file, output_group
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
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
from dwi_ml.monitoring.loss_per_point import (
    compute_subject_point_losses,
    draw_histograms,
    save_loss_tractogram,
)
from dwi_ml.training.experiment_builder import load_experiment_model_for

OUT_EXTENSIONS = (".trk", ".trx")
HISTOGRAM_SUFFIX = "_histogram.png"

DESCRIPTION = """\
Run the model of an experiment (its best model, or its latest epoch with
--use_latest_epoch) over every streamline of one subject of a dwi_ml HDF5
file, as in validation (no augmentation), and write the streamlines with
the loss at each point as data_per_point, to colour them in a viewer
(e.g. MI-Brain, or scil_viz_bundle.py). Point i holds the loss of the
direction predicted there, towards point i + 1: key 'loss' and, for models
with an end-of-streamline (EOS) output, its terms 'loss_direction' and
'loss_eos'; key 'angular_error_deg' holds the angle in degrees between the
model's most likely direction and the true one (in mm). Without EOS the
last point of each streamline predicts nothing: its values are NaN. With
EOS it holds the loss of stopping there ('loss_eos'; its 'loss_direction'
is 0, as in training: no direction to predict), and a NaN angle. The
streamlines
are those the model saw (resampled to its step size, or to the format of
the HDF5 it was trained on, when the HDF5's differs), in the subject's
space (RAS mm, on the streamline group's grid).
The mean of 'loss' over the points with a value is the subject's loss of
dwiml_evaluate_model.py. A histogram of each value is written to a PNG
file. OUT_TRACTOGRAM is a .trk or .trx file (a .tck file cannot hold
data_per_point). Every input is checked, and existing outputs refused
without -f, before any work."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    add_experiment_subject_args(parser)
    parser.add_argument("out_tractogram", metavar="OUT_TRACTOGRAM",
                        help="Output .trk or .trx.")
    model = parser.add_argument_group("Model and data")
    add_model_run_args(model)
    add_experiment_group_args(model, "to evaluate")
    outputs = parser.add_argument_group("Histogram")
    outputs.add_argument("--out_histogram", metavar="PNG",
                         help="Histogram figure (.png). Default: OUT_TRACTOGRAM "
                              f"without its extension + '{HISTOGRAM_SUFFIX}'.")
    outputs.add_argument("--nb_bins", type=int, default=50,
                         help="Bins of each histogram.")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_visualize_loss.py."""
    args = parse_script_args(_build_parser(), argv)
    check_model_run_args(args)
    check_int("--nb_bins", args.nb_bins, 1)
    extension = extension_of(args.out_tractogram)
    if extension not in OUT_EXTENSIONS:
        raise DwiMLUserError(
            f"output '{args.out_tractogram}': expected one of "
            f"{', '.join(OUT_EXTENSIONS)} (data_per_point), found "
            f"'{extension or 'none'}'.")
    root = args.out_tractogram[:len(args.out_tractogram) - len(extension)]
    out_histogram = args.out_histogram or root + HISTOGRAM_SUFFIX
    check_output_free(args.out_tractogram, args.overwrite)
    check_output_free(out_histogram, args.overwrite, "--out_histogram",
                      extensions=(".png",))
    model, input_group, streamline_group = load_experiment_model_for(args)

    point_losses = compute_subject_point_losses(
        model, args.hdf5_file, args.subject_id, input_group,
        streamline_group, args.batch_size, args.device)
    figure = draw_histograms(point_losses, args.nb_bins)
    with output_group():
        save_loss_tractogram(point_losses, args.out_tractogram)
        with atomic_output_file(out_histogram) as tmp_path:
            figure.savefig(tmp_path, format="png")
    print(f"Saved the loss per point in {args.out_tractogram} and its "
          f"histograms in {out_histogram}.")


if __name__ == "__main__":
    main()
