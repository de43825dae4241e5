"""Outputs that dwi_ml may write, and the folders that ``-f`` may replace.

A script writes its output folder with a marker file, ``.dwi_ml_output.json``
(its kind, the dwi_ml version and the creation time). ``-f`` replaces a
folder only when its marker says it holds that same kind of output, or when
it is an experiment written before markers existed (``parameters.json`` with
``checkpoint/``, ``best_model/`` or ``logs/``), and when it holds nothing
but what that kind's scripts write (:data:`OWN_ENTRIES`): ``-f`` never
deletes a file its script did not write. Any other non-empty folder is
refused, with or without ``-f``; an empty one may be used. The current
folder, its parents, the home folder and ``/`` are never written to or
replaced, nor is a symbolic link's target. Output files are replaced with
``-f``, but a folder at an output file's path never is. With or without
``-f``, no output may be an input of the same script (see
:mod:`dwi_ml.io_utils.run_paths`), lie in an experiment's
``checkpoint/``, ``best_model/`` or ``logs/``, which training rewrites, or
be one of the files a dwi_ml folder holds as its state (an experiment's
``parameters.json``, a synthetic dataset's ``config.json``, a marker).
Every check runs before any work and raises a one-line
:class:`~dwi_ml.io_utils.errors.DwiMLUserError`.
"""
import contextlib
import datetime
import errno
import fcntl
import fnmatch
import glob
import json
import logging
import os
import shutil
import time

