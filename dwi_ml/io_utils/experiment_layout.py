"""The experiment folder layout and safe reading of its files.

One definition of the folder and file names of an experiment, used by the
trainer, the scripts, tracking, monitoring and the output-folder safety
code::

    EXPERIMENT/parameters.json    everything needed to rebuild the run
    EXPERIMENT/runs.json          how each segment of the run was made
    EXPERIMENT/checkpoint/        the last checkpoint (model/ inside)
    EXPERIMENT/best_model/        the best model so far
    EXPERIMENT/logs/              one .npy per logged value

Everything is loaded with ``torch.load(weights_only=True)``
(:func:`~dwi_ml.io_utils.safe_load.load_torch_file`): a checkpoint shared
by someone else never runs pickled code. ``checkpoint/`` and ``best_model/``
hold a ``MANIFEST.sha256`` checked before loading (see
:mod:`dwi_ml.io_utils.manifest`).
"""
import os

from dwi_ml.io_utils.atomic import existing_atomic_folder
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.manifest import verify_manifest
from dwi_ml.io_utils.safe_load import load_json_file, load_torch_file

BEST_MODEL_DIR = "best_model"
CHECKPOINT_DIR = "checkpoint"
# In checkpoint/: its epoch and position, readable without the state.
CHECKPOINT_POSITION = "position.json"
LOGS_DIR = "logs"
PARAMETERS_FILE = "parameters.json"
# In best_model/: its epoch and loss.
BEST_EPOCH_FILE = "best_epoch.json"
# One entry per segment of the run (its start, each resume): the command
# line, versions, host, threads, the options a resume changed, the HDF5
# file, and how the segment ended (dwi_ml.training.run_history).
RUNS_FILE = "runs.json"
EXPERIMENT_FOLDERS = (CHECKPOINT_DIR, BEST_MODEL_DIR, LOGS_DIR)
# What an experiment with a best model but no checkpoint (removed to save
# space) is still good for, in messages.
USE_BEST_MODEL_HINT = ("track or evaluate with that model "
                       "(dwiml_track_from_model.py, dwiml_evaluate_model.py)")
# Version of parameters.json and checkpoints. 1: files without the key
# (before the input spec and the split enum; they load unchanged). 2: the
# Comet key is the Comet callback's state. Bump it when old experiments can
# no longer be read, and refuse newer ones (written by a newer dwi_ml).
EXPERIMENT_FORMAT_VERSION = 2


