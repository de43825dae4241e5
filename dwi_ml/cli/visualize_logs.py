"""Plot the training logs of one or more dwi_ml experiments."""
import csv
import logging
import os
import re
import sys

from matplotlib.figure import Figure

from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.reference_options import VISUALIZE_LOGS_REFERENCE_OPTIONS
from dwi_ml.io_utils.script_args import (
    add_output_args,
    check_inputs_exist,
    check_output_free,
    make_parser,
    parse_script_args,
)
from dwi_ml.monitoring.log_expressions import add_expression_logs, parse_log_expression
from dwi_ml.monitoring.log_reading import read_experiments
from dwi_ml.monitoring.plotting import (
    OUTLIER_IQR_FACTOR,
    Panel,
    PlotOptions,
    build_figures,
    check_panels,
    default_panels,
    split_panels,
    warn_hidden_values,
)

logger = logging.getLogger(__name__)

DEFAULT_OUT_NAME = "logs_plot"

DESCRIPTION = """\
Plot the logs of dwi_ml experiments (EXPERIMENT/logs/*.npy, written by the
trainer at each epoch) in one PNG figure, one panel per group of logs:
losses (train, valid, and the
copy-previous baseline), gradient norms (before and after clipping),
learning rate (log scale), epoch times (train and valid), the per-batch
training loss, the tracking validation metrics when there are some (bundle
scores, overreach, points near the reference, endpoint distance,
connectivity score, tracking time; see docs/tracking.md), then any other
log found. Experiments are overlaid, one
colour each, with a legend of their folder names; a star marks each
experiment's best epoch (best_model/best_epoch.json) on loss and metric
curves (not on learning rates, times or gradient norms). Each y axis says
what it measures (loss, learning rate, seconds, gradient norm, or value for
other metrics). A run still in progress plots what it has; a log missing
from an experiment is named in a warning, and so is an experiment with no
log yet, left out of the figure (alone, it is an error). Choose panels with
--graph; a panel may draw computed curves: diff(a,b) is log a minus log b and
sum(a,b,...) their sum (quote them if they hold spaces; logs of different
lengths are combined over the epochs they share). The figure is written to
PREFIX.png (default: FIRST_EXPERIMENT/logs_plot.png), or, when
--nb_plots_per_fig splits the panels over several figures, to PREFIX_1.png,
PREFIX_2.png, ...; existing outputs are refused without -f."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="Experiment folders (with logs/).")
    panels = parser.add_argument_group("Panels")
    panels.add_argument(
        "--graph", action="append", nargs="+", metavar=("TITLE", "LOG"),
        help="A panel titled TITLE drawing the logs LOG [LOG ...] (file "
             "names in logs/ without .npy), or curves computed from logs: "
             "'diff(a,b)' (a - b) or 'sum(a,b,...)'. Repeat for several "
             "panels; replaces the default panels.")
    panels.add_argument("--xlim", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="x range of every panel (epochs, or batches "
                             "for per-batch logs).")
    panels.add_argument(
        "--ylim", action="append", nargs="+", metavar="VALUE",
        help="'--ylim MIN MAX': y range of every panel; '--ylim GRAPH MIN "
             "MAX': y range of the panel titled GRAPH (a --graph TITLE or a "
             "default panel's title, e.g. Loss). Repeatable; a panel's own "
             "range wins over the range of every panel. A log-scaled panel "
             "(the learning rate's, or with --log_y) keeps its own range "
             "when MIN <= 0.")
    panels.add_argument("--log_y", action="store_true",
                        help="Log scale on every panel's y axis (values <= 0 "
                             "are left out, with a warning naming each log).")
    panels.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="Moving average over N batches for per-batch "
                             "logs (the raw values stay, faint); a log of "
                             "fewer than N batches is drawn unsmoothed, with "
                             "a warning. Default: 1 (none).")
    panels.add_argument(
        "--remove_outliers", action="store_true",
        help="Leave out of each drawn curve (per experiment and log) the "
             f"values above Q3 + {OUTLIER_IQR_FACTOR:g} IQR or below Q1 - "
             f"{OUTLIER_IQR_FACTOR:g} IQR, with Q1, Q3 its quartiles and IQR "
             "= Q3 - Q1; they leave a gap. The best epoch's value stays, "
             "and the learning rate is drawn whole. The CSV keeps every "
             "value.")
    figures = parser.add_argument_group("Figures")
    figures.add_argument(
        "--nb_plots_per_fig", type=int, metavar="N",
        help="At most N panels per figure, in order; more panels make "
             "several figures, PREFIX_1.png, PREFIX_2.png, ... Default: all "
             "panels in one figure.")
    figures.add_argument(
        "--fig_size", nargs=2, type=float, metavar=("W", "H"),
        help="Size of each figure in inches (at 100 dpi: W*100 x H*100 "
             "pixels). Default: 6.4 x 4 inches per panel, 2 panels per "
             "row.")
    outputs = parser.add_argument_group("Outputs")
    outputs.add_argument("--out", metavar="PREFIX",
                         help="Write the figure to PREFIX.png (several figures: "
                              "PREFIX_1.png, PREFIX_2.png, ...). Default: "
                              f"FIRST_EXPERIMENT/{DEFAULT_OUT_NAME}.")
    outputs.add_argument("--save_to_csv", metavar="FILE",
                         help="Also write the plotted logs' raw values "
                              "(computed curves included, outliers kept) "
                              "to this .csv file: one row per experiment "
                              "and log (experiment, metric, then one value "
                              "per epoch or batch).")
    outputs.add_argument("--show", action="store_true",
                         help="Also open the figure in a window (needs a "
                              "display).")
    add_output_args(parser)
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
        for log_name in tokens[1:]:
            parse_log_expression(log_name)
        panels.append(Panel(tokens[0], tuple(tokens[1:])))
    return panels


def _float(text, what):
    try:
        return float(text)
    except ValueError:
        raise DwiMLUserError(
            f"--ylim: expected a number for {what}, got '{text}'.") from None


def parse_ylims(ylims):
    """``--ylim`` values -> (range of every panel or None, {title: range}).

    Each entry is ``[MIN, MAX]`` (every panel) or ``[GRAPH, MIN, MAX]``;
    the last one given for a target wins.
    """
    every_panel, per_panel = None, {}
    for tokens in ylims or ():
        if len(tokens) not in (2, 3):
            raise DwiMLUserError(
                f"--ylim: expected MIN MAX or GRAPH MIN MAX, got "
                f"{len(tokens)} values ({' '.join(tokens)}).")
        limits = (_float(tokens[-2], "MIN"), _float(tokens[-1], "MAX"))
        name = "ylim" if len(tokens) == 2 else f"ylim {tokens[0]}"
        _check_range(name, limits)
        if len(tokens) == 2:
            every_panel = limits
        else:
            per_panel[tokens[0]] = limits
    return every_panel, per_panel


def _check_ylim_titles(per_panel, panels):
    titles = [panel.title for panel in panels]
    for title in per_panel:
        if title not in titles:
            raise DwiMLUserError(
                f"--ylim {title}: no panel titled '{title}'; panels: "
                f"{', '.join(titles)}.")


def check_out_prefix(prefix):
    """Refuse a ``--out`` prefix that names a folder (an existing one, one
    ending with a path separator, '.' or '..'): its figures would be hidden
    files (``./..png``) or files beside it (``/root.png`` for ``~``)."""
    stem = _without_png(prefix)
    if os.path.basename(stem) in ("", ".", "..") or os.path.isdir(stem):
        raise DwiMLUserError(
            f"--out: expected a file name prefix (PREFIX.png is written), "
            f"found folder '{prefix}'; give e.g. "
            f"'{os.path.join(stem, DEFAULT_OUT_NAME)}'.")


def _without_png(prefix):
    return prefix[:-len(".png")] if prefix.lower().endswith(".png") else prefix


def png_paths(prefix, nb_figures):
    """``PREFIX.png`` for one figure, else ``PREFIX_1.png``, ... ."""
    prefix = _without_png(prefix)
    if nb_figures == 1:
        return [prefix + ".png"]
    return [f"{prefix}_{index}.png" for index in range(1, nb_figures + 1)]


def _warn_older_figures(paths):
    """Name the figures of this prefix that this call did not write (a call
    with more figures, or one figure where it now writes several): kept,
    since they may not be ours, but they show other panels."""
    prefix = (paths[0][:-len(".png")] if len(paths) == 1
              else paths[0][:-len("_1.png")])
    pattern = re.compile(re.escape(os.path.basename(prefix))
                         + r"(_[0-9]+)?\.png")
    folder = os.path.dirname(prefix) or "."
    written = {os.path.basename(path) for path in paths}
    older = sorted(name for name in os.listdir(folder)
                   if pattern.fullmatch(name) and name not in written)
    if older:
        logger.warning(
            "%s: figure(s) of this prefix from an earlier call, not "
            "written now (they show other panels): %s.", folder,
            ", ".join(older))


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


def _check_numbers(args):
    _check_range("xlim", args.xlim)
    if args.smooth < 1:
        raise DwiMLUserError(
            f"--smooth: expected at least 1 batch, got {args.smooth}.")
    if args.nb_plots_per_fig is not None and args.nb_plots_per_fig < 1:
        raise DwiMLUserError(
            f"--nb_plots_per_fig: expected at least 1, got "
            f"{args.nb_plots_per_fig}.")
    if args.fig_size is not None and min(args.fig_size) <= 0:
        raise DwiMLUserError(
            f"--fig_size: expected positive inches, got "
            f"{args.fig_size[0]:g} {args.fig_size[1]:g}.")


@script_entry_point
def main(argv=None):
    args = parse_script_args(_build_parser(), argv,
                             reference_options=VISUALIZE_LOGS_REFERENCE_OPTIONS)
    check_inputs_exist(*args.experiments, what="experiment")
    if args.out is not None:
        check_out_prefix(args.out)
    _check_numbers(args)
    ylim, panel_ylims = parse_ylims(args.ylim)
    panels = _parse_graphs(args.graph)
    experiments = read_experiments(args.experiments)
    panels = panels or default_panels(experiments)
    _check_ylim_titles(panel_ylims, panels)
    add_expression_logs(experiments, [name for panel in panels
                                      for name in panel.log_names])
    check_panels(panels, experiments)
    options = PlotOptions(
        xlim=args.xlim, ylim=ylim, panel_ylims=panel_ylims,
        log_y=args.log_y, smooth=args.smooth,
        remove_outliers=args.remove_outliers,
        nb_plots_per_fig=args.nb_plots_per_fig, fig_size=args.fig_size)

    nb_figures = len(split_panels(panels, args.nb_plots_per_fig))
    paths = png_paths(args.out or os.path.join(args.experiments[0],
                                               DEFAULT_OUT_NAME), nb_figures)
    for path in paths:
        check_output_free(path, args.overwrite)
    if args.save_to_csv:
        check_output_free(args.save_to_csv, args.overwrite,
                          extensions=(".csv",))
    show = args.show and _has_display()
    if args.show and not show:
        logger.warning("--show: no display found (DISPLAY is not set); "
                       "the figure is only saved to %s.", ", ".join(paths))

    warn_hidden_values(panels, experiments, options)
    if show:
        import matplotlib.pyplot as plt
    figures = build_figures(panels, experiments, options,
                            plt.figure if show else Figure)
    for figure, path in zip(figures, paths):
        with atomic_output_file(path) as tmp_path:
            figure.savefig(tmp_path, format="png")
    if args.save_to_csv:
        log_names = list(dict.fromkeys(name for panel in panels
                                       for name in panel.log_names))
        write_logs_csv(args.save_to_csv, experiments, log_names)
    values = (f" and the values in {args.save_to_csv}" if args.save_to_csv
              else "")
    print(f"Saved the {'figure' if len(paths) == 1 else 'figures'} in "
          f"{', '.join(paths)}{values}.")
    _warn_older_figures(paths)
    if show:
        plt.show()


if __name__ == "__main__":
    main()
