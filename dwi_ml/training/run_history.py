"""How each segment of a run was made: the experiment's ``runs.json``.

``parameters.json`` holds the values the code reads now, and a resume
rewrites it: ``--new_max_epochs``, ``--nb_workers``, ``--device`` or
``--hdf5_file`` replace the saved values, and ``--accept_different_hdf5``
the HDF5 fingerprint. ``runs.json`` keeps the history: one entry per
segment (the training's start, then each resume), appended when the
segment starts training and completed when it ends::

    {"format_version": 1, "segments": [
      {"kind": "train" or "resume", "started": UTC ISO time,
       "argv": [script, arguments as typed] or null,
       "host", "pid", "slurm_job_id",
       "dwi_ml": {"version", "git_commit", "git_dirty"},
       "python", "libraries": {"torch", "numpy", "h5py", "nibabel", "dipy"},
       "torch_threads", "device", "nb_ranks",
       "changes": {"SECTION.KEY": {"old": A, "new": B}, ...},
       "hdf5_file", "hdf5_fingerprint_sha256", "hdf5_fingerprint",
       "position_at_start": {"current_epoch", "phase", "nb_batches_done"},
       "ended", "end", "end_detail", "stopped_by", "position_at_end"}]}

``changes`` compares the ``parameters.json`` this segment replaced with the
one it wrote (a fingerprint by its SHA-256). ``hdf5_fingerprint`` is
written in full only where it differs from the previous segment's (the
first segment has it): the fingerprint a resume replaced stays in the
history. ``end`` is 'completed' (max_epochs reached), 'patience',
'stopped' (a signal or ``--max_time``, named in ``stopped_by``; the
checkpoint continues it) or 'error'; a segment whose process died
without a word (SIGKILL, out of memory, a node failure) has none until the
next segment starts, which records its end as 'unrecorded'.

Only the main process writes, atomically, under the experiment's lock.
Nothing reads ``runs.json`` to train, and recording draws no random number:
an exact resume stays exact.
"""
import contextlib
import datetime
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
from importlib import metadata

import torch

import dwi_ml
from dwi_ml.data.hdf5.fingerprint import streamline_format_differences
from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, RUNS_FILE
from dwi_ml.io_utils.safe_load import load_json_file

logger = logging.getLogger(__name__)

RUNS_FORMAT_VERSION = 1
LIBRARIES = ("torch", "numpy", "h5py", "nibabel", "dipy")
# What the segment's process would have written, had it lived.
_UNRECORDED_END = ("the process ended without recording how (killed: "
                   "SIGKILL, out of memory, a node failure)")


def command_line(program, args):
    """``[program, *arguments]`` as typed, or None for arguments built in
    code (:func:`~dwi_ml.io_utils.script_args.parse_script_args` keeps
    them in ``args.argv``)."""
    argv = getattr(args, "argv", None)
    return None if argv is None else [program, *argv]


def previous_parameters(trainer):
    """The ``parameters.json`` that a resume is about to replace, or None
    (a new run, a process other than the main one, or a file unreadable)."""
    if not (trainer.continues_a_run and trainer.is_main_process):
        return None
    try:
        return load_json_file(os.path.join(trainer.experiment_dir,
                                           PARAMETERS_FILE), "parameters")
    except DwiMLUserError:
        return None


@contextlib.contextmanager
def recorded_segment(trainer, argv, params, previous_params):
    """Record, around the block (the training), this segment of the run.

    Parameters
    ----------
    trainer : DWIMLAbstractTrainer
        Before ``train_and_validate``.
    argv : list of str or None
        See :func:`command_line`.
    params : dict or None
        The ``parameters.json`` written for this segment.
    previous_params : dict or None
        The one it replaced (:func:`previous_parameters`).
    """
    if not trainer.is_main_process:
        yield
        return
    path = os.path.join(trainer.experiment_dir, RUNS_FILE)
    history = _read_history(path, previous_params)
    if history is None:
        yield
        return
    segments = history["segments"]
    segment = _new_segment(trainer, argv, params, previous_params, segments)
    segments.append(segment)
    with trainer.named_write_failures("the run history", path):
        write_json_atomic(path, history, strict=False)
    try:
        yield
    except BaseException as error:
        message = str(error).strip().splitlines()
        segment.update(_ended("error", f"{type(error).__name__}"
                              + (f": {message[0]}" if message else ""),
                              trainer))
        # The error is what the user must see: a failed write only warns.
        try:
            write_json_atomic(path, history, strict=False)
        except OSError as write_error:
            logger.warning("Could not record the end of this run in %s: %s",
                           path, write_error)
        raise
    segment.update(_end_of(trainer))
    with trainer.named_write_failures("the run history", path):
        write_json_atomic(path, history, strict=False)