from dwi_ml import __version__
from dwi_ml.io_utils.arg_checks import check_extension
from dwi_ml.io_utils.atomic import (
    name_max,
    probe_output_file,
    write_json_atomic,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import (
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    EXPERIMENT_FOLDERS,
    LOGS_DIR,
    PARAMETERS_FILE,
    RUNS_FILE,
)
from dwi_ml.io_utils.manifest import file_sha256
from dwi_ml.io_utils.run_paths import record_output
from dwi_ml.io_utils.tractogram_files import refuse_upper_case_tractogram

logger = logging.getLogger(__name__)

MARKER_FILE = ".dwi_ml_output.json"
OUTPUT_KINDS = ("experiment", "synthetic_dataset", "demo_output",
                "attention_views")

# The layout of dwi_ml.io_utils.experiment_layout, repeated here so that io_utils
# does not import torch (a test checks that both agree).

# What the scripts write in each kind of folder (fnmatch patterns; 'A/B':
# folder A holding only B), besides the marker and the temporaries of
# atomic writes. -f removes these only: a folder of that kind that also
# holds anything else (a user's notes, an HDF5 or experiments written
# inside a synthetic dataset, the docs' experiments trained next to the
# demo's) is refused, so -f never deletes what its script did not write.
# A test checks that each script's outputs match.
# dwiml_evaluate_model.py's and visualize_logs.py's default outputs.
_EVALUATION_FILES = tuple(
    f"evaluation_{subset}_{which}.json"
    for subset in ("training", "validation", "testing")
    for which in ("best", "latest"))
_LOGS_PLOTS = ("logs_plot.png", "logs_plot_[0-9].png",
               "logs_plot_[0-9][0-9].png")
# Written into an experiment by other scripts (see
# record_output_in_experiment).
_ADDED_OUTPUTS = (*_EVALUATION_FILES, *_LOGS_PLOTS)
_SUBJECT_LISTS = tuple(f"{split}_subjs.txt"
                       for split in ("training", "validation", "testing"))
OWN_ENTRIES = {
    # evaluation JSONs and the logs plot are written into the experiment
    # by dwiml_evaluate_model.py and visualize_logs.py by default (a logs
    # correlation plot, named after two of its logs: foreign_entries).
    # checkpoint/ and best_model/ are replaced whole at each save; logs/
    # holds the monitors' .npy files, each written on its own.
    "experiment": (PARAMETERS_FILE, RUNS_FILE, CHECKPOINT_DIR, BEST_MODEL_DIR,
                   f"{LOGS_DIR}/*.npy", ".lock", *_EVALUATION_FILES,
                   *_LOGS_PLOTS),
    # Folders written whole, then sealed (seal_output_folder): these are
    # used only when the run that wrote them stopped before the end.
    "synthetic_dataset": ("config.json", "dwi_ml_ready", *_SUBJECT_LISTS),
    "demo_output": ("synthetic", "dataset.hdf5", "experiments/demo",
                    *_LOGS_PLOTS, "tracking_subj-*.trk",
                    "tracking_subj-*.trk.json"),
    "attention_views": ("*_layer*_head*.png", "streamlines_attention.trk"),
}
_TEMPORARY_ENTRIES = (".*.tmp", ".*.old")
# Folders written whole by one script: sealing records each file's
# fingerprint, so that -f refuses a file changed since (an edited config).
# Not the demo's output: the experiment in it changes when resumed.
_FINGERPRINTED_KINDS = ("synthetic_dataset", "attention_views")
_HASHED_SIZE = 1 << 20

_KIND_NAMES = {"experiment": "dwi_ml experiment",
               "synthetic_dataset": "dwi_ml synthetic dataset",
               "demo_output": "dwi_ml demo output",
               "attention_views": "dwi_ml attention views folder"}


def check_experiment_name(name, what="experiment_name"):
    """Refuse an experiment name that is not one plain folder name.

    Parameters
    ----------
    name : str
        The name of a folder inside the experiments path.
    what : str
        The argument's name, for the message.

    Returns
    -------
    str
        ``name``, unchanged.

    Raises
    ------
    DwiMLUserError
        When ``name`` is empty, ``.`` or ``..``, or holds a path separator:
        the experiment would not be a new folder inside the experiments path.
    """
    separators = [sep for sep in ("/", os.sep, os.altsep) if sep]
    if name in ("", ".", "..") or any(sep in name for sep in separators):
        raise DwiMLUserError(
            f"{what}: expected a plain folder name (not empty, not '.' or "
            f"'..', without '/'), got {name!r}.")
    return name


def protected_folder_reason(path):
    """Why dwi_ml must never write into or replace ``path``, or None.

    The root folder, the home folder, the current folder and its parents
    are protected, whatever their content.
    """
    real = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    if real == os.path.realpath(os.sep):
        return "the root folder"
    if real == os.path.realpath(os.path.expanduser("~")):
        return "your home folder"
    if real == cwd:
        return "the current folder"
    if cwd.startswith(real.rstrip(os.sep) + os.sep):
        return "a parent of the current folder"
    return None


def _check_parent(path, what):
    """The folder that will hold ``path`` exists, is a folder, is writable."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        ancestor = parent
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise DwiMLUserError(
                f"{what} '{path}': '{ancestor}' is a file, expected a "
                "folder.")
        # Said like the other two: 'what' may end in 'folder' already.
        raise DwiMLUserError(
            f"{what} '{path}': folder '{parent}' does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DwiMLUserError(
            f"{what} '{path}': folder '{parent}' is not writable.")
    size, limit = len(os.fsencode(os.path.basename(path))), name_max(parent)
    if size > limit:
        raise DwiMLUserError(
            f"{what} '{path}': expected a file name of at most {limit} "
            f"bytes (the file system's limit), found {size}.")


def refuse_inside_experiment_folders(path, what):
    """Refuse ``path`` inside an experiment's ``checkpoint/``,
    ``best_model/`` or ``logs/``: training replaces those folders whole (a
    resumed run swaps ``checkpoint/``), and what else they hold with them."""
    folder = os.path.join(os.path.realpath(os.path.dirname(
        os.path.abspath(path))), os.path.basename(path.rstrip(os.sep)))
    while os.path.dirname(folder) != folder:
        experiment = os.path.dirname(folder)
        if (os.path.basename(folder) in EXPERIMENT_FOLDERS
                and os.path.isdir(experiment)
                and folder_kind(experiment) == "experiment"):
            raise DwiMLUserError(
                f"{what} '{path}' is inside '{folder}', a folder of "
                f"experiment '{experiment}' that training rewrites (and "
                "removes what else it holds): give a path outside it.")
        folder = experiment


# The files that hold a dwi_ml folder's state, read back by its scripts:
# no output file may replace one (nor any folder's marker). An experiment's
# evaluation JSONs and logs plot, and a demo output's files (written by the
# demo itself), are outputs, replaced with -f.
_STATE_FILES = {"experiment": (PARAMETERS_FILE, RUNS_FILE, ".lock"),
                "synthetic_dataset": ("config.json", *_SUBJECT_LISTS)}


def _refuse_state_file_of_output_folder(path, what):
    """Refuse an output file that is a dwi_ml folder's state (an
    experiment's ``parameters.json`` or ``runs.json``, a synthetic
    dataset's ``config.json``, any marker): ``-f`` would replace it by
    another script's output, and break the folder."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    name = os.path.basename(path)
    if name == MARKER_FILE:
        raise DwiMLUserError(
            f"{what} '{path}' is named like the marker by which dwi_ml "
            "recognises its folders: refused with or without -f; give "
            "another file name.")
    kind = folder_kind(folder)
    if kind is None or name not in _STATE_FILES.get(kind, ()):
        return
    raise DwiMLUserError(
        f"{what} '{path}' is a file of the {_KIND_NAMES[kind]} '{folder}', "
        "which dwi_ml wrote and reads back: refused with or without -f; "
        "give another file name.")


# A tractogram's record, OUT.trk.json (dwi_ml.io_utils.provenance): only
# the script that writes OUT.trk replaces it.
PROVENANCE_KIND = "dwi_ml provenance"
PROVENANCE_SUFFIX = ".json"
PROVENANCE_WHAT = "provenance sidecar"


def provenance_record(path):
    """The record in ``path`` when it is a provenance sidecar that dwi_ml
    wrote (its ``kind``), else None (any other file, none, a FIFO, a file
    over 1 MiB)."""
    if not path.endswith(PROVENANCE_SUFFIX) or not os.path.isfile(path) \
            or os.path.getsize(path) > _HASHED_SIZE:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(content, dict) and content.get("kind") == PROVENANCE_KIND:
        return content
    return None


def is_provenance_sidecar(path):
    """Whether ``path`` is a provenance sidecar that dwi_ml wrote."""
    return provenance_record(path) is not None


def _refuse_link_to_folder(path, what, ignore=()):
    """Refuse a symbolic link to a non-empty folder: replacing it would
    empty the link's target, which may be another output of the user's."""
    link = path.rstrip(os.sep) or path
    if (os.path.islink(link) and os.path.isdir(link)
            and not _is_empty(link, ignore)):
        raise DwiMLUserError(
            f"{what} '{path}' is a symbolic link to "
            f"'{os.path.realpath(link)}'; dwi_ml never writes into or "
            "replaces a link's target: give the real folder or another name.")


def check_output_free(path, overwrite, what="output", extensions=None):
    """Check that the output file ``path`` can be written, before any work.

    Parameters
    ----------
    path : str
        An output file.
    overwrite : bool
        Whether an existing file at ``path`` may be replaced (``-f``).
    what : str
        What the output is, for the message.
    extensions : tuple of str or None
        Lower-case extensions (with the dot) that ``path`` must end with;
        None accepts any.

    Raises
    ------
    DwiMLUserError
        When ``path`` is a folder (``-f`` never replaces one), its parent is
        missing, is a file or is not writable, it is also an input of the
        script (see :mod:`dwi_ml.io_utils.run_paths`), lies in an
        experiment's ``checkpoint/``, ``best_model/`` or ``logs/``, or is
        a file that a dwi_ml folder holds as its state (all with or without
        ``overwrite``), it exists without ``overwrite``, or
        its extension is not one of ``extensions``.
    """
    if os.path.isdir(path):
        raise DwiMLUserError(
            f"{what} '{path}' is a folder; expected a file name (-f never "
            "replaces a folder).")
    _check_parent(path, what)
    record_output(path, what)
    refuse_inside_experiment_folders(path, what)
    _refuse_state_file_of_output_folder(path, what)
    if what != PROVENANCE_WHAT and is_provenance_sidecar(path):
        raise DwiMLUserError(
            f"{what} '{path}' is the provenance sidecar of "
            f"'{path[:-len(PROVENANCE_SUFFIX)]}', which dwi_ml wrote with "
            "it: refused with or without -f; give another file name.")
    if os.path.lexists(path) and not overwrite:
        raise DwiMLUserError(
            f"{what} '{path}' already exists; use -f/--overwrite to "
            "replace it.")
    if extensions is not None:
        check_extension(path, extensions, what)
    refuse_upper_case_tractogram(path, what)
    try:
        probe_output_file(path)
    except OSError as error:
        raise DwiMLUserError(
            f"{what} '{path}': cannot create a file in "
            f"'{os.path.dirname(os.path.abspath(path))}' "
            f"({error.strerror or error}).") from None


def _marker_field(path, key):
    """``key`` of the marker of folder ``path``; None if unreadable."""
    try:
        with open(os.path.join(path, MARKER_FILE)) as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _read_marker(path):
    kind = _marker_field(path, "kind")
    return kind if kind in OUTPUT_KINDS else None


def _is_old_experiment(path):
    return (os.path.isfile(os.path.join(path, PARAMETERS_FILE))
            and any(os.path.isdir(os.path.join(path, name))
                    for name in EXPERIMENT_FOLDERS))


def folder_kind(path):
    """The kind of dwi_ml output that folder ``path`` holds, or None.

    Parameters
    ----------
    path : str
        An existing folder.

    Returns
    -------
    str or None
        One of :data:`OUTPUT_KINDS`, from the folder's marker file, or
        'experiment' for an experiment written before markers existed.
        None for any other folder.
    """
    kind = _read_marker(path)
    if kind is None and _is_old_experiment(path):
        return "experiment"
    return kind


def _is_empty(path, ignore):
    return all(name in ignore for name in os.listdir(path))


def check_output_folder(path, kind, overwrite, what="output folder",
                        hint="", ignore=()):
    """Check that dwi_ml may write the output folder ``path``, before any work.

    Parameters
    ----------
    path : str
        The output folder.
    kind : str
        One of :data:`OUTPUT_KINDS`: what the folder will hold.
    overwrite : bool
        Whether a folder already holding this kind of output may be
        replaced (``-f``).
    what : str
        What the folder is, for the message.
    hint : str
        Appended to the 'already exists' message (e.g. how to continue it).
    ignore : tuple of str
        Names that do not make the folder non-empty (e.g. our lock file).

    Raises
    ------
    DwiMLUserError
        When ``path`` is protected (see :func:`protected_folder_reason`), a
        file, or a symbolic link to a non-empty folder; when its parent is
        missing or not writable; when it is also an input of the script or
        lies in an experiment's ``checkpoint/``, ``best_model/`` or
        ``logs/``; when it is a non-empty folder that does not hold ``kind``
        (with or without ``overwrite``); when it holds ``kind`` and
        ``overwrite`` is False, unless it holds nothing but its marker (a
        run that stopped before writing any output).
    """
    reason = protected_folder_reason(path)
    if reason is not None:
        raise DwiMLUserError(
            f"{what} '{path}' is {reason}; dwi_ml never writes into or "
            "replaces it: give a new folder name.")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise DwiMLUserError(
            f"{what} '{path}' is a file; expected a folder (-f never "
            "replaces a file by a folder).")
    _check_parent(path, what)
    record_output(path, what)
    refuse_inside_experiment_folders(path, what)
    _refuse_link_to_folder(path, what, ignore)
    if not os.path.isdir(path):
        return
    # Only the marker of this kind (a run that stopped before writing any
    # output): nothing to lose, no -f needed.
    if not _is_empty(path, ignore) and not (
            _is_empty(path, (*ignore, MARKER_FILE))
            and folder_kind(path) == kind):
        _check_folder_holds(path, kind, overwrite, what, hint)
    if not os.access(path, os.W_OK | os.X_OK):
        raise DwiMLUserError(f"{what} '{path}' is not writable.")


def _check_folder_holds(path, kind, overwrite, what, hint):
    found = folder_kind(path)
    if found is None:
        raise DwiMLUserError(
            f"{what} '{path}' is not empty and is not a {_KIND_NAMES[kind]} "
            f"(no {MARKER_FILE}): refused with or without -f; give a new or "
            "empty folder.")
    if found != kind:
        raise DwiMLUserError(
            f"{what} '{path}' holds a {_KIND_NAMES[found]}, expected a "
            f"{_KIND_NAMES[kind]}: refused with or without -f.")
    if not overwrite:
        raise DwiMLUserError(
            f"{what} '{path}' already exists; use -f/--overwrite to replace "
            f"it{hint}.")
    _refuse_foreign_entries(path, kind, what)


def foreign_entries(path, kind):
    """Paths in folder ``path`` (relative, sorted) that ``kind``'s scripts
    did not write: those not recorded when the folder was sealed
    (:func:`seal_output_folder`), else those that do not match
    :data:`OWN_ENTRIES`, where an experiment's ``logs/`` may hold only the
    logs recorded by :func:`record_written_entries` (any ``.npy`` in
    experiments written before it)."""
    sealed = _sealed_entries(path)
    if sealed is not None:
        return _unsealed_entries(path, sealed)
    patterns = OWN_ENTRIES[kind]
    if kind != "experiment":
        return _foreign_entries(path, (MARKER_FILE, *patterns))
    written = _marker_field(path, "written")
    if isinstance(written, list):
        patterns = [pattern for pattern in patterns
                    if pattern != f"{LOGS_DIR}/*.npy"]
        patterns += [glob.escape(entry) for entry in written
                     if isinstance(entry, str)]
    outputs = _marker_field(path, "outputs")
    if isinstance(outputs, dict):
        # Evaluations and plots are the experiment's when recorded as
        # written (record_output_in_experiment) and unchanged since.
        patterns = [pattern for pattern in patterns
                    if pattern not in _ADDED_OUTPUTS]
        return [name for name in _foreign_entries(path, (MARKER_FILE,
                                                         *patterns))
                if not (name in outputs and os.path.isfile(
                    os.path.join(path, name)) and not os.path.islink(
                        os.path.join(path, name))
                        and _output_fingerprint(os.path.join(path, name))
                        == outputs[name])]
    # Experiments written before outputs were recorded: by their names.
    return [name for name in _foreign_entries(path, (MARKER_FILE, *patterns))
            if not _is_logs_correlation_plot(path, name)]


def record_output_in_experiment(path):
    """Record an output file now complete at ``path`` in its experiment's
    marker, if it lies directly in a dwi_ml experiment under a name that
    other scripts write there (an evaluation, a logs plot or a logs
    correlation plot): ``-f`` then removes it with the experiment, and
    refuses it once changed (a user's figure saved under that name).

    Any other path is left alone.
    """
    folder, name = os.path.split(os.path.abspath(path))
    if not (any(fnmatch.fnmatchcase(name, pattern)
                for pattern in _ADDED_OUTPUTS)
            or _is_logs_correlation_plot(folder, name)):
        return
    try:
        with _marker_update(folder):
            content = _marker_content(folder)
            if content is None or content.get("kind") != "experiment":
                return
            outputs = _recorded_outputs(folder, content)
            outputs[name] = _output_fingerprint(path)
            content["outputs"] = outputs
            write_json_atomic(os.path.join(folder, MARKER_FILE), content,
                              strict=False)
    except OSError as error:
        # The output is complete: -f will only refuse it.
        logger.warning("%s: not recorded in the experiment's %s (%s): -f "
                       "will refuse it as not dwi_ml's.", path, MARKER_FILE,
                       error)


def _recorded_outputs(folder, content):
    """The evaluations and plots of experiment ``folder`` that are its own,
    with their fingerprints: those recorded in its marker ``content``, or,
    for a marker written before outputs were recorded, those named as the
    scripts name them (its own then; recorded from now on)."""
    outputs = content.get("outputs")
    if isinstance(outputs, dict):
        return dict(outputs)
    own = {}
    for name in sorted(os.listdir(folder)):
        file_path = os.path.join(folder, name)
        if (os.path.isfile(file_path) and not os.path.islink(file_path)
                and (any(fnmatch.fnmatchcase(name, pattern)
                         for pattern in _ADDED_OUTPUTS)
                     or _is_logs_correlation_plot(folder, name))):
            own[name] = _output_fingerprint(file_path)
    return own


def _marker_content(folder):
    """The marker of ``folder`` as a dict, or None (none, or unreadable)."""
    try:
        with open(os.path.join(folder, MARKER_FILE)) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


# How long a marker update waits for another process's update of the same
# folder (each holds it for milliseconds) before it goes on unlocked.
_MARKER_LOCK_WAIT = 30.0


@contextlib.contextmanager
def _marker_update(folder):
    """Hold an exclusive ``flock`` on ``folder`` itself while its marker is
    read, changed and written back: a training run recording its logs and
    a plot recorded at the same moment would otherwise each write back the
    marker it read, and one record would be lost. Where the file system
    has no locks, or the folder cannot be opened, it goes on unlocked."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + _MARKER_LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if (error.errno not in (errno.EAGAIN, errno.EACCES)
                        or time.monotonic() > deadline):
                    break
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def _is_logs_correlation_plot(path, name):
    """Whether ``name`` is ``logs_correlation_LOG1_LOG2.png`` for two logs
    of the experiment ``path``: dwiml_visualize_logs_correlation.py's
    default output (a pattern of any name took a user's look-alike)."""
    prefix, suffix = "logs_correlation_", ".png"
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return False
    try:
        logs = {entry[:-len(".npy")] for entry in
                os.listdir(os.path.join(path, LOGS_DIR))
                if entry.endswith(".npy")}
    except OSError:
        return False
    pair = name[len(prefix):-len(suffix)]
    return any(pair[:cut] in logs and pair[cut + 1:] in logs
               for cut, character in enumerate(pair) if character == "_")


def record_written_entries(path, entries):
    """Add ``entries`` (paths relative to ``path``) to what its marker says
    dwi_ml wrote there, for the files an experiment gains one by one (its
    logs): ``-f`` then removes these and refuses the others.

    Nothing is done for a folder without a readable marker.
    """
    with _marker_update(path):
        content = _marker_content(path)
        if content is None:
            return
        written = content.get("written")
        written = ({entry for entry in written if isinstance(entry, str)}
                   if isinstance(written, list) else set())
        if set(entries) <= written:
            return
        content["written"] = sorted(written | set(entries))
        write_json_atomic(os.path.join(path, MARKER_FILE), content,
                          strict=False)


def seal_output_folder(path):
    """Record in the marker of ``path`` every entry now in it.

    Call it when a script has written the whole folder (emptied first by
    :func:`reset_output_folder`, or written under a temporary name): ``-f``
    then removes these entries only, and refuses anything added since
    (a user's file, even one named like an output). For a synthetic
    dataset or attention views it also records each file's size and, up to
    1 MiB, its SHA-256: ``-f`` refuses a file changed since (an edited
    ``config.json``).
    """
    marker = os.path.join(path, MARKER_FILE)
    with _marker_update(path):
        with open(marker) as f:
            content = json.load(f)
        entries = sorted(_entries_under(path, ""))
        content["entries"] = entries
        if content.get("kind") in _FINGERPRINTED_KINDS:
            content["fingerprints"] = {
                entry: _fingerprint(os.path.join(path, entry))
                for entry in entries
                if os.path.isfile(os.path.join(path, entry))
                and not os.path.islink(os.path.join(path, entry))}
        write_json_atomic(marker, content, strict=False)


def _fingerprint(path, hashed_size=_HASHED_SIZE):
    """The size of file ``path`` and, up to ``hashed_size`` bytes (None:
    any size), its SHA-256: what tells a user's edit from what dwi_ml
    wrote."""
    size = os.path.getsize(path)
    if hashed_size is not None and size > hashed_size:
        return f"{size}"
    return f"{size}:{file_sha256(path)}"


def _output_fingerprint(path):
    """An evaluation's or a plot's fingerprint: hashed whatever its size
    (a few MB at most), so that a user's file of the same size saved over
    it is never taken for it."""
    return _fingerprint(path, None)


def changed_entries(path):
    """Files of folder ``path`` (relative, sorted) that differ from what
    :func:`seal_output_folder` recorded (a user's edit of a config, a
    figure of theirs saved under an output's name); [] for folders sealed
    without fingerprints."""
    fingerprints = _marker_field(path, "fingerprints")
    if not isinstance(fingerprints, dict):
        return []
    changed = []
    for entry, recorded in sorted(fingerprints.items()):
        file_path = os.path.join(path, entry)
        if (os.path.isfile(file_path) and not os.path.islink(file_path)
                and _fingerprint(file_path) != recorded):
            changed.append(entry)
    return changed


def _is_temporary(name):
    return any(fnmatch.fnmatchcase(name, temporary)
               for temporary in _TEMPORARY_ENTRIES)


def _entries_under(folder, prefix):
    entries = []
    for entry in os.scandir(folder):
        relative = prefix + entry.name
        if relative == MARKER_FILE or _is_temporary(entry.name):
            continue
        entries.append(relative)
        if entry.is_dir(follow_symlinks=False):
            entries += _entries_under(entry.path, relative + "/")
    return entries


def _sealed_entries(path):
    """The entries recorded by :func:`seal_output_folder`, or None."""
    entries = _marker_field(path, "entries")
    if not isinstance(entries, list):
        return None
    return {entry for entry in entries if isinstance(entry, str)}


def _unsealed_entries(path, sealed):
    """Entries under ``path`` not in ``sealed``; a foreign folder is named,
    not what it holds. Inside an experiment (the demo's), what the
    experiment itself counts as its own is not foreign: its evaluations
    and plots, and the logs of a resume."""
    foreign = []
    experiments = {}
    for entry in sorted(_entries_under(path, "")):
        if entry in sealed or any(entry.startswith(folder + "/")
                                  for folder in foreign):
            continue
        experiment_foreign = _foreign_in_experiment_above(path, entry,
                                                          experiments)
        if experiment_foreign is None or entry in experiment_foreign:
            foreign.append(entry)
    return foreign


def _foreign_in_experiment_above(path, entry, cache):
    """The foreign entries (relative to ``path``) of the closest experiment
    folder above ``entry`` inside ``path``; None if there is none."""
    parts = entry.split("/")[:-1]
    for depth in range(len(parts), 0, -1):
        folder = "/".join(parts[:depth])
        if folder not in cache:
            full = os.path.join(path, folder)
            cache[folder] = (
                {f"{folder}/{name}"
                 for name in foreign_entries(full, "experiment")}
                if _marker_field(full, "kind") == "experiment" else None)
        if cache[folder] is not None:
            return cache[folder]
    return None


def _foreign_entries(path, patterns):
    inside = {}   # top-level pattern -> patterns of what it may hold
    for pattern in patterns:
        head, _, rest = pattern.partition("/")
        inside.setdefault(head, []).append(rest)
    foreign = []
    for name in sorted(os.listdir(path)):
        allowed = [rest for head, rests in inside.items()
                   if fnmatch.fnmatchcase(name, head) for rest in rests]
        if _is_temporary(name) or "" in allowed:
            continue
        full = os.path.join(path, name)
        if allowed and os.path.isdir(full) and not os.path.islink(full):
            foreign += [f"{name}/{entry}"
                        for entry in _foreign_entries(full, allowed)]
        else:
            foreign.append(name)
    return foreign


def _changed_entries_under(path):
    """:func:`changed_entries` of ``path`` and of every folder under it
    with its own marker (the demo's synthetic dataset), relative to
    ``path``."""
    changed = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        if folder != path and MARKER_FILE not in files:
            continue
        prefix = os.path.relpath(folder, path)
        changed += [entry if folder == path else f"{prefix}/{entry}"
                    for entry in changed_entries(folder)]
    return changed


def _quoted(names, most=5):
    """"'a', 'b' and 3 more": the first ``most`` names, quoted."""
    shown = ", ".join(f"'{name}'" for name in names[:most])
    return (shown + f" and {len(names) - most} more" if len(names) > most
            else shown)


def _refuse_foreign_entries(path, kind, what):
    changed = _changed_entries_under(path)
    if changed:
        raise DwiMLUserError(
            f"{what} '{path}' is a {_KIND_NAMES[kind]}, but "
            f"{_quoted(changed)} changed since dwi_ml wrote "
            f"{'it' if len(changed) == 1 else 'them'}: -f removes only what "
            "dwi_ml wrote; keep a copy elsewhere and remove the folder "
            "yourself, or give a new folder.")
    foreign = foreign_entries(path, kind)
    if foreign:
        raise DwiMLUserError(
            f"{what} '{path}' is a {_KIND_NAMES[kind]} but also holds "
            f"{_quoted(foreign)}, which {'is' if len(foreign) == 1 else 'are'} "
            "not part of one: -f removes only what dwi_ml wrote; move "
            f"{'it' if len(foreign) == 1 else 'them'} elsewhere or give a new "
            "folder.")


def mark_output_folder(path, kind, outputs=None):
    """Write the marker that lets ``-f`` recognise folder ``path`` later.

    Parameters
    ----------
    path : str
        An existing folder, written by dwi_ml.
    kind : str
        One of :data:`OUTPUT_KINDS`.
    outputs : dict or None
        For an experiment: the evaluations and plots already in it that
        are its own (name -> fingerprint); None: none.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    content = {"kind": kind, "dwi_ml_version": __version__,
               "created": created}
    if kind == "experiment":
        # Its evaluations and plots are recorded as written.
        content["outputs"] = dict(outputs or {})
    write_json_atomic(os.path.join(path, MARKER_FILE), content,
                      strict=False)


def reset_output_folder(path, kind, keep=()):
    """Make ``path`` an empty folder marked as ``kind``, keeping ``keep``.

    The folder is created if missing. An existing one must be empty (but
    for ``keep``) or already hold ``kind``: the check is repeated here, so
    this never empties a folder that dwi_ml did not write.

    Parameters
    ----------
    path : str
        The output folder, checked by :func:`check_output_folder`.
    kind : str
        One of :data:`OUTPUT_KINDS`.
    keep : tuple of str
        Entries left in place (e.g. the lock file of the running process).
    """
    if protected_folder_reason(path) is not None:
        raise DwiMLUserError(f"output folder '{path}': refusing to empty it.")
    _refuse_link_to_folder(path, "output folder", keep)
    if not os.path.isdir(path):
        os.mkdir(path)
    elif not _is_empty(path, keep):
        if folder_kind(path) != kind:
            raise DwiMLUserError(
                f"output folder '{path}' is not a {_KIND_NAMES[kind]}: "
                "refusing to empty it.")
        _refuse_foreign_entries(path, kind, "output folder")
    # Marked first: a kill while emptying leaves a folder -f still knows,
    # with the evaluations and plots it still holds.
    with _marker_update(path):
        content = _marker_content(path) if kind == "experiment" else None
        kept = (None if content is None or content.get("kind") != kind
                else _recorded_outputs(path, content))
        mark_output_folder(path, kind, kept)
    for entry in os.scandir(path):
        if entry.name in (*keep, MARKER_FILE):
            continue
        if entry.is_symlink():
            _warn_link_removed(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)
    if kept:
        with _marker_update(path):
            mark_output_folder(path, kind)


def _warn_link_removed(link):
    """Name the target of a link that -f removes: the target stays (it may
    be the user's), and what was written through the link is now written
    here."""
    logger.warning(
        "-f: '%s' was a symbolic link to '%s'; the link is removed and its "
        "target left as it is (remove it yourself if it is no longer "
        "needed); this run writes its own '%s' in '%s'.",
        link, os.path.realpath(link), os.path.basename(link),
        os.path.dirname(link))
