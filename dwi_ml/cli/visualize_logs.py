"""Plot the training logs of one or more dwi_ml experiments."""
import csv
import logging
import os
import sys

from matplotlib.figure import Figure

from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.script_args import (
    add_overwrite_arg,
    add_verbose_arg,
    check_inputs_exist,
    check_output_free,
    make_parser,
    set_verbosity,
)
from dwi_ml.monitoring.log_reading import read_experiments
from dwi_ml.monitoring.plotting import Panel, check_panels, default_panels, draw_figure

logger = logging.getLogger(__name__)

DEFAULT_OUT_NAME = "logs_plot"

DESCRIPTION = """\
Plot the logs of dwi_ml experiments (EXPERIMENT/logs/*.npy, written by the
trainer at each epoch) in one PNG figure, one panel per group of logs:
losses (train and valid), gradient norms (before and after clipping),
learning rate (log scale), epoch times (train and valid), the per-batch
training loss, then any other log found. Experiments are overlaid, one
colour each, with a legend of their folder names; a star marks each
experiment's best epoch (best_model/best_epoch.json). A run still in
progress plots what it has; a log missing from an experiment is named in a
warning. Choose panels with --graph. The figure is written to PREFIX.png
(default: FIRST_EXPERIMENT/logs_plot.png); existing outputs are refused
without -f."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="Experiment folders (with logs/).")
    panels = parser.add_argument_group("Panels")
    panels.add_argument(
        "--graph", action="append", nargs="+", metavar=("TITLE", "LOG"),
        help="A panel titled TITLE drawing the logs LOG [LOG ...] (file "
             "names in logs/ without .npy). Repeat for several panels; "
             "replaces the default panels.")
    panels.add_argument("--xlim", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="x range of every panel (epochs, or batches "
                             "for per-batch logs).")
    panels.add_argument("--ylim", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="y range of every panel.")
    panels.add_argument("--log_y", action="store_true",
                        help="Log scale on every panel's y axis.")
    panels.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="Moving average over N batches for per-batch "
                             "logs (the raw values stay, faint).")
    outputs = parser.add_argument_group("Outputs")
    outputs.add_argument("--out", metavar="PREFIX",
                         help="Write the figure to PREFIX.png. Default: "
                              f"FIRST_EXPERIMENT/{DEFAULT_OUT_NAME}.")
    outputs.add_argument("--save_to_csv", metavar="FILE",
                         help="Also write the plotted logs' raw values: one "
                              "row per experiment and log (experiment, "
                              "metric, then one value per epoch or batch).")
    outputs.add_argument("--show", action="store_true",
                         help="Also open the figure in a window (needs a "
                              "display).")
    add_overwrite_arg(parser)
    add_verbose_arg(parser)
    return parser


def _check_range(name, limits):
    if limits is not None and not limits[0] < limits[1]:
        raise DwiMLUserError(
            f"--{name}: expected MIN < MAX, got {limits[0]:g} {limits[1]:g}.")


def _parse_graphs(graphs):
    panels = []
    for tokens in graphs or ():
        if len(tokens) < 2:
            raise DwiMLUserError(
                f"--graph: expected TITLE LOG [LOG ...], got only "
                f"'{tokens[0]}'.")
        panels.append(Panel(tokens[0], tuple(tokens[1:])))
    return panels


def _png_path(args):
    prefix = args.out or os.path.join(args.experiments[0], DEFAULT_OUT_NAME)
    return prefix if prefix.lower().endswith(".png") else prefix + ".png"


def _has_display():
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def write_logs_csv(path, experiments, log_names):
    """One row per experiment and log: label, log name, raw values.

    The header numbers the value columns (epochs, or batches for per-batch
    logs); shorter rows end with empty cells. Values are written with
    full float64 precision.
    """
    rows = [[experiment.label, name, *map(repr, experiment.logs[name].tolist())]
            for experiment in experiments for name in log_names
            if name in experiment.logs]
    width = max(len(row) for row in rows)
    with atomic_output_file(path) as tmp_path:
        with open(tmp_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["experiment", "metric", *range(width - 2)])
            writer.writerows(row + [""] * (width - len(row)) for row in rows)


@script_entry_point
def main(argv=None):
    args = _build_parser().parse_args(argv)
    set_verbosity(args.verbose)
    check_inputs_exist(*args.experiments, what="experiment")
    _check_range("xlim", args.xlim)
    _check_range("ylim", args.ylim)
    if args.smooth < 1:
        raise DwiMLUserError(
            f"--smooth: expected at least 1 batch, got {args.smooth}.")
    panels = _parse_graphs(args.graph)
    png_path = _png_path(args)
    check_output_free(png_path, args.overwrite)
    if args.save_to_csv:
        check_output_free(args.save_to_csv, args.overwrite)
    show = args.show and _has_display()
    if args.show and not show:
        logger.warning("--show: no display found (DISPLAY is not set); "
                       "the figure is only saved to %s.", png_path)

    experiments = read_experiments(args.experiments)
    panels = panels or default_panels(experiments)
    check_panels(panels, experiments)

    if show:
        import matplotlib.pyplot as plt
        figure = plt.figure()
    else:
        figure = Figure()
    draw_figure(figure, panels, experiments, args.xlim, args.ylim,
                args.log_y, args.smooth)
    with atomic_output_file(png_path) as tmp_path:
        figure.savefig(tmp_path, format="png")
    logger.info("Figure written to %s.", png_path)
    if args.save_to_csv:
        log_names = list(dict.fromkeys(name for panel in panels
                                       for name in panel.log_names))
        write_logs_csv(args.save_to_csv, experiments, log_names)
        logger.info("Values written to %s.", args.save_to_csv)
    if show:
        plt.show()