def _read_history(path, previous_params):
    """runs.json's content, ready for a new segment; None (with a warning)
    when it cannot be read: the run goes on without a record, and the file
    is left as it is."""
    if not os.path.lexists(path):
        segments = []
        if previous_params is not None:
            # An experiment made before runs.json: what is known of its
            # earlier segments is the HDF5 file they trained on.
            dataset = previous_params.get("dataset") or {}
            segments.append({"kind": "unrecorded",
                             "end_detail": "segments trained before runs.json "
                                           "existed",
                             **_hdf5_record(dataset.get("hdf5_file"),
                                            dataset.get("fingerprint"), [])})
        return {"format_version": RUNS_FORMAT_VERSION, "segments": segments}
    try:
        history = load_json_file(path, "run history")
        if not (isinstance(history, dict)
                and history.get("format_version") == RUNS_FORMAT_VERSION
                and isinstance(history.get("segments"), list)
                and all(isinstance(segment, dict)
                        for segment in history["segments"])):
            raise DwiMLUserError(
                f"run history '{path}': expected format_version "
                f"{RUNS_FORMAT_VERSION} and a list of segments.")
    except DwiMLUserError as error:
        logger.warning("%s This segment is not recorded; move the file away "
                       "to start a new history.", error)
        return None
    segments = history["segments"]
    if segments and segments[-1].get("kind") != "unrecorded" \
            and "end" not in segments[-1]:
        # This process holds the experiment's lock: that one is gone.
        segments[-1].update({"ended": None, "end": "unrecorded",
                             "end_detail": _UNRECORDED_END})
    return history


def _new_segment(trainer, argv, params, previous_params, segments):
    dataset = (params or {}).get("dataset") or {}
    return {
        "kind": "resume" if trainer.continues_a_run else "train",
        "started": _now(),
        "argv": argv,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "dwi_ml": dwi_ml_source(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        # What a CPU run's float rounding depends on (docs/training.md).
        "torch_threads": torch.get_num_threads(),
        "device": str(trainer.device),
        "nb_ranks": trainer.distributed.world_size,
        "changes": ({} if previous_params is None
                    else changed_values(previous_params, params or {})),
        **_hdf5_record(dataset.get("hdf5_file"), dataset.get("fingerprint"),
                       segments),
        "position_at_start": _position(trainer),
    }


def _hdf5_record(hdf5_file, fingerprint, segments):
    """The HDF5 keys of a segment: the fingerprint in full only where it
    differs from the last one recorded in ``segments``."""
    digest = fingerprint_digest(fingerprint)
    earlier = [segment["hdf5_fingerprint_sha256"] for segment in segments
               if segment.get("hdf5_fingerprint_sha256")]
    record = {"hdf5_file": hdf5_file, "hdf5_fingerprint_sha256": digest}
    if digest is not None and (not earlier or earlier[-1] != digest):
        record["hdf5_fingerprint"] = fingerprint
    return record


def _position(trainer):
    return {"current_epoch": trainer.current_epoch,
            "phase": trainer.position.phase,
            "nb_batches_done": trainer.position.nb_batches_done}


def _ended(end, detail, trainer):
    return {"ended": _now(), "end": end, "end_detail": detail,
            "position_at_end": _position(trainer)}


def _end_of(trainer):
    """How a segment whose training returned ended."""
    if trainer.interrupted_by:
        return {**_ended("stopped", trainer.stopped_reason, trainer),
                "stopped_by": trainer.interrupted_by}
    # The loop ends when max_epochs is reached, else on patience.
    end = ("completed" if trainer.current_epoch >= trainer.max_epochs
           else "patience")
    return _ended(end, trainer.stopped_reason, trainer)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")


def changed_values(old, new, prefix=""):
    """``{'SECTION.KEY': {'old': A, 'new': B}}`` for each value of two
    ``parameters.json`` that differs (None: absent); nested objects are
    compared key by key, a fingerprint by its SHA-256."""
    changes = {}
    for key in [*new, *(key for key in old if key not in new)]:
        name = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if name == "dataset.fingerprint":
            # The streamlines' format named, the rest by its digest.
            for attr, (old_value, new_value) in streamline_format_differences(
                    before, after).items():
                changes[f"{name}.creation.{attr}"] = {"old": old_value,
                                                      "new": new_value}
            before, after = (_digest_text(before), _digest_text(after))
        if isinstance(before, dict) and isinstance(after, dict):
            changes.update(changed_values(before, after, f"{name}."))
        elif before != after:
            changes[name] = {"old": before, "new": after}
    return changes


def fingerprint_digest(fingerprint):
    """SHA-256 of a fingerprint's canonical JSON; None for none."""
    if fingerprint is None:
        return None
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _digest_text(fingerprint):
    digest = fingerprint_digest(fingerprint)
    return None if digest is None else f"sha256:{digest}"


def library_versions():
    """Installed versions of the libraries results depend on (None: not
    installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def dwi_ml_source():
    """dwi_ml's version, and its git commit when the package is imported
    from a git checkout (None without one, or without git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(dwi_ml.__file__)))
    source = {"version": dwi_ml.__version__, "git_commit": None,
              "git_dirty": None}
    top = _git(root, "rev-parse", "--show-toplevel")
    # Installed in site-packages inside some other repository: not ours.
    if not top or os.path.realpath(top) != os.path.realpath(root):
        return source
    source["git_commit"] = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    source["git_dirty"] = None if status is None else bool(status)
    return source


def _git(folder, *command):
    """git's output in ``folder``, stripped; None when it fails."""
    try:
        result = subprocess.run(["git", "-C", folder, *command],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
