"""Epoch monitors: running means, per-epoch histories and the best epoch."""
import math

import numpy as np
import torch

from dwi_ml.data.splits import Split
from dwi_ml.io_utils.atomic import save_npy
from dwi_ml.io_utils.errors import DwiMLUserError


class BatchMeanMonitor:
    """Weighted mean of per-batch values over one epoch.

    Parameters
    ----------
    name : str
        The log name, e.g. ``'train_loss'``; it names the ``.npy`` file.
    keep_batch_values : bool
        Also keep every batch value in ``batch_history`` (a per-batch log).
    """

    def __init__(self, name, keep_batch_values=False):
        self.name = name
        self.keep_batch_values = keep_batch_values
        self.epoch_history = []
        self.batch_history = []
        self._sum = 0.0
        self._weight = 0.0

    def start_epoch(self):
        """Forget the running mean of the previous epoch."""
        self._sum = 0.0
        self._weight = 0.0

    def update(self, value, weight=1.0):
        """Add one batch value with its weight (e.g. its number of points)."""
        value = float(value)
        self._sum += value * weight
        self._weight += weight
        if self.keep_batch_values:
            self.batch_history.append(value)

    @property
    def running_mean(self):
        """Mean of the epoch so far (NaN before the first batch)."""
        return self._sum / self._weight if self._weight > 0 else math.nan

    def end_epoch(self):
        """Append the epoch mean to the history and return it."""
        mean = self.running_mean
        self.epoch_history.append(mean)
        return mean

    def set_epoch_value(self, value):
        """Append a value measured once per epoch (a time, a learning rate)."""
        self.epoch_history.append(float(value))

    def state_dict(self):
        """State of plain Python values and a float64 tensor (safe for
        ``torch.load(weights_only=True)``).

        The running sums are kept, so that a checkpoint written inside an
        epoch resumes the epoch's mean exactly.
        """
        # The per-batch values as one tensor: a list of a million floats
        # took seconds to pickle at every checkpoint, and as long to load.
        return {"epoch_history": [float(v) for v in self.epoch_history],
                "batch_history": torch.tensor(self.batch_history,
                                              dtype=torch.float64),
                "running_sum": float(self._sum),
                "running_weight": float(self._weight)}

    def load_state_dict(self, state):
        """Restore the histories saved by :meth:`state_dict`."""
        self.epoch_history = list(state["epoch_history"])
        history = state["batch_history"]
        # A list in checkpoints of earlier versions.
        self.batch_history = (history.tolist()
                              if isinstance(history, torch.Tensor)
                              else [float(v) for v in history])
        self._sum = float(state.get("running_sum", 0.0))
        self._weight = float(state.get("running_weight", 0.0))

    @property
    def file_names(self):
        """The files :meth:`save` writes: ``NAME.npy`` (and
        ``NAME_per_batch.npy`` when kept)."""
        names = [f"{self.name}.npy"]
        if self.keep_batch_values:
            names.append(f"{self.name}_per_batch.npy")
        return names

    def save(self, logs_dir):
        """Write :attr:`file_names` in ``logs_dir``."""
        values = [self.epoch_history, self.batch_history]
        for name, history in zip(self.file_names, values):
            save_npy(f"{logs_dir}/{name}",
                     np.asarray(history, dtype=np.float64))


# Monitors that may choose the best model (``best_model_metric``), and
# whether a higher value is better. Tracking metrics are written by
# :mod:`dwi_ml.tracking.tracking_validation`.
BEST_MODEL_METRICS = {
    "valid_loss": False, "train_loss": False,
    "tracking_endpoint_distance": False, "connectivity_score": True,
    "tracking_f1": True, "tracking_ol": True, "tracking_or": False,
    "tracking_vc": True, "tracking_ic": False, "tracking_nc": False,
    "tracking_points_within_1_vox": True,
    "tracking_points_within_2_vox": True, "tracking_points_aligned": True,
}


def check_best_model_metric(name):
    """Whether a higher ``name`` is better; refuse an unknown metric."""
    if name not in BEST_MODEL_METRICS:
        raise DwiMLUserError(
            f"best_model_metric: expected one of "
            f"{', '.join(BEST_MODEL_METRICS)}, found '{name}'.")
    return BEST_MODEL_METRICS[name]


