"""Draw experiments' logs: one panel per group of logs, experiments overlaid.

Each experiment has one colour in every panel; each log of a panel has one
line style. A star marks each experiment's best epoch on its per-epoch
loss and metric curves (not on learning rates, times or gradient norms,
whose value at the best epoch means nothing). Per-epoch logs are drawn
against the epoch (0-based, as in ``best_epoch.json``), per-batch logs
against the global batch index. Each panel's y axis is labelled with what
its logs measure (:func:`y_label`). Panels are spread over figures of at
most ``nb_plots_per_fig`` panels each.
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.monitoring.log_expressions import base_log_names, parse_log_expression
from dwi_ml.monitoring.log_reading import is_per_batch

logger = logging.getLogger(__name__)

PANEL_SIZE_INCHES = (6.4, 4.0)
DPI = 100
MAX_COLUMNS = 2
# As many as the logs of the largest default panel (tracking bundles), so
# that each of its logs is told apart; a longer --graph repeats them.
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
# The dot of a value drawn alone, per line style: a dot has no line style.
DOT_MARKERS = ("o", "s", "^", "D", "v")
# Logs spanning decades (e.g. a decaying learning rate) read best on a log
# scale; a panel holding only such logs always uses one.
LOG_SCALE_LOGS = frozenset({"learning_rate"})
# Values beyond this many interquartile ranges from the quartiles are
# outliers for --remove_outliers (Tukey's "far out" fence).
OUTLIER_IQR_FACTOR = 3.0
# What a log measures (see log_kind), and the y-axis label of each kind.
KIND_LABELS = {"loss": "loss", "metric": "value",
               "learning_rate": "learning rate", "time": "seconds",
               "grad_norm": "gradient norm"}
BEST_EPOCH_KINDS = frozenset({"loss", "metric"})
# Logs of a baseline, not of the model: no best-epoch star on them (the
# copy-previous rule; with --pretrained, the starting model).
REFERENCE_LOGS = frozenset({"copy_previous_valid_loss",
                            "pretrained_valid_loss"})


@dataclass(frozen=True)
class Panel:
    """One subplot: a title and the logs drawn in it."""
    title: str
    log_names: tuple


DEFAULT_PANELS = (
    Panel("Loss", ("train_loss", "valid_loss", "copy_previous_valid_loss",
                   "pretrained_valid_loss")),
    Panel("Gradient norm", ("grad_norm_before_clip", "grad_norm_after_clip")),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Epoch time (s)", ("train_time", "valid_time")),
    Panel("Training loss per batch", ("train_loss_per_batch",)),
    # Tracking validation (dwi_ml.tracking.tracking_validation).
    Panel("Tracking: bundles", ("tracking_f1", "tracking_ol", "tracking_vc",
                                "tracking_ic", "tracking_nc")),
    Panel("Tracking: overreach", ("tracking_or",)),
    Panel("Tracking: points", ("tracking_points_within_1_vox",
                               "tracking_points_within_2_vox",
                               "tracking_points_aligned")),
    Panel("Tracking: endpoint distance (mm)", ("tracking_endpoint_distance",)),
    Panel("Tracking: connectivity score", ("connectivity_score",)),
    Panel("Tracking time (s)", ("tracking_time",)),
)


DEFAULT_PANEL_LOGS = {panel.title: panel.log_names for panel in DEFAULT_PANELS}


def default_panels(experiments):
    """The default panels that have data, each with only the logs that some
    experiment has, then one panel per other log."""
    found = set().union(*(experiment.logs for experiment in experiments))
    panels = [Panel(panel.title, tuple(name for name in panel.log_names
                                       if name in found))
              for panel in DEFAULT_PANELS
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
        if len({is_per_batch(name) for log_name in panel.log_names
                for name in base_log_names(log_name)}) > 1:
            raise DwiMLUserError(
                f"--graph '{panel.title}': cannot mix per-batch and per-epoch "
                f"logs in one panel ({', '.join(panel.log_names)}).")
        if not any(name in experiment.logs for name in panel.log_names
                   for experiment in experiments):
            available = sorted(set().union(*(e.logs for e in experiments)))
            raise DwiMLUserError(
                f"--graph '{panel.title}': none of the logs "
                f"{', '.join(panel.log_names)} has a finite value in any "
                f"experiment (a log of NaN only is left out; found: "
                f"{', '.join(available)}).")
    wanted = list(dict.fromkeys(name for panel in panels
                                for name in panel.log_names))
    for experiment in experiments:
        missing = [name for name in wanted if name not in experiment.logs]
        if missing:
            logger.warning("experiment '%s' has no log %s: not drawn for it.",
                           experiment.label, ", ".join(missing))


def _log_scale(panel, options):
    """True when the panel's y axis is on a log scale."""
    return options.log_y or LOG_SCALE_LOGS.issuperset(panel.log_names)