def experiments_inside_hint(folder):
    """'; it holds the experiments 'A' and 'B': give one of them', naming at
    most two sub-folders of ``folder`` that have a ``parameters.json``
    (e.g. the experiments path given instead of one experiment); '' when
    none has. An experiment's own folders (``best_model/`` holds a
    ``parameters.json`` too) are not experiments to give."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.is_dir()
                       and entry.name not in EXPERIMENT_FOLDERS
                       and os.path.isfile(
                           os.path.join(entry.path, PARAMETERS_FILE)))
    except OSError:
        return ""
    if not names:
        return ""
    shown = " and ".join(f"'{os.path.join(folder, name)}'"
                         for name in names[:2])
    more = f" (and {len(names) - 2} more)" if len(names) > 2 else ""
    return f"; it holds the experiments {shown}{more}: give one of them"


def _not_an_experiment(experiment_dir):
    """The one-line error for a folder without ``parameters.json``."""
    return DwiMLUserError(
        f"experiment '{experiment_dir}' is not a dwi_ml experiment folder: "
        f"expected {PARAMETERS_FILE} with {BEST_MODEL_DIR}/ or "
        f"{CHECKPOINT_DIR}/, found no {PARAMETERS_FILE}"
        f"{experiments_inside_hint(experiment_dir)}.")


def read_parameters(experiment_dir, sections=()):
    """Read ``parameters.json`` of an experiment, with a clear error.

    Parameters
    ----------
    experiment_dir : str
    sections : sequence of str
        Top-level keys the caller needs (e.g. 'dataset' to resume): their
        absence is a user error naming the first one missing.
    """
    path = os.path.join(experiment_dir, PARAMETERS_FILE)
    if not os.path.isfile(path):
        raise _not_an_experiment(experiment_dir)
    params = load_json_file(path, "experiment parameters")
    if not isinstance(params, dict):
        raise DwiMLUserError(
            f"experiment parameters '{path}': expected a JSON object, found "
            f"{type(params).__name__}.")
    version = params.get("format_version", 1)
    if (isinstance(version, bool) or not isinstance(version, int)
            or not 1 <= version <= EXPERIMENT_FORMAT_VERSION):
        raise DwiMLUserError(
            f"experiment parameters '{path}': format_version {version!r} is "
            f"not one this dwi_ml reads (1 to {EXPERIMENT_FORMAT_VERSION}); "
            "use the dwi_ml version that wrote it.")
    missing = [key for key in sections if key not in params]
    if missing:
        raise DwiMLUserError(
            f"experiment parameters '{path}': expected sections "
            f"{list(sections)}, found no '{missing[0]}'.")
    return params


def checkpoint_dir(experiment_dir):
    """The readable checkpoint folder of an experiment, or a clear error."""
    path = existing_atomic_folder(os.path.join(experiment_dir, CHECKPOINT_DIR))
    if path is None:
        # A best model without a checkpoint: the first checkpoint's write
        # failed (e.g. a full disk) after the best model's.
        why = ("its first checkpoint was never written; its best model "
               "was (drop --use_latest_epoch to use it)"
               if existing_atomic_folder(os.path.join(
                   experiment_dir, BEST_MODEL_DIR)) is not None
               else "it never finished an epoch")
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' has no {CHECKPOINT_DIR}/ folder: "
            f"{why}.")
    return path


def has_checkpoint(experiment_dir):
    """True when the experiment has a readable ``checkpoint/`` folder."""
    return existing_atomic_folder(
        os.path.join(experiment_dir, CHECKPOINT_DIR)) is not None


def load_checkpoint_state(experiment_dir):
    """Load ``checkpoint/checkpoint_state.pt`` after checking the manifest."""
    folder = checkpoint_dir(experiment_dir)
    verify_manifest(folder)
    state = load_torch_file(os.path.join(folder, "checkpoint_state.pt"),
                            "checkpoint state")
    if not isinstance(state, dict) or "current_epoch" not in state:
        raise DwiMLUserError(
            f"checkpoint state '{os.path.join(folder, 'checkpoint_state.pt')}'"
            ": expected a dwi_ml checkpoint (a dict with 'current_epoch'), "
            f"found a {type(state).__name__} without it.")
    return state


def checkpoint_model_dir(experiment_dir):
    """Folder of the model saved in the checkpoint.

    Its files are checked first against the checkpoint's manifest.
    """
    folder = checkpoint_dir(experiment_dir)
    verify_manifest(folder, ["model"])
    return os.path.join(folder, "model")


def best_model_dir(experiment_dir):
    """Folder of the best model, or a clear error."""
    path = existing_atomic_folder(os.path.join(experiment_dir, BEST_MODEL_DIR))
    if path is None:
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' has no {BEST_MODEL_DIR}/ folder.")
    return path


def read_best_epoch(best_folder):
    """``best_epoch.json`` of a ``best_model/`` folder -> (epoch, loss).

    ``loss`` is None while the metric had no value at the best epoch.

    Raises
    ------
    DwiMLUserError
        A file that is not JSON with an integer 'epoch' and a 'loss'.
    """
    path = os.path.join(best_folder, BEST_EPOCH_FILE)
    best = load_json_file(path, "best epoch")
    try:
        loss = best["loss"]
        return int(best["epoch"]), None if loss is None else float(loss)
    except (ValueError, KeyError, TypeError) as error:
        raise DwiMLUserError(
            f"'{path}': expected JSON with 'epoch' and 'loss', could not "
            f"read it ({error}).") from None


def read_model_epoch(experiment_dir, use_latest_epoch=False):
    """The epoch of the model :func:`experiment_model_dir` points to.

    Returns
    -------
    (int or None, bool)
        The 0-based epoch (as in ``best_epoch.json``) of the model's last
        training batch, and whether that epoch was finished (validated).
        The best model's epoch is always finished; a checkpoint written
        inside an epoch (a stop request) holds a model inside it. None:
        a checkpoint before any training batch.
    """
    if not use_latest_epoch:
        return read_best_epoch(best_model_dir(experiment_dir))[0], True
    position = _read_checkpoint_position(experiment_dir)
    if position is None:
        state = load_checkpoint_state(experiment_dir)
        position = {"current_epoch": state["current_epoch"],
                     **(state.get("position") or {})}
    return _epoch_at(position)


def _epoch_at(position):
    """(epoch, complete) of a checkpoint's position; see read_model_epoch."""
    epochs_done = int(position["current_epoch"])
    # As EpochPosition.at_epoch_start, which io_utils may not import (it
    # comes after io_utils in the data flow).
    if position.get("phase", "train") == "train" and \
            position.get("nb_batches_done", 0) == 0:
        return (epochs_done - 1 if epochs_done else None), epochs_done > 0
    return epochs_done, False


