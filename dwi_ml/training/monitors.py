"""Epoch monitors: running means, per-epoch histories and the best epoch."""
import math

import numpy as np


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
        """Plain-Python state (safe for ``torch.load(weights_only=True)``)."""
        return {"epoch_history": [float(v) for v in self.epoch_history],
                "batch_history": [float(v) for v in self.batch_history]}

    def load_state_dict(self, state):
        """Restore the histories saved by :meth:`state_dict`."""
        self.epoch_history = list(state["epoch_history"])
        self.batch_history = list(state["batch_history"])

    def truncate(self, nb_epochs):
        """Keep only the first ``nb_epochs`` epoch values."""
        self.epoch_history = self.epoch_history[:nb_epochs]

    def save(self, logs_dir):
        """Write ``NAME.npy`` (and ``NAME_per_batch.npy`` when kept)."""
        np.save(f"{logs_dir}/{self.name}.npy",
                np.asarray(self.epoch_history, dtype=np.float64))
        if self.keep_batch_values:
            np.save(f"{logs_dir}/{self.name}_per_batch.npy",
                    np.asarray(self.batch_history, dtype=np.float64))


class BestEpochTracker:
    """Remembers the best loss and counts epochs without improvement.

    A loss improves on the best when it is lower than ``best - delta``.

    Parameters
    ----------
    patience : int or None
        Number of epochs without improvement before stopping; None never
        stops.
    patience_delta : float
        Minimal decrease that counts as an improvement.
    """

    def __init__(self, patience=None, patience_delta=0.0):
        self.patience = patience
        self.patience_delta = patience_delta
        self.best_loss = math.inf
        self.best_epoch = -1
        self.nb_bad_epochs = 0

    def update(self, loss, epoch):
        """Record this epoch's loss; return True if it is the new best."""
        if loss < self.best_loss - self.patience_delta or self.best_epoch < 0:
            self.best_loss = float(loss)
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
        """Plain-Python state; an infinite best loss is stored as None."""
        return {"best_loss": (None if math.isinf(self.best_loss)
                              else self.best_loss),
                "best_epoch": self.best_epoch,
                "nb_bad_epochs": self.nb_bad_epochs,
                "patience": self.patience,
                "patience_delta": self.patience_delta}

    def load_state_dict(self, state):
        """Restore the state saved by :meth:`state_dict`."""
        best = state["best_loss"]
        self.best_loss = math.inf if best is None else float(best)
        self.best_epoch = int(state["best_epoch"])
        self.nb_bad_epochs = int(state["nb_bad_epochs"])
