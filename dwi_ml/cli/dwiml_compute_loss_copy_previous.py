"""The loss of "copy the previous direction" on a subset of an HDF5 file.

Streamlines are smooth: predicting at each point the direction of the
segment that led there already scores well. This rule is the baseline a
model's loss must beat. The script prints, and with --out saves as JSON,
each subject's mean loss of the rule, its number of loss points, and its
mean angular error in degrees (the angle between each point's previous and
next segments, in mm: the streamlines' turning per step).

With --experiment, the rule is scored as the experiment's model is: its
direction getter's loss, its streamline format (step size, number of points
or compression; for a model without one, the format of its training file's
streamlines, as dwiml_evaluate_model.py reads another file) and, by
default, its streamline group. Compare the result
with the experiment's validation loss (--subset validation, the default),
or with dwiml_evaluate_model.py's loss on the same subset. With EOS the
rule has no stopping output: compare with the model's loss_direction.
Without --experiment, choose the loss with --dg_key and its options and the
format with --step_size, --nb_points or --compress.

The rule's output is the previous segment's direction, at the targets'
norm (--normalize_targets: copying the previous target), so that an L2
loss measures the turn, not a norm the model has to learn.
At the first point of a streamline there is no previous direction: the rule
outputs a zero vector there (cosine loss 1, L2 loss the target's norm), as
a model sees no previous direction there either. --skip_first_point leaves
those points out. n_points counts the loss points; angular_error_deg is the
mean over the points with a previous direction (without
--skip_first_point, one point fewer per streamline). Only regression
getters are accepted: the rule gives no probability, so the likelihood
losses of the other getters are undefined.
"""
import os

from dwi_ml.data.processing.input_spec import add_streamline_format_args
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.models.direction_getters import make_direction_getter
from dwi_ml.models.direction_getters.regression import REGRESSION_KEYS
from dwi_ml.models.model_io import load_model_of_experiment
from dwi_ml.training.copy_previous import (
    check_regression_getter,
    copy_previous_losses_on_hdf5,
)
from dwi_ml.training.evaluation import subject_table
from dwi_ml.training.experiment_builder import (
    check_hdf5_groups,
    hdf5_group_names,
)
from dwi_ml.training.training_file import format_as_in_training

# Options that the experiment sets when --experiment is given.
_MODEL_OPTIONS = ("dg_key", "normalize_targets", "normalize_outputs",
                  "add_eos", "step_size", "nb_points", "compress")


def _build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("hdf5_file", metavar="HDF5", help="dwi_ml HDF5 file.")
    data = parser.add_argument_group("Data")
    data.add_argument("--subset", default="validation",
                      choices=("training", "validation", "testing"),
                      help="Split whose subjects are scored.")
    data.add_argument("--streamline_group", metavar="GROUP",
                      help="Streamline group. Default: the experiment's, or "
                           "the file's only one.")
    data.add_argument("--batch_size", type=int, default=1000,
                      help="Streamlines per pass.")
    data.add_argument("--skip_first_point", action="store_true",
                      help="Leave out each streamline's first point, which "
                           "has no previous direction.")
    model = parser.add_argument_group(
        "Loss and format, from an experiment or given")
    model.add_argument("--experiment", metavar="EXPERIMENT",
                       help="Score the rule as this experiment's model: its "
                            "loss, format and streamline group.")
    model.add_argument("--use_latest_epoch", action="store_true",
                       help="With --experiment: read the checkpoint's model, "
                            "not best_model/ (the same settings).")
    model.add_argument("--dg_key", choices=REGRESSION_KEYS,
                       help="The loss, without --experiment. Default: "
                            "cosine-regression.")
    model.add_argument("--normalize_targets", type=float, metavar="NORM",
                       help="L2 getters: scale targets to this norm (default "
                            "1); the rule's outputs, the previous segments' "
                            "directions, are scaled as the targets.")
    model.add_argument("--normalize_outputs", type=float, metavar="NORM",
                       help="L2 getters: scale the rule's outputs to this "
                            "norm, as a model's (default: unscaled).")
    model.add_argument("--add_eos", action="store_true",
                       help="Score the rows of a model with EOS (one per "
                            "point; 0 where the target is 'stop').")
    add_streamline_format_args(model)
    parser.add_argument("--out", metavar="JSON",
                        help="Also save the results to this .json file.")
    add_output_args(parser)
    return parser