class BestEpochTracker:
    """Remembers the best value of a metric and counts epochs without
    improvement.

    A value improves on the best when it is lower than ``best - delta``
    (higher than ``best + delta`` when a higher value is better). NaN (a
    metric not measured) never improves; the first epoch is the best even
    with NaN, until an epoch has a value.

    Parameters
    ----------
    patience : int or None
        Number of epochs without improvement before stopping; None never
        stops.
    patience_delta : float
        Minimal change that counts as an improvement.
    metric : str
        The monitor that is compared (a key of ``BEST_MODEL_METRICS``).

    Attributes
    ----------
    best_loss : float
        The best value of ``metric`` so far (a loss by default).
    best_epoch : int
        Its epoch, -1 before the first.
    """

    def __init__(self, patience=None, patience_delta=0.0,
                 metric="valid_loss"):
        self.patience = patience
        self.patience_delta = patience_delta
        self.metric = metric
        self.higher_is_better = check_best_model_metric(metric)
        self.best_loss = -math.inf if self.higher_is_better else math.inf
        self.best_epoch = -1
        self.nb_bad_epochs = 0

    def _improves(self, value):
        if math.isnan(self.best_loss):
            return not math.isnan(value)
        if self.higher_is_better:
            return value > self.best_loss + self.patience_delta
        return value < self.best_loss - self.patience_delta

    def update(self, value, epoch):
        """Record this epoch's value; return True if it is the new best."""
        if self._improves(value) or self.best_epoch < 0:
            self.best_loss = float(value)
            self.best_epoch = epoch
            self.nb_bad_epochs = 0
            return True
        self.nb_bad_epochs += 1
        return False

    @property
    def is_patience_reached(self):
        """True once ``patience`` epochs went by without improvement."""
        return self.patience is not None and self.nb_bad_epochs >= self.patience

    def state_dict(self):
        """Plain-Python state; an infinite best value is stored as None."""
        return {"best_loss": (None if math.isinf(self.best_loss)
                              else self.best_loss),
                "best_epoch": self.best_epoch,
                "nb_bad_epochs": self.nb_bad_epochs,
                "patience": self.patience,
                "patience_delta": self.patience_delta,
                "metric": self.metric}

    def load_state_dict(self, state):
        """Restore the state saved by :meth:`state_dict`."""
        best = state["best_loss"]
        self.best_loss = (float(best) if best is not None else
                          -math.inf if self.higher_is_better else math.inf)
        self.best_epoch = int(state["best_epoch"])
        self.nb_bad_epochs = int(state["nb_bad_epochs"])


PER_EPOCH_MONITORS = ("learning_rate", "train_time", "valid_time")


class EpochMonitors(dict):
    """All monitors of a trainer, by log name, created on first use.

    Batch values come in as ``outputs`` dicts (``loss``, ``loss_NAME`` for
    named losses, ``grad_norm``, ``grad_norm_after_clip``); they are
    recorded under ``PHASE_loss``, ``PHASE_loss_NAME``,
    ``grad_norm_before_clip`` and ``grad_norm_after_clip``. A monitor that
    appears at epoch k gets NaN for the epochs before.
    """

    _OUTPUT_LOGS = {"grad_norm": "grad_norm_before_clip",
                    "grad_norm_after_clip": "grad_norm_after_clip"}

    def __init__(self):
        super().__init__()
        self.nb_epochs = 0
        for name in ("train_loss", "valid_loss", "grad_norm_before_clip",
                     "grad_norm_after_clip", *PER_EPOCH_MONITORS):
            self.get_or_create(name)

    def get_or_create(self, name):
        """The monitor ``name``; a new one has NaN for past epochs."""
        if name not in self:
            monitor = BatchMeanMonitor(name, keep_batch_values=(
                name == "train_loss"))
            monitor.epoch_history = [math.nan] * self.nb_epochs
            self[name] = monitor
        return self[name]

    def _batch_monitors(self, phase):
        prefixes = (f"{phase}_loss",) + (
            ("grad_norm",) if phase == Split.TRAINING.log_prefix else ())
        return [monitor for name, monitor in self.items()
                if name.startswith(prefixes)]

    def start_phase(self, phase):
        """Reset the running means of 'train' or 'valid' monitors."""
        for monitor in self._batch_monitors(phase):
            monitor.start_epoch()

    def record_batch(self, phase, outputs):
        """Add one batch's outputs to the running means."""
        for key, value in outputs.items():
            if key.startswith("loss"):
                self.get_or_create(f"{phase}_{key}").update(
                    value, outputs["n_points"])
            elif key in self._OUTPUT_LOGS:
                self.get_or_create(self._OUTPUT_LOGS[key]).update(value)

    def end_phase(self, phase):
        """Close the epoch of every monitor of the phase."""
        for monitor in self._batch_monitors(phase):
            monitor.end_epoch()

    def skip_phase(self, phase):
        """Record NaN for a phase that did not run this epoch."""
        for monitor in self._batch_monitors(phase):
            monitor.set_epoch_value(math.nan)

    def end_epoch(self):
        """Count the epoch; return every monitor's value for it."""
        self.nb_epochs += 1
        return {name: monitor.epoch_history[-1]
                for name, monitor in self.items()}

    def state_dict(self):
        """Every monitor's histories, by name."""
        return {name: monitor.state_dict() for name, monitor in self.items()}

    def load_state_dict(self, state):
        """Restore (and create) the monitors saved by :meth:`state_dict`."""
        for name, monitor_state in state.items():
            self.get_or_create(name).load_state_dict(monitor_state)
        self.nb_epochs = len(state["train_loss"]["epoch_history"])