def warn_hidden_values(panels, experiments, options):
    """Warn, once per experiment and log, about values a panel hides.

    A per-batch log shorter than the ``options.smooth`` window is drawn
    without smoothing; values <= 0 on a log-scale axis are left out (after
    ``options.remove_outliers``, as drawn).
    """
    for experiment in experiments:
        smoothed, logged = set(), set()
        for panel in panels:
            for name in panel.log_names:
                values = experiment.logs.get(name)
                if values is None:
                    continue
                if (options.smooth > len(values) and is_per_batch(name)
                        and name not in smoothed):
                    smoothed.add(name)
                    logger.warning(
                        "--smooth %d: experiment '%s', log %s has only %d "
                        "values: drawn without smoothing.", options.smooth,
                        experiment.label, name, len(values))
                if _log_scale(panel, options) and name not in logged:
                    logged.add(name)
                    if options.remove_outliers:
                        values = drawn_without_outliers(experiment, name,
                                                        values)
                    count = np.count_nonzero(values <= 0)
                    if count:
                        logger.warning(
                            "experiment '%s', log %s: %d of %d values are "
                            "<= 0, left out on the log-scale y axis.",
                            experiment.label, name, count, len(values))


@dataclass(frozen=True)
class PlotOptions:
    """How to draw the panels (see ``visualize_logs.py --help``).

    Attributes
    ----------
    xlim, ylim : (float, float) or None
        Ranges of every panel (epochs or batches on x).
    panel_ylims : dict of str to (float, float)
        y range of the panel of that title; wins over ``ylim``.
    log_y : bool
        Log scale on every y axis.
    smooth : int
        Moving-average window (batches) for per-batch logs; 1: none.
    remove_outliers : bool
        Leave out of each curve the values beyond
        ``OUTLIER_IQR_FACTOR`` interquartile ranges from its quartiles.
    nb_plots_per_fig : int or None
        Most panels per figure; None: all in one figure.
    fig_size : (float, float) or None
        (width, height) of each figure in inches; None: from the number
        of panels (:func:`figure_size_inches`).
    """
    xlim: Optional[tuple] = None
    ylim: Optional[tuple] = None
    panel_ylims: dict = field(default_factory=dict)
    log_y: bool = False
    smooth: int = 1
    remove_outliers: bool = False
    nb_plots_per_fig: Optional[int] = None
    fig_size: Optional[tuple] = None


def log_kind(log_name):
    """What a log (or expression) measures: a key of ``KIND_LABELS``.

    Named by the trainer's conventions: ``learning_rate``, ``*_time``
    (seconds), ``grad_norm*``, ``*loss*``; anything else is a metric. An
    expression has the kind of its first log.
    """
    name = base_log_names(log_name)[0]
    if name == "learning_rate":
        return "learning_rate"
    if name.endswith("_time"):
        return "time"
    if name.startswith("grad_norm"):
        return "grad_norm"
    return "loss" if "loss" in name else "metric"


def y_label(log_names):
    """The y-axis label of a panel: what its logs measure, e.g. 'loss'.

    A ``diff`` expression measures a difference ('loss difference'); logs
    of several kinds give their labels joined by ' / '.
    """
    labels = []
    for name in log_names:
        label = KIND_LABELS[log_kind(name)]
        expression = parse_log_expression(name)
        if expression is not None and expression.operator == "diff":
            label += " difference"
        labels.append(label)
    return " / ".join(dict.fromkeys(labels))


