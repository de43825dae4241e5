"""Write files and folders under a temporary name, then rename them."""
import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading

import numpy as np

from dwi_ml.io_utils.arg_checks import extension_of
from dwi_ml.io_utils.errors import DwiMLUserError, Terminated, raise_terminated
from dwi_ml.io_utils.run_paths import record_written
from dwi_ml.io_utils.tractogram_files import TRACTOGRAM_EXTENSIONS

# tempfile's names: PREFIX + 8 characters of this alphabet + SUFFIX.
_TEMP_RANDOM = "[a-z0-9_]{8}"


def _written(path):
    """An output now complete at ``path``: for the run's checks, and, for an
    evaluation or a logs plot written into an experiment, for ``-f``."""
    record_written(path)
    # Imported here: output_folders imports this module.
    from dwi_ml.io_utils.output_folders import record_output_in_experiment
    record_output_in_experiment(path)


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Formats that nibabel and dipy choose by the extension: their temporary
# files end in it (atomic_output_file_with_extension). NIfTI's as
# nifti_files.NIFTI_EXTENSIONS, which imports this module.
_FORMAT_EXTENSIONS = (".nii", ".nii.gz", *TRACTOGRAM_EXTENSIONS)


def name_max(folder):
    """The longest file name, in bytes, that ``folder`` takes (255 when
    the system does not say, or says nothing usable)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
    return limit if limit > 0 else 255


def _cut_to_fit(folder, name, taken):
    """NAME, cut so that ``taken`` more bytes fit the folder's limit: a
    valid long output name would otherwise fail only when written, after
    the work."""
    encoded = os.fsencode(name)
    room = max(1, name_max(folder) - taken)
    return os.fsdecode(encoded[:room]) if len(encoded) > room else name


def _temporary_prefix(folder, name, reserve=0):
    """``.NAME.``, NAME cut to leave room for mkstemp's 8 random
    characters, ``.tmp`` and ``reserve`` bytes after it."""
    return f".{_cut_to_fit(folder, name, len('..') + 8 + 4 + reserve)}."


def old_version_name(folder, name):
    """``.NAME.old``, where :func:`atomic_output_folder` keeps the previous
    version of ``folder/NAME`` during its swap (NAME cut to fit)."""
    return f".{_cut_to_fit(folder, name, len('.') + len('.old'))}.old"


def _new_temporary_file(folder, name, reserve=0):
    fd, tmp_path = tempfile.mkstemp(
        prefix=_temporary_prefix(folder, name, reserve), suffix=".tmp",
        dir=folder)
    os.close(fd)
    return tmp_path


def probe_output_file(path):
    """Create and remove the temporary files that
    :func:`atomic_output_file_with_extension` would write ``path`` through
    (the longer of its and :func:`atomic_output_file`'s).

    Raises
    ------
    OSError
        When the folder cannot hold them, though ``os.access`` says it is
        writable (``/sys``, a read-only mount, a name too long).
    """
    folder, name = os.path.split(os.path.abspath(path))
    extension = extension_of(name)
    if extension not in _FORMAT_EXTENSIONS:
        extension = ""
    # A Ctrl-C meanwhile is raised once both are removed.
    held = _StopSignalsHeld()
    try:
        tmp_path = _new_temporary_file(folder, name,
                                       len(os.fsencode(extension)))
        try:
            if extension:
                with open(tmp_path + extension, "xb"):
                    pass
                os.remove(tmp_path + extension)
        finally:
            os.remove(tmp_path)
    finally:
        held.release()


# Handlers that raise in the main thread, and what they raise.
_RAISING_HANDLERS = {
    signal.SIGINT: (signal.default_int_handler, KeyboardInterrupt),
    signal.SIGTERM: (raise_terminated, Terminated),
}


class _StopSignalsHeld:
    """From creation to release(), Ctrl-C and SIGTERM are recorded instead
    of raised.

    Only where Python would raise for them: in the main thread, under
    Python's default SIGINT handler or the scripts' SIGTERM one (a training
    run installs its own, which never raise). Another thread may receive
    the signal (torch's threads), so blocking it in this thread would not
    hold it.
    """

    def __init__(self):
        self._received = []
        self._held = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, (handler, _) in _RAISING_HANDLERS.items():
            if signal.getsignal(signum) is handler:
                self._held[signum] = handler
                signal.signal(signum, self._record)

    def _record(self, signum, frame):
        self._received.append(signum)

    def release(self):
        """Restore the handlers; raise for the first signal that came."""
        held, self._held = self._held, {}
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if self._received:
            raise _RAISING_HANDLERS[self._received[0]][1]()


def _create_holding_stop_signals(create):
    """Call ``create()`` (which makes a temporary) holding Ctrl-C and SIGTERM.

    Returns its result and the :class:`_StopSignalsHeld`, which the caller
    releases first thing inside the ``try`` that removes the temporary: a
    Ctrl-C that came meanwhile raises there, and the temporary is removed,
    where it would have been left behind between its creation and the
    ``try``.
    """
    held = _StopSignalsHeld()
    try:
        return create(), held
    except BaseException:
        held.release()
        raise


def _sync(path):
    """fsync a file or folder: a rename is durable only after its data
    (a node that crashes, or a network file system's client, could leave
    the new name with empty files and the previous version removed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Folders of some file systems cannot be synced; files can.
        if error.errno not in (errno.EINVAL, errno.EBADF) or \
                not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def _sync_tree(folder):
    """fsync every file and folder under ``folder``, then itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            _sync(os.path.join(root, name))
        _sync(root)


@contextlib.contextmanager
def atomic_output_file(path, _reserve=0):
    """Yield a temporary path next to ``path``; rename it on success.

    An exception (or a kill) inside the block never leaves a partial file at
    ``path``: the temporary file is removed on error (a Ctrl-C or a SIGTERM
    to a script too, even one that comes as it is created), and the rename
    is atomic on POSIX file systems. A SIGKILL leaves the temporary, never
    a partial ``path``.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp_path, held = _create_holding_stop_signals(
        lambda: _new_temporary_file(folder, name, _reserve))
    try:
        held.release()
        yield tmp_path
        # mkstemp creates 0600 files; give the output the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        _sync(tmp_path)
        group = getattr(_GROUP, "pending", None)
        if group is not None:
            # Renamed by output_group with the others; removed if it fails.
            group.append((tmp_path, path))
            tmp_path = None
            return
        os.replace(tmp_path, path)
        _sync(folder)
        _written(path)
    finally:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)


# The outputs of the innermost output_group, waiting for its end.
_GROUP = threading.local()


@contextlib.contextmanager
def output_group():
    """The files written inside (by :func:`atomic_output_file` and what
    uses it) appear together, when the block ends without error.

    Each is renamed into place only then, all with Ctrl-C and SIGTERM held
    from the first rename to the last: a stop or an error never leaves a
    run's outputs half new, half from an earlier run (a matrix and the
    labels of its rows). Nothing inside may read an output back from its
    final path.
    """
    outer = getattr(_GROUP, "pending", None)
    pending = _GROUP.pending = []
    try:
        yield
        # Held from here: a Ctrl-C now is raised once all are renamed.
        held = _StopSignalsHeld()
    except BaseException:
        for tmp_path, _ in pending:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        raise
    finally:
        _GROUP.pending = outer
    if outer is not None:
        outer.extend(pending)
        held.release()
        return
    try:
        for tmp_path, path in pending:
            os.replace(tmp_path, path)
        for folder in {os.path.dirname(os.path.abspath(path))
                       for _, path in pending}:
            _sync(folder)
        for _, path in pending:
            _written(path)
    finally:
        for tmp_path, _ in pending:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        held.release()


@contextlib.contextmanager
def atomic_output_file_with_extension(path):
    """As :func:`atomic_output_file`, with a temporary path that ends in
    ``path``'s extension (nibabel and dipy choose the format by it)."""
    extension = extension_of(path)
    with atomic_output_file(path, len(os.fsencode(extension))) as tmp_path:
        tmp_with_extension = tmp_path + extension
        try:
            yield tmp_with_extension
            os.replace(tmp_with_extension, tmp_path)
        finally:
            if os.path.exists(tmp_with_extension):
                os.remove(tmp_with_extension)


def save_npy(path, array):
    """Save an array at ``path`` (ending in .npy), atomically: a kill while
    writing leaves the previous file, never a file cut short."""
    # The bytes first: np.save to a file goes through C stdio, whose failed
    # flush (a full disk, a file size limit) raised nothing and left a file
    # cut short; Python's own write raises.
    buffer = io.BytesIO()
    np.save(buffer, array)
    with atomic_output_file(path) as tmp_path:
        with open(tmp_path, "wb") as f:
            f.write(buffer.getbuffer())


def save_torch_file(obj, path):
    """``torch.save(obj)`` at ``path``, atomically, with bytes that depend
    only on ``obj``.

    Saved to a path, torch names the archive's inner folder after the
    file: the temporary name made the same weights hash differently at
    each save. Through a file object the folder is always ``archive``.
    """
    import torch  # here: the HDF5 tools import this module without torch
    with atomic_output_file(path) as tmp_path:
        with open(tmp_path, "wb") as f:
            torch.save(obj, f)


def _link_target(path):
    """The absolute path of ``path``, or of what it links to."""
    return (os.path.realpath(path) if os.path.islink(path)
            else os.path.abspath(path))


@contextlib.contextmanager
def atomic_output_folder(path):
    """Yield a temporary folder next to ``path``; swap it in on success.

    The previous folder at ``path`` stays complete until the new one is
    fully written, so a kill during the write leaves it loadable. A
    symbolic link at ``path`` (a checkpoint/ kept on another disk) stays:
    the folder it points to is replaced, beside it.
    """
    # 'link/' is the link: its trailing slash would hide it (islink).
    path = os.path.normpath(path)
    target = _link_target(path)
    parent, name = os.path.split(target)
    tmp_path, held = _create_holding_stop_signals(lambda: tempfile.mkdtemp(
        prefix=_temporary_prefix(parent, name), suffix=".tmp", dir=parent))
    old_path = os.path.join(parent, old_version_name(parent, name))
    try:
        held.release()
        # The previous folder's permissions (a user's empty folder made
        # private stays private), else the umask's.
        mode = (stat.S_IMODE(os.stat(target).st_mode)
                if os.path.isdir(target) else 0o777 & ~_current_umask())
        os.chmod(tmp_path, mode)
        yield tmp_path
        _sync_tree(tmp_path)
        if os.path.exists(target):
            if os.path.exists(old_path):
                shutil.rmtree(old_path)
            os.replace(target, old_path)
        os.replace(tmp_path, target)
        # The swap on disk before the previous version goes.
        _sync(parent)
        _written(path)
        if os.path.exists(old_path):
            shutil.rmtree(old_path)
    finally:
        if os.path.exists(tmp_path):
            shutil.rmtree(tmp_path)


def existing_atomic_folder(path):
    """Return the folder to read for ``path`` written by atomic_output_folder.

    A kill between the two renames of :func:`atomic_output_folder` leaves
    only the previous version, under ``.NAME.old``: it is returned then.
    Returns None when neither exists.
    """
    if os.path.isdir(path):
        return path
    parent, name = os.path.split(_link_target(path))
    old_path = os.path.join(parent, old_version_name(parent, name))
    return old_path if os.path.isdir(old_path) else None


def folder_version(path):
    """What changes when :func:`atomic_output_folder` swaps ``path``: the
    folder's inode and change time (an inode number may be reused)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_ctime_ns


def read_replaced_folder(path, read, max_attempts=100):
    """``read()``, again when a writer replaced the folder ``path`` meanwhile.

    A run in progress swaps in a new version of its folders
    (:func:`atomic_output_folder`) at each save. A reader that opens some
    files before the swap and others after sees two versions (a manifest
    check then calls a file corrupt), misses a file of the removed one, or,
    between the two renames of the swap, finds no folder at all. So a read
    during which the folder was swapped is done again, whether it failed
    or not; the reads end when the writer pauses, and an error without a
    swap is raised at once.

    Parameters
    ----------
    path : str
        The folder written by :func:`atomic_output_folder`.
    read : callable
        Reads it (through :func:`existing_atomic_folder`) and returns what
        it read; raises :class:`DwiMLUserError` (or ``OSError``) on a bad
        or missing file.
    max_attempts : int
        Attempts in all, for a writer that never pauses: the last one's
        result or error is returned.

    Returns
    -------
    What ``read`` returned.
    """
    for attempt in range(1, max_attempts + 1):
        version = folder_version(path)
        try:
            result = read()
        except (DwiMLUserError, OSError):
            # OSError: a file removed between its check and its opening.
            if attempt == max_attempts or folder_version(path) == version:
                raise
            continue
        if attempt == max_attempts or folder_version(path) == version:
            return result


def remove_stale_temporaries(folder, names):
    """Remove what killed atomic writes of ``names`` left in ``folder``.

    Removes ``.NAME.XXXXXXXX.tmp`` (files or folders) for each NAME of
    ``names``, and ``.NAME.old`` when NAME itself exists (otherwise
    ``.NAME.old`` is the only complete version and is kept). Only call it
    while no other process writes these names (e.g. holding the
    experiment's lock).

    Parameters
    ----------
    folder : str
        The folder the atomic writes were in.
    names : iterable of str
        Names of the outputs written there by atomic_output_file/folder.

    Returns
    -------
    list of str
        The paths removed.
    """
    patterns = [re.compile(rf"\.{re.escape(name)}\.{_TEMP_RANDOM}\.tmp")
                for name in names]
    stale = [entry.name for entry in os.scandir(folder)
             if any(pattern.fullmatch(entry.name) for pattern in patterns)]
    stale += [old_version_name(folder, name) for name in names
              if os.path.lexists(os.path.join(folder,
                                              old_version_name(folder, name)))
              and os.path.lexists(os.path.join(folder, name))]
    removed = []
    for name in stale:
        path = os.path.join(folder, name)
        remove_path(path)
        removed.append(path)
    return removed


def remove_path(path):
    """Remove a file, a link (not its target) or a folder tree."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def write_json_atomic(path, data, strict=True):
    """Write JSON under a temporary name.

    ``strict``: sorted keys, and no NaN/Infinity (refused). Otherwise the
    keys keep their order and NaN is written as Python's json writes it.
    """
    text = json.dumps(data, indent=2, sort_keys=strict, allow_nan=not strict)
    with atomic_output_file(path) as tmp_path:
        with open(tmp_path, "w") as f:
            f.write(text + "\n")


# errno values of a write that the disk or the system refused.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS,
                 errno.EACCES, errno.EPERM, errno.EIO}
# torch.save's C++ writer reports the same failures as RuntimeErrors.
_TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos",
                         "file write failed", "PytorchStreamWriter failed")


def is_write_failure(error):
    """Whether ``error`` is a write refused by the disk or the system (no
    space, quota, file size limit, read-only, permissions)."""
    if isinstance(error, OSError):
        return error.errno in _WRITE_ERRNOS
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in _TORCH_WRITE_FAILURES)


_NOT_ALLOWED_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def write_failures_named(what, path, then):
    """Turn a refused write inside the block into one DwiMLUserError line
    naming ``what`` and ``path``, the remedy (writable folder, or space),
    then ``then`` (what to do next)."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not is_write_failure(error):
            raise
        cause = " ".join(str(error).split())[:200]
        remedy = ("make the folder writable" if getattr(
            error, "errno", None) in _NOT_ALLOWED_ERRNOS
            else "free some space (or raise the limit)")
        raise DwiMLUserError(
            f"cannot write {what} '{path}' ({type(error).__name__}: {cause}); "
            f"{then.replace('{remedy}', remedy)}") from None
