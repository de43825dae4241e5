"""Send an experiment's ``logs/*.npy`` to Comet after the run.

A run may miss Comet in part or in whole: it was trained without a Comet
option, a resume was given none, or Comet could not be reached or failed
during the run (training goes on with its local logs). Its logs are still
in the experiment folder; this sends them, online or as an offline archive.

The metrics are those the training's Comet callback logs
(:mod:`~dwi_ml.monitoring.comet_logger`): each epoch log under its name,
``step = epoch``, and, on request, ``train_loss_per_batch`` with the
row of ``logs/train_loss_per_batch.npy`` as step. NaN values (e.g. a
monitor between tracking-validation epochs before the first) are not sent.

A run that had Comet records in its checkpoint which epochs and rows it
logged there (:class:`~dwi_ml.monitoring.comet_logger.CometCallback`):
:func:`leave_out_logged` drops those, since Comet shows a value sent twice
twice.
"""
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import (
    has_checkpoint,
    load_checkpoint_state,
)
from dwi_ml.monitoring.comet_logger import (
    PER_BATCH_METRIC,
    create_comet_experiment,
    logged_steps,
)
from dwi_ml.monitoring.log_reading import is_per_batch, read_experiment_logs


@dataclass
class SavedCometExperiment:
    """The Comet experiment saved in a run's checkpoint.

    Attributes
    ----------
    key : str
    logged_epochs, logged_batches : set of int or None
        The epochs, and the rows of ``train_loss_per_batch``, that the run
        logged to it; None when the checkpoint does not say (written by a
        dwi_ml that did not record them).
    """
    key: str
    logged_epochs: Optional[set] = None
    logged_batches: Optional[set] = None

    @property
    def knows_what_was_logged(self):
        return self.logged_epochs is not None


def saved_comet_experiment(experiment_dir):
    """The :class:`SavedCometExperiment` of the experiment's checkpoint, or
    None when it names no Comet experiment."""
    if not has_checkpoint(experiment_dir):
        return None
    state = load_checkpoint_state(experiment_dir)
    comet = (state.get("callbacks") or {}).get("comet") or {}
    # Checkpoints of older versions kept the key at the top level.
    key = comet.get("experiment_key", state.get("comet_key"))
    if key is None:
        return None
    if comet.get("logged_epochs") is None:
        return SavedCometExperiment(key)
    return SavedCometExperiment(key, logged_steps(comet["logged_epochs"]),
                                logged_steps(comet["logged_batches"]))


def leave_out_logged(values, saved):
    """``values`` (from :func:`logs_to_send`) without the steps that the
    run logged to ``saved`` (a :class:`SavedCometExperiment` that knows
    them), and how many values were left out."""
    kept, nb_left_out = {}, 0
    for name, pairs in values.items():
        logged = (saved.logged_batches if is_per_batch(name)
                  else saved.logged_epochs)
        kept[name] = [(step, value) for step, value in pairs
                      if step not in logged]
        nb_left_out += len(pairs) - len(kept[name])
    return kept, nb_left_out


def logs_to_send(experiment_dir, names=None, epochs=None, per_batch=False):
    """The values to send: ``{name: [(step, value), ...]}``.

    Parameters
    ----------
    experiment_dir : str
    names : list of str or None
        Logs to send (file names without ``.npy``); only these are read.
        None: every epoch log, and ``train_loss_per_batch`` with
        ``per_batch``.
    epochs : (int, int) or None
        First and last epoch sent (0-based, inclusive) of the epoch logs;
        None: all.
    per_batch : bool
        Add ``train_loss_per_batch`` to the default logs; not with
        ``names``, where it is named instead.

    Raises
    ------
    DwiMLUserError
        ``per_batch`` with ``names``, an unknown log name, or a range of
        epochs that no log reaches.
    """
    if per_batch and names is not None:
        raise DwiMLUserError(
            f"--per_batch: expected without --logs (it adds "
            f"{PER_BATCH_METRIC} to the default logs), found --logs "
            f"{' '.join(names)}; with --logs, name {PER_BATCH_METRIC} there.")
    experiment = read_experiment_logs(experiment_dir, names=names)
    logs = experiment.logs
    if names is None:
        names = [name for name in logs if not is_per_batch(name)
                 or (per_batch and name == PER_BATCH_METRIC)]
    unknown = [name for name in names if name not in logs]
    if unknown:
        raise DwiMLUserError(
            f"--logs: no log '{unknown[0]}' with a value in "
            f"'{os.path.join(experiment_dir, 'logs')}' (found: "
            f"{', '.join(experiment.log_names)}).")
    per_batch_names = [name for name in names if is_per_batch(name)]
    if epochs is not None and per_batch_names:
        # Its rows are batches, and no log says which epoch each was in:
        # all of them would go, twice for those Comet already has.
        raise DwiMLUserError(
            f"--epochs: selects epochs of the epoch logs; "
            f"'{per_batch_names[0]}' has a row per batch, not per epoch: "
            "send it without --epochs (all its rows), or leave it out.")
    epoch_names = [name for name in names if not is_per_batch(name)]
    nb_epochs = max((len(logs[name]) for name in epoch_names), default=0)
    first, last = (0, nb_epochs - 1) if epochs is None else epochs
    if epochs is not None and not 0 <= first <= last < nb_epochs:
        raise DwiMLUserError(
            f"--epochs: expected 0 <= FIRST <= LAST < {nb_epochs} (the "
            f"epochs of these logs), found {first} {last}.")
    values = {}
    for name in names:
        rows = np.arange(len(logs[name]))
        if not is_per_batch(name):
            rows = rows[first:last + 1]
        values[name] = [(int(step), float(logs[name][step])) for step in rows
                        if math.isfinite(logs[name][step])]
    return values


def send_logs(values, workspace=None, project=None, offline_dir=None,
              experiment_key=None, experiment_name=None,
              hyperparameters=None):
    """Log ``values`` (from :func:`logs_to_send`) to one Comet experiment.

    ``experiment_key`` continues that experiment; None creates one, named
    ``experiment_name``, with ``hyperparameters``. Returns its key.
    """
    experiment = create_comet_experiment(workspace, project, offline_dir,
                                         experiment_key, system_metrics=False)
    if not experiment.alive:
        raise DwiMLUserError(
            "Comet could not be reached or refused the experiment (network, "
            "API key or experiment key); nothing was sent.")
    if experiment_key is None:
        if experiment_name:
            experiment.set_name(experiment_name)
        if hyperparameters:
            experiment.log_parameters(hyperparameters)
    by_step = {}
    for name, pairs in values.items():
        for step, value in pairs:
            kind = "batch" if is_per_batch(name) else "epoch"
            by_step.setdefault((kind, step), {})[name] = value
    for (kind, step), metrics in sorted(by_step.items()):
        if kind == "epoch":
            experiment.log_metrics(metrics, step=step, epoch=step)
        else:
            experiment.log_metrics(metrics, step=step)
    key = experiment.get_key()
    experiment.end()
    return key

