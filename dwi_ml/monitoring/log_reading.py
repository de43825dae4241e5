"""Read the ``logs/*.npy`` and best epoch of dwi_ml experiment folders.

An experiment folder (written by the trainer) holds ``parameters.json``,
``logs/NAME.npy`` (one float64 value per epoch, or per batch for
``NAME_per_batch.npy``) and ``best_model/best_epoch.json``. A run still in
progress may have logs of different lengths; they are read as they are.
"""
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dwi_ml.io_utils.atomic import existing_atomic_folder, read_replaced_folder
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import (
    BEST_EPOCH_FILE,
    BEST_MODEL_DIR,
    LOGS_DIR,
    PARAMETERS_FILE,
    experiments_inside_hint,
    read_best_epoch,
)
from dwi_ml.io_utils.safe_load import load_npy_file
from dwi_ml.monitoring.log_expressions import base_log_names

logger = logging.getLogger(__name__)

PER_BATCH_SUFFIX = "_per_batch"


@dataclass
class ExperimentLogs:
    """The logs of one experiment.

    Attributes
    ----------
    path : str
        The experiment folder.
    label : str
        Name shown in legends and CSV rows.
    logs : dict of str to np.ndarray
        Log name (file name without ``.npy``) -> 1-D float64 values, one per
        epoch (or per batch for ``*_per_batch`` logs). Logs without any
        finite value are left out.
    best_epoch : int or None
        From ``best_model/best_epoch.json`` (0-based); None when absent.
    best_loss : float or None
    unread_logs : list of str
        Names of the ``logs/*.npy`` left unread: those not asked for when
        reading only some logs.
    """
    path: str
    label: str
    logs: dict = field(default_factory=dict)
    best_epoch: Optional[int] = None
    best_loss: Optional[float] = None
    unread_logs: list = field(default_factory=list)

    @property
    def log_names(self):
        """Every log name found: those read with a value, then the unread."""
        return sorted([*self.logs, *self.unread_logs])


def is_per_batch(log_name):
    """True for a per-batch log (x axis in batches, not epochs).

    An expression (see :mod:`~dwi_ml.monitoring.log_expressions`) is
    per-batch when its first log is; ``check_panels`` refuses one that
    mixes both kinds.
    """
    return base_log_names(log_name)[0].endswith(PER_BATCH_SUFFIX)


def _load_log(path):
    values = load_npy_file(path, "log")
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
        raise DwiMLUserError(
            f"log '{path}': expected a 1-D numeric array, found shape "
            f"{values.shape} and dtype {values.dtype}.")
    return values.astype(np.float64)


def _read_best_epoch(experiment_dir):
    """(epoch, loss) of best_model/best_epoch.json, or (None, None); read
    again if a run in progress replaces best_model/ meanwhile."""
    path = os.path.join(experiment_dir, BEST_MODEL_DIR)

    def read():
        folder = existing_atomic_folder(path)
        if folder is None or not os.path.isfile(
                os.path.join(folder, BEST_EPOCH_FILE)):
            return None, None
        return read_best_epoch(folder)
    return read_replaced_folder(path, read)


class NoLogsYet(DwiMLUserError):
    """An experiment folder without any finite log value yet (a run that
    has not finished its first epoch)."""


def read_experiment_logs(experiment_dir, label=None, names=None):
    """Read the ``logs/*.npy`` of an experiment and its best epoch.

    Parameters
    ----------
    experiment_dir : str
    label : str or None
        Name for legends; default: the folder's name.
    names : list of str or None
        Read only these logs (those that exist; the caller says which is
        missing): a malformed log that is not asked for is never opened.
        None: every log.

    Returns
    -------
    ExperimentLogs

    Raises
    ------
    DwiMLUserError
        When the folder is not an experiment (no ``logs/`` and no
        ``parameters.json``), when it has no log with a finite value
        (:class:`NoLogsYet`), or when a log read is not a 1-D numeric
        ``.npy`` array.
    """
    if not os.path.isdir(experiment_dir):
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' does not exist or is not a folder.")
    logs_dir = os.path.join(experiment_dir, LOGS_DIR)
    if not (os.path.isdir(logs_dir) or os.path.isfile(
            os.path.join(experiment_dir, PARAMETERS_FILE))):
        raise DwiMLUserError(
            f"'{experiment_dir}' is not a dwi_ml experiment: expected a "
            f"{LOGS_DIR}/ folder or {PARAMETERS_FILE}, found neither"
            f"{experiments_inside_hint(experiment_dir)}.")
    logs, unread = {}, []
    for path in sorted(glob.glob(os.path.join(logs_dir, "*.npy"))):
        name = os.path.basename(path)[:-len(".npy")]
        if names is not None and name not in names:
            unread.append(name)
            continue
        values = _load_log(path)
        if np.isfinite(values).any():
            logs[name] = values
        else:
            logger.info("%s: log %s has no finite value; skipped.",
                        experiment_dir, name)
    # Unread logs may hold values: the caller names the logs it lacks.
    if not logs and not unread:
        raise NoLogsYet(
            f"experiment '{experiment_dir}' has no logs yet: no .npy file "
            f"with a finite value in {logs_dir}.")
    best_epoch, best_loss = _read_best_epoch(experiment_dir)
    if label is None:
        label = os.path.basename(os.path.normpath(experiment_dir))
    return ExperimentLogs(os.path.normpath(experiment_dir), label, logs,
                          best_epoch, best_loss, unread)


def experiment_labels(experiment_dirs):
    """Folder names as legend labels; full paths when two names clash."""
    names = [os.path.basename(os.path.normpath(path))
             for path in experiment_dirs]
    return [os.path.normpath(path) if names.count(name) > 1 else name
            for path, name in zip(experiment_dirs, names)]


def read_experiments(experiment_dirs, names=None):
    """Read several experiments, labelled by :func:`experiment_labels`.

    ``names``: read only these logs (see :func:`read_experiment_logs`).

    An experiment without logs yet (a run still in its first epoch) is
    left out with a warning when others have logs.

    Raises
    ------
    DwiMLUserError
        An experiment given twice (the same folder by two paths too): its
        curves would be drawn twice under one legend label; or no
        experiment has logs yet.
    """
    seen = {}
    for path in experiment_dirs:
        first = seen.setdefault(os.path.realpath(path), path)
        if first is not path:
            raise DwiMLUserError(
                f"experiment '{path}' is given twice (as '{first}' too): "
                "give each experiment once.")
    experiments, without_logs = [], []
    for path, label in zip(experiment_dirs, experiment_labels(experiment_dirs)):
        try:
            experiments.append(read_experiment_logs(path, label, names))
        except NoLogsYet as error:
            without_logs.append(error)
    if not experiments:
        raise without_logs[0]
    for error in without_logs:
        logger.warning("%s: not drawn.", str(error).rstrip("."))
    return experiments