def remove_outliers(values, factor=OUTLIER_IQR_FACTOR):
    """``values`` with NaN for those beyond ``factor`` IQRs of the quartiles.

    With Q1 and Q3 the quartiles of the finite values and
    ``IQR = Q3 - Q1``, a value below ``Q1 - factor * IQR`` or above
    ``Q3 + factor * IQR`` becomes NaN (a gap in the curve, at its place).
    """
    values = np.array(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return values
    q1, q3 = np.percentile(finite, [25, 75])
    spread = factor * (q3 - q1)
    with np.errstate(invalid="ignore"):
        values[(values < q1 - spread) | (values > q3 + spread)] = np.nan
    return values


def drawn_without_outliers(experiment, log_name, values):
    """``values`` of ``log_name`` as ``--remove_outliers`` draws them: its
    outliers removed (:func:`remove_outliers`), but the experiment's best
    epoch kept (the point the star marks), and a learning rate drawn whole
    (a schedule's first values are no outliers)."""
    if log_kind(log_name) == "learning_rate":
        return values
    kept = remove_outliers(values)
    epoch = experiment.best_epoch
    if (not is_per_batch(log_name) and epoch is not None
            and 0 <= epoch < len(kept)):
        kept[epoch] = values[epoch]
    return kept


def moving_average(values, window):
    """Mean of each ``window`` consecutive values (length ``n - window + 1``).

    NaN values (e.g. removed outliers) are left out of their windows; a
    window of NaN only is NaN.
    """
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="valid")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _draw_curve(ax, values, colour, style, smooth):
    """Returns True when some values were drawn as dots."""
    x = np.arange(len(values))
    if smooth > 1 and len(values) >= smooth:
        ax.plot(x, values, color=colour, linestyle=style, linewidth=0.8,
                alpha=0.25)
        x, values = x[smooth - 1:], moving_average(values, smooth)
    ax.plot(x, values, color=colour, linestyle=style)
    return _mark_isolated_points(ax, x, values, colour, _dot_marker(style))


def _dot_marker(style):
    return DOT_MARKERS[LINE_STYLES.index(style) % len(DOT_MARKERS)]


def _mark_isolated_points(ax, x, values, colour, marker):
    """A dot at each finite value without a finite neighbour: a line draws
    nothing there (a run of one epoch, or a value between removed
    outliers). Its marker stands for the line style. Returns True when a
    dot was drawn."""
    finite = np.isfinite(values)
    neighbour = np.zeros_like(finite)
    neighbour[1:] |= finite[:-1]
    neighbour[:-1] |= finite[1:]
    isolated = finite & ~neighbour
    if isolated.any():
        ax.plot(x[isolated], np.asarray(values)[isolated], color=colour,
                marker=marker, linestyle="none")
    return bool(isolated.any())


def _draw_best_epoch(ax, experiment, values, colour):
    epoch = experiment.best_epoch
    if epoch is None or not 0 <= epoch < len(values) or \
            not math.isfinite(values[epoch]):
        return False
    ax.plot([epoch], [values[epoch]], marker="*", markersize=13,
            color=colour, markeredgecolor="black", linestyle="none")
    return True


def draw_panel(ax, panel, experiments, colours, smooth=1,
               outliers_removed=False):
    """Draw one panel's logs of every experiment, with its legend.

    ``smooth`` > 1 adds a moving average over that many batches to
    per-batch logs (the raw values stay, faint). With
    ``outliers_removed``, each curve goes through :func:`remove_outliers`
    first.
    """
    per_batch = is_per_batch(panel.log_names[0])
    handles, any_best, any_dot = [], False, False
    for experiment, colour in zip(experiments, colours):
        drawn = False
        for name, style in zip(panel.log_names, _styles(panel)):
            values = experiment.logs.get(name)
            if values is None:
                continue
            if outliers_removed:
                values = drawn_without_outliers(experiment, name, values)
            drawn = True
            any_dot |= _draw_curve(ax, values, colour, style,
                                   smooth if per_batch else 1)
            if (not per_batch and log_kind(name) in BEST_EPOCH_KINDS
                    and name not in REFERENCE_LOGS):
                any_best |= _draw_best_epoch(ax, experiment, values, colour)
        if drawn:
            handles.append(Line2D([], [], color=colour,
                                  label=experiment.label))
    if _names_its_logs(panel):
        # Values drawn alone show their log by the dot's marker.
        handles += [Line2D([], [], color="black", linestyle=style, label=name,
                           marker=_dot_marker(style) if any_dot else None)
                    for name, style in zip(panel.log_names, _styles(panel))]
    if any_best:
        handles.append(Line2D([], [], marker="*", markersize=10, color="grey",
                              markeredgecolor="black", linestyle="none",
                              label="best epoch"))
    ax.legend(handles=handles, fontsize="small")
    ax.set_title(panel.title)
    ax.set_xlabel("batch" if per_batch else "epoch")
    ax.set_ylabel(y_label(panel.log_names))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left, right = ax.get_xlim()
    if right - left < 1:
        # One epoch: no integer tick fits matplotlib's narrow default axis.
        centre = (left + right) / 2
        ax.set_xlim(centre - 1, centre + 1)
    ax.grid(alpha=0.3)


