"""How two logs of experiments move together across epochs.

For each experiment and over all of them pooled, prints the correlation of
LOG1 and LOG2 over the epochs where both have a value: Pearson's r (a
linear relation) and Spearman's rho (a monotonic one, on ranks). For
example, valid_loss against tracking_f1 (tracking validation,
docs/tracking.md) says how far a lower loss goes with a better
tractogram. Writes a PNG figure (each log against the epochs, then LOG2
against LOG1 with the least-squares line of the pooled epochs) and, with
--out_json, the values. A correlation needs 3 epochs or more and logs that
are not constant; else it is n/a (JSON null). Only LOG1 and LOG2 are read
from logs/. An --ignore_first_epochs that leaves no epoch in any experiment
is refused; an experiment left without one is named in a warning.

Tracking metrics keep their last value between tracking epochs
(--tracking_validation_every N > 1): those repeated values count as
epochs too; train with --tracking_validation_every 1 to correlate them.
"""
import logging
import os

from matplotlib.figure import Figure

from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.atomic import atomic_output_file, output_group, write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.provenance import run_record
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.monitoring.log_correlation import (
    correlate_logs,
    draw_correlation,
    paired_values,
)
from dwi_ml.monitoring.log_reading import is_per_batch, read_experiments
from dwi_ml.monitoring.plotting import DPI

logger = logging.getLogger(__name__)


def _build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="Experiment folders (with logs/).")
    parser.add_argument("log1", metavar="LOG1",
                        help="First log (a file of logs/ without .npy).")
    parser.add_argument("log2", metavar="LOG2",
                        help="Log correlated with LOG1.")
    group = parser.add_argument_group("Options")
    group.add_argument("--ignore_first_epochs", type=int, default=0,
                       metavar="N",
                       help="Leave out the first N epochs of each "
                            "experiment, where every log moves fast.")
    group.add_argument("--rename_log1", metavar="NAME",
                       help="Name of LOG1 on the figure.")
    group.add_argument("--rename_log2", metavar="NAME",
                       help="Name of LOG2 on the figure.")
    group.add_argument("--out", metavar="PNG",
                       help="The figure (.png). Default: FIRST_EXPERIMENT/"
                            "logs_correlation_LOG1_LOG2.png.")
    group.add_argument("--out_json", metavar="FILE",
                       help="Also save the correlations to this .json file.")
    add_output_args(parser)
    return parser


def _nb_paired_epochs(experiment, log1, log2):
    """Epochs up to the last one where both logs have a value (0: none)."""
    epochs = paired_values(experiment, log1, log2)[0]
    return int(epochs[-1]) + 1 if len(epochs) else 0


def _check_epochs_left(experiments, per_experiment, args):
    """Refuse when no experiment has an epoch to correlate; warn, naming
    them, when only some have none (they add nothing)."""
    found = [_nb_paired_epochs(experiment, args.log1, args.log2)
             for experiment in experiments]
    both = f"both {args.log1} and {args.log2}"
    if not any(result.nb_epochs for result in per_experiment):
        if args.ignore_first_epochs and any(found):
            raise DwiMLUserError(
                f"--ignore_first_epochs: expected fewer than the epochs of "
                f"the experiments, found {args.ignore_first_epochs} while "
                f"they have {max(found)} epochs at most with {both}: no "
                "epoch is left to correlate.")
        raise DwiMLUserError(
            f"no epoch where {both} have a value, in any experiment: "
            "nothing to correlate.")
    empty = [f"{result.label} ({nb} epochs with {both})"
             for result, nb in zip(per_experiment, found)
             if not result.nb_epochs]
    if empty:
        logger.warning(
            "No epoch to correlate after --ignore_first_epochs %d in %s: "
            "they add nothing to the figure or the pooled correlation.",
            args.ignore_first_epochs, ", ".join(empty))


def _value(number):
    return f"{'n/a':>10}" if number is None else f"{number:>10.4f}"


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_visualize_logs_correlation.py."""
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(*args.experiments, what="experiment")
    check_int("--ignore_first_epochs", args.ignore_first_epochs, 0)
    for name in (args.log1, args.log2):
        if is_per_batch(name):
            raise DwiMLUserError(
                f"log '{name}': expected a log with one value per epoch, "
                "found a per-batch log.")
    out = args.out or os.path.join(
        args.experiments[0],
        f"logs_correlation_{args.log1}_{args.log2}.png")
    check_output_free(out, args.overwrite, "--out" if args.out else "output",
                      extensions=(".png",))
    if args.out_json:
        check_output_free(args.out_json, args.overwrite, "--out_json",
                          extensions=(".json",))

    # Only the two logs: another one, malformed, is no concern here.
    experiments = read_experiments(args.experiments,
                                   names=[args.log1, args.log2])
    per_experiment, pooled, fit, pairs = correlate_logs(
        experiments, args.log1, args.log2, args.ignore_first_epochs)
    _check_epochs_left(experiments, per_experiment, args)
    names = (args.rename_log1 or args.log1, args.rename_log2 or args.log2)
    figure = Figure(figsize=(6.4, 10.0), dpi=DPI)
    draw_correlation(figure, pairs, names, per_experiment, pooled, fit)
    with output_group():
        with atomic_output_file(out) as tmp_path:
            figure.savefig(tmp_path, format="png")
        if args.out_json:
            write_json_atomic(args.out_json, {
                "log1": args.log1, "log2": args.log2,
                "ignore_first_epochs": args.ignore_first_epochs,
                "experiments": {result.label: result.as_dict()
                                for result in per_experiment},
                "all": pooled.as_dict(),
                "fit": None if fit is None else {"slope": fit[0],
                                                 "intercept": fit[1]},
                **run_record(args, leave_out=("out", "out_json"))})

    print(f"{'experiment':<24}{'epochs':>8}{'pearson':>10}{'spearman':>10}")
    for result in [*per_experiment, pooled]:
        print(f"{result.label:<24}{result.nb_epochs:>8d}"
              f"{_value(result.pearson)}{_value(result.spearman)}")
    print(f"Figure written to {out}"
          + (f"; values to {args.out_json}." if args.out_json else "."))


if __name__ == "__main__":
    main()