def _read_checkpoint_position(experiment_dir):
    """``checkpoint/position.json`` (its epoch and position, small), or None
    for a checkpoint written before it existed."""
    path = os.path.join(checkpoint_dir(experiment_dir), CHECKPOINT_POSITION)
    if not os.path.isfile(path):
        return None
    verify_manifest(os.path.dirname(path), [CHECKPOINT_POSITION])
    position = load_json_file(path, "checkpoint position")
    if not isinstance(position, dict) or "current_epoch" not in position:
        raise DwiMLUserError(
            f"checkpoint position '{path}': expected JSON with "
            "'current_epoch', could not read it.")
    return position


def _checkpoint_has_trained(experiment_dir):
    """False for a checkpoint of a run's start (every run saves one)."""
    position = _read_checkpoint_position(experiment_dir)
    return position is None or _epoch_at(position)[0] is not None


def experiment_model_dir(experiment_dir, use_latest_epoch=False):
    """Folder of the best model, or of the checkpoint's model (checked).

    Raises
    ------
    DwiMLUserError
        When ``experiment_dir`` is no experiment (no ``parameters.json``
        and none of its folders), or lacks the model asked for.
    """
    # A run's save swaps checkpoint/ through .checkpoint.old: one of the
    # two is there at every moment.
    if not (os.path.isfile(os.path.join(experiment_dir, PARAMETERS_FILE))
            or any(os.path.isdir(os.path.join(experiment_dir, name))
                   for folder in EXPERIMENT_FOLDERS
                   for name in (folder, f".{folder}.old"))):
        raise _not_an_experiment(experiment_dir)
    if use_latest_epoch:
        folder = checkpoint_model_dir(experiment_dir)
        if not _checkpoint_has_trained(experiment_dir):
            raise DwiMLUserError(
                f"experiment '{experiment_dir}': its checkpoint was saved "
                "before its first training batch; its model is untrained: "
                "resume the run first.")
        return folder
    try:
        return best_model_dir(experiment_dir)
    except DwiMLUserError as error:
        # Stopped before its first epoch ended (a checkpoint written at
        # a pre-emption, say): its model is there.
        if not (has_checkpoint(experiment_dir)
                and _checkpoint_has_trained(experiment_dir)):
            raise
        raise DwiMLUserError(
            f"{error} Its checkpoint holds a model: --use_latest_epoch "
            "takes it.") from None