def _names_its_logs(panel):
    """True when the legend names the panel's logs: it has several, or it
    is a default panel of several left with one (the Loss panel holds only
    train_loss when valid_loss is all NaN, a run without validation)."""
    default = DEFAULT_PANEL_LOGS.get(panel.title, ())
    return len(panel.log_names) > 1 or len(default) > 1


def _styles(panel):
    return [LINE_STYLES[i % len(LINE_STYLES)]
            for i in range(len(panel.log_names))]


def figure_size_inches(nb_panels):
    """(width, height) of a figure of ``nb_panels`` panels, 2 per row."""
    nb_columns = min(MAX_COLUMNS, nb_panels)
    nb_rows = math.ceil(nb_panels / MAX_COLUMNS)
    return (PANEL_SIZE_INCHES[0] * nb_columns,
            PANEL_SIZE_INCHES[1] * nb_rows)


def split_panels(panels, nb_plots_per_fig=None):
    """The panels of each figure: consecutive groups of at most N panels."""
    size = nb_plots_per_fig or max(len(panels), 1)
    return [panels[start:start + size]
            for start in range(0, len(panels), size)]


def draw_figure(figure, panels, experiments, options=PlotOptions()):
    """Fill ``figure`` (a matplotlib Figure) with one subplot per panel.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        Sized here: ``options.fig_size`` or :func:`figure_size_inches`, at
        :data:`DPI`.
    panels : list of Panel
    experiments : list of dwi_ml.monitoring.log_reading.ExperimentLogs
    options : PlotOptions
    """
    figure.set_size_inches(*(options.fig_size
                             or figure_size_inches(len(panels))))
    figure.set_dpi(DPI)
    figure.set_layout_engine("constrained")
    nb_columns = min(MAX_COLUMNS, len(panels))
    axes = figure.subplots(math.ceil(len(panels) / nb_columns), nb_columns,
                           squeeze=False).ravel()
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = [cycle[i % len(cycle)] for i in range(len(experiments))]
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, experiments, colours, options.smooth,
                   options.remove_outliers)
        if _log_scale(panel, options):
            ax.set_yscale("log")
        if options.xlim is not None:
            ax.set_xlim(*options.xlim)
        ylim = options.panel_ylims.get(panel.title, options.ylim)
        # A log axis cannot show MIN <= 0: the range of every panel
        # leaves such a panel (e.g. the learning rate's) its own.
        if ylim is not None and not (_log_scale(panel, options)
                                     and ylim[0] <= 0):
            ax.set_ylim(*ylim)
    for ax in axes[len(panels):]:
        ax.set_visible(False)


def build_figures(panels, experiments, options=PlotOptions(),
                  make_figure=Figure):
    """One drawn figure per group of ``options.nb_plots_per_fig`` panels.

    ``make_figure`` creates each empty figure: ``Figure`` (no display) or
    ``matplotlib.pyplot.figure`` (to show them).

    Returns
    -------
    list of matplotlib.figure.Figure
    """
    figures = []
    for figure_panels in split_panels(panels, options.nb_plots_per_fig):
        figure = make_figure()
        draw_figure(figure, figure_panels, experiments, options)
        figures.append(figure)
    return figures