def _given_model_options(args):
    defaults = {"add_eos": False}
    return [f"--{name}" for name in _MODEL_OPTIONS
            if getattr(args, name) not in (None, defaults.get(name))]


def _getter_and_format(args):
    """The direction getter and streamline format, and the group default."""
    if args.experiment is not None:
        given = _given_model_options(args)
        if given:
            raise DwiMLUserError(
                f"argument {given[0]}: set by --experiment (its model's "
                f"loss and format), found both.")
        check_inputs_exist(args.experiment, what="experiment")
        # None for a model trained from Python: the file's only group.
        group = (read_parameters(args.experiment).get("loader")
                 or {}).get("streamline_group")
        model = load_model_of_experiment(args.experiment,
                                         args.use_latest_epoch)
        if not hasattr(model, "direction_getter"):
            raise DwiMLUserError(
                f"--experiment '{args.experiment}': expected a model with a "
                f"direction getter, found a {type(model).__name__}.")
        check_regression_getter(model.direction_getter,
                                f"--experiment '{args.experiment}'")
        # Its training file's format when the model has none of its own,
        # as dwiml_evaluate_model.py reads it.
        return (model.direction_getter, format_as_in_training(
            args.experiment, args.hdf5_file,
            model.input_spec.streamline_format), group)
    if args.use_latest_epoch:
        raise DwiMLUserError(
            "argument --use_latest_epoch: an option of --experiment, found "
            "without it.")
    dg_args = {"add_eos": args.add_eos}
    for name in ("normalize_targets", "normalize_outputs"):
        if getattr(args, name) is not None:
            dg_args[name] = getattr(args, name)
    getter = make_direction_getter(args.dg_key or "cosine-regression", 1,
                                   dg_args)
    streamline_format = StreamlineFormat(step_size=args.step_size,
                                         nb_points=args.nb_points,
                                         compress=args.compress)
    return getter, streamline_format, None


def _streamline_group(args, default):
    if args.streamline_group is not None:
        return args.streamline_group
    if default is not None:
        return default
    _, groups = hdf5_group_names(args.hdf5_file)
    if len(groups) != 1:
        raise DwiMLUserError(
            f"--streamline_group: '{args.hdf5_file}' has "
            f"{len(groups)} streamline groups ({', '.join(groups) or 'none'});"
            f" expected one, or --streamline_group to choose.")
    return groups[0]


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_compute_loss_copy_previous.py."""
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    check_int("--batch_size", args.batch_size, 1)
    getter, streamline_format, default_group = _getter_and_format(args)
    group = _streamline_group(args, default_group)
    check_hdf5_groups(args.hdf5_file, None, group)
    if args.out is not None:
        check_output_free(args.out, args.overwrite, extensions=(".json",))

    results = copy_previous_losses_on_hdf5(
        args.hdf5_file, args.subset, group, getter, streamline_format,
        args.skip_first_point, args.batch_size)
    if len(results) == 1:
        raise DwiMLUserError(
            f"--subset {args.subset}: '{args.hdf5_file}' has no "
            f"{args.subset} subject.")
    print("\n".join(subject_table(results, ["loss", "angular_error_deg"])))
    print(f"'Copy the previous direction' with {getter.key}"
          f"{' (EOS rows)' if getter.add_eos else ''}, streamlines "
          f"{_format_text(streamline_format)}"
          f"{', first points left out' if args.skip_first_point else ''}.")
    if args.out is not None:
        write_json_atomic(args.out, {
            "hdf5_file": os.path.abspath(args.hdf5_file),
            "subset": args.subset, "streamline_group": group,
            "experiment": (None if args.experiment is None
                           else os.path.abspath(args.experiment)),
            "dg_key": getter.key,
            "dg_args": getter.params,
            "streamline_format": streamline_format.as_dict(),
            "skip_first_point": args.skip_first_point, "results": results,
            **run_record(args, input_paths=("hdf5_file", "experiment"),
                         leave_out=("out",))})
        print(f"Saved to {args.out}")


def _format_text(streamline_format):
    options = {k: v for k, v in streamline_format.as_dict().items()
               if v is not None}
    if not options:
        return "as stored"
    return ", ".join(f"{k} {v}" for k, v in options.items())


if __name__ == "__main__":
    main()
