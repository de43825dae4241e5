"""Draw experiments' logs: one panel per group of logs, experiments overlaid.

Each experiment has one colour in every panel; each log of a panel has one
line style. A star marks each experiment's best epoch on its per-epoch
curves. Per-epoch logs are drawn against the epoch (0-based, as in
``best_epoch.json``), per-batch logs against the global batch index.
"""
import logging
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.monitoring.log_reading import is_per_batch

logger = logging.getLogger(__name__)

PANEL_SIZE_INCHES = (6.4, 4.0)
DPI = 100
MAX_COLUMNS = 2
LINE_STYLES = ("-", "--", ":", "-.")
# Logs spanning decades (e.g. a decaying learning rate) read best on a log
# scale; a panel holding only such logs always uses one.
LOG_SCALE_LOGS = frozenset({"learning_rate"})


@dataclass(frozen=True)
class Panel:
    """One subplot: a title and the logs drawn in it."""
    title: str
    log_names: tuple


DEFAULT_PANELS = (
    Panel("Loss", ("train_loss", "valid_loss")),
    Panel("Gradient norm", ("grad_norm_before_clip", "grad_norm_after_clip")),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Epoch time (s)", ("train_time", "valid_time")),
    Panel("Training loss per batch", ("train_loss_per_batch",)),
)


def default_panels(experiments):
    """The default panels that have data, then one panel per other log."""
    found = set().union(*(experiment.logs for experiment in experiments))
    panels = [panel for panel in DEFAULT_PANELS
              if found.intersection(panel.log_names)]
    known = {name for panel in DEFAULT_PANELS for name in panel.log_names}
    return panels + [Panel(name, (name,)) for name in sorted(found - known)]


def check_panels(panels, experiments):
    """Refuse unusable panels; warn about logs some experiments lack.

    Raises
    ------
    DwiMLUserError
        A panel mixing per-epoch and per-batch logs (their x axes differ),
        or a panel none of whose logs exists in any experiment.
    """
    for panel in panels:
        if len({is_per_batch(name) for name in panel.log_names}) > 1:
            raise DwiMLUserError(
                f"--graph '{panel.title}': cannot mix per-batch and per-epoch "
                f"logs in one panel ({', '.join(panel.log_names)}).")
        if not any(name in experiment.logs for name in panel.log_names
                   for experiment in experiments):
            available = sorted(set().union(*(e.logs for e in experiments)))
            raise DwiMLUserError(
                f"--graph '{panel.title}': none of the logs "
                f"{', '.join(panel.log_names)} exists in any experiment "
                f"(found: {', '.join(available)}).")
    wanted = list(dict.fromkeys(name for panel in panels
                                for name in panel.log_names))
    for experiment in experiments:
        missing = [name for name in wanted if name not in experiment.logs]
        if missing:
            logger.warning("experiment '%s' has no log %s: not drawn for it.",
                           experiment.label, ", ".join(missing))


def moving_average(values, window):
    """Mean of each ``window`` consecutive values (length ``n - window + 1``)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _draw_curve(ax, values, colour, style, smooth):
    x = np.arange(len(values))
    if smooth > 1 and len(values) >= smooth:
        ax.plot(x, values, color=colour, linestyle=style, linewidth=0.8,
                alpha=0.25)
        ax.plot(x[smooth - 1:], moving_average(values, smooth), color=colour,
                linestyle=style)
    else:
        ax.plot(x, values, color=colour, linestyle=style)


def _draw_best_epoch(ax, experiment, values, colour):
    epoch = experiment.best_epoch
    if epoch is None or not 0 <= epoch < len(values) or \
            not math.isfinite(values[epoch]):
        return False
    ax.plot([epoch], [values[epoch]], marker="*", markersize=13,
            color=colour, markeredgecolor="black", linestyle="none")
    return True


def draw_panel(ax, panel, experiments, colours, smooth=1):
    """Draw one panel's logs of every experiment, with its legend.

    ``smooth`` > 1 adds a moving average over that many batches to
    per-batch logs (the raw values stay, faint).
    """
    per_batch = is_per_batch(panel.log_names[0])
    handles, any_best = [], False
    for experiment, colour in zip(experiments, colours):
        drawn = False
        for name, style in zip(panel.log_names, _styles(panel)):
            values = experiment.logs.get(name)
            if values is None:
                continue
            drawn = True
            _draw_curve(ax, values, colour, style, smooth if per_batch else 1)
            if not per_batch:
                any_best |= _draw_best_epoch(ax, experiment, values, colour)
        if drawn:
            handles.append(Line2D([], [], color=colour,
                                  label=experiment.label))
    if len(panel.log_names) > 1:
        handles += [Line2D([], [], color="black", linestyle=style, label=name)
                    for name, style in zip(panel.log_names, _styles(panel))]
    if any_best:
        handles.append(Line2D([], [], marker="*", markersize=10, color="grey",
                              markeredgecolor="black", linestyle="none",
                              label="best epoch"))
    ax.legend(handles=handles, fontsize="small")
    ax.set_title(panel.title)
    ax.set_xlabel("batch" if per_batch else "epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if LOG_SCALE_LOGS.issuperset(panel.log_names):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _styles(panel):
    return [LINE_STYLES[i % len(LINE_STYLES)]
            for i in range(len(panel.log_names))]


def figure_size_inches(nb_panels):
    """(width, height) of a figure of ``nb_panels`` panels, 2 per row."""
    nb_columns = min(MAX_COLUMNS, nb_panels)
    nb_rows = math.ceil(nb_panels / MAX_COLUMNS)
    return (PANEL_SIZE_INCHES[0] * nb_columns,
            PANEL_SIZE_INCHES[1] * nb_rows)


def draw_figure(figure, panels, experiments, xlim=None, ylim=None,
                log_y=False, smooth=1):
    """Fill ``figure`` (a matplotlib Figure) with one subplot per panel.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        Sized here with :func:`figure_size_inches` at :data:`DPI`.
    panels : list of Panel
    experiments : list of dwi_ml.monitoring.log_reading.ExperimentLogs
    xlim, ylim : (float, float) or None
        Applied to every panel (epochs or batches on x).
    log_y : bool
        Log scale on every panel's y axis.
    smooth : int
        Moving-average window (batches) for per-batch logs; 1: none.
    """
    figure.set_size_inches(*figure_size_inches(len(panels)))
    figure.set_dpi(DPI)
    figure.set_layout_engine("constrained")
    nb_columns = min(MAX_COLUMNS, len(panels))
    axes = figure.subplots(math.ceil(len(panels) / nb_columns), nb_columns,
                           squeeze=False).ravel()
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = [cycle[i % len(cycle)] for i in range(len(experiments))]
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, experiments, colours, smooth)
        if log_y:
            ax.set_yscale("log")
        if xlim is not None:
            ax.set_xlim(*xlim)
        if ylim is not None:
            ax.set_ylim(*ylim)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
