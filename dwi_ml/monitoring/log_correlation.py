"""How two logs move together across the epochs of experiments.

For example the validation loss against a tracking metric: a lower loss
need not mean a better tractogram (docs/tracking.md), and the correlation
of the two over the epochs of many runs says how far one can stand for the
other. Pearson's r measures a linear relation, Spearman's rho a monotonic
one (the Pearson r of the ranks). Epochs where either log has no finite
value are left out.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy import stats

from dwi_ml.io_utils.errors import DwiMLUserError

# Fewer paired epochs than this give no correlation.
MIN_EPOCHS = 3


@dataclass
class Correlation:
    """The correlation of two logs over some epochs.

    ``pearson`` and ``spearman`` are None with fewer than
    :data:`MIN_EPOCHS` epochs or when a log is constant over them.
    """
    label: str
    nb_epochs: int
    pearson: Optional[float]
    spearman: Optional[float]

    def as_dict(self):
        return {"nb_epochs": self.nb_epochs, "pearson": self.pearson,
                "spearman": self.spearman}


def paired_values(experiment, log1, log2, first_epoch=0):
    """``(epochs, x, y)`` of an :class:`ExperimentLogs` where both logs are
    finite, from ``first_epoch`` on."""
    for name in (log1, log2):
        if name not in experiment.logs:
            raise DwiMLUserError(
                f"experiment '{experiment.path}': no log '{name}' with a value"
                f" (found: {', '.join(experiment.log_names)}).")
    x, y = experiment.logs[log1], experiment.logs[log2]
    epochs = np.arange(min(len(x), len(y)))
    epochs = epochs[epochs >= first_epoch]
    x, y = x[epochs], y[epochs]
    keep = np.isfinite(x) & np.isfinite(y)
    return epochs[keep], x[keep], y[keep]


def correlation(label, x, y):
    """The :class:`Correlation` of two equal-length arrays."""
    if len(x) < MIN_EPOCHS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(label, len(x), None, None)
    return Correlation(label, len(x), float(stats.pearsonr(x, y)[0]),
                       float(stats.spearmanr(x, y)[0]))


def correlate_logs(experiments, log1, log2, first_epoch=0):
    """Correlations per experiment and over all their epochs pooled.

    Parameters
    ----------
    experiments : list of ExperimentLogs
    log1, log2 : str
        Log names (files of ``logs/`` without ``.npy``), per epoch.
    first_epoch : int
        Leave out the epochs before it (0-based), e.g. the first ones,
        where every log moves fast.

    Returns
    -------
    per_experiment : list of Correlation
    pooled : Correlation
        Over the paired epochs of all experiments, labelled 'all'.
    fit : (slope, intercept) or None
        Least-squares line ``log2 = slope * log1 + intercept`` over them.
    pairs : list of (epochs, x, y)
        Each experiment's :func:`paired_values`, for the figure.
    """
    pairs = [paired_values(experiment, log1, log2, first_epoch)
             for experiment in experiments]
    per_experiment = [correlation(experiment.label, x, y)
                      for experiment, (_, x, y) in zip(experiments, pairs)]
    x = np.concatenate([x for _, x, _ in pairs])
    y = np.concatenate([y for _, _, y in pairs])
    pooled = correlation("all", x, y)
    fit = (None if pooled.pearson is None
           else tuple(float(v) for v in np.polyfit(x, y, 1)))
    return per_experiment, pooled, fit, pairs


def draw_correlation(figure, pairs, names, per_experiment, pooled, fit):
    """Three panels: each log against the epochs, then log2 against log1
    with the least-squares line: the results of :func:`correlate_logs`.
    ``names`` label the two logs."""
    axes = figure.subplots(3, 1)
    colours = [f"C{i % 10}" for i in range(len(pairs))]
    for (epochs, x, y), result, colour in zip(pairs, per_experiment,
                                              colours):
        label = result.label + (
            "" if result.pearson is None else f" (r = {result.pearson:.2f})")
        axes[0].plot(epochs, x, "o-", color=colour, markersize=3, label=label)
        axes[1].plot(epochs, y, "o-", color=colour, markersize=3)
        axes[2].scatter(x, y, color=colour, s=12)
    if fit is not None:
        xx = np.linspace(*axes[2].get_xlim(), 50)
        sign = "-" if fit[1] < 0 else "+"
        axes[2].plot(xx, fit[0] * xx + fit[1], "k-", linewidth=1,
                     label=f"{names[1]} = {fit[0]:.4g} {names[0]} "
                           f"{sign} {abs(fit[1]):.4g}")
        axes[2].legend(fontsize="small")
    for ax, name in zip(axes[:2], names):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
    axes[0].legend(fontsize="small")
    axes[2].set_xlabel(names[0])
    axes[2].set_ylabel(names[1])
    summary = ("too few epochs for a correlation" if pooled.pearson is None
               else f"Pearson r = {pooled.pearson:.3f}, Spearman rho = "
                    f"{pooled.spearman:.3f} over {pooled.nb_epochs} epochs")
    axes[2].set_title(summary, fontsize="medium")
    figure.suptitle(f"{names[1]} against {names[0]}")
    figure.tight_layout()
