"""One process at a time per experiment: an OS lock on EXPERIMENT/.lock.

Training and resuming take ``fcntl.flock`` on the lock file before they
change any file of the experiment, and hold it for the whole run. The
kernel releases it when the process ends, even on a kill, so a lock file
left by a dead process never blocks. The holder writes its PID, host and
SLURM job in the file so that a refused process can name it. Under
torchrun only rank 0 takes the lock: the other ranks never write into the
experiment.
"""
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import weakref

from dwi_ml.io_utils.atomic import remove_stale_temporaries
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import experiments_inside_hint
from dwi_ml.io_utils.output_folders import (
    EXPERIMENT_FOLDERS,
    MARKER_FILE,
    PARAMETERS_FILE,
    RUNS_FILE,
    check_experiment_name,
    check_output_folder,
    folder_kind,
    mark_output_folder,
    reset_output_folder,
)

LOCK_FILE = ".lock"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# flock on file systems without locks (NFS without lockd, Lustre mounted
# noflock, some FUSE and CIFS mounts: EINVAL): the run goes on with the
# holder line as its only guard (see ExperimentLock._without_locks).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP,
             errno.EINVAL)

logger = logging.getLogger(__name__)

# The locks this process holds. A forked child (a DataLoader worker)
# inherits their descriptors, and with them the flock: after a kill -9 of
# the run, its orphaned workers kept the experiment locked until they
# noticed. The child closes its copies; the parent's lock is unchanged.
_HELD = weakref.WeakSet()


def _forget_locks_in_child():
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)

# What a training run writes atomically at the top of its experiment.
_ATOMIC_OUTPUTS = (PARAMETERS_FILE, RUNS_FILE, MARKER_FILE,
                   *EXPERIMENT_FOLDERS)


class ExperimentLock:
    """The lock of one experiment folder, held from acquire() to release().

    Use it as ``with ExperimentLock(folder) as lock: ... lock.acquire()``:
    leaving the block releases it (if it was taken), even on an error.

    Parameters
    ----------
    experiment_dir : str
        The experiment folder; it must exist when the lock is acquired.
    """

    def __init__(self, experiment_dir):
        self.experiment_dir = experiment_dir
        self.path = os.path.join(experiment_dir, LOCK_FILE)
        self._fd = None
        self._locked = False
        self._warned_no_locks = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    @property
    def is_held(self):
        """True between a successful acquire() and release()."""
        return self._fd is not None

    def acquire(self):
        """Take the lock, or refuse naming the process that holds it.

        Returns
        -------
        ExperimentLock
            self.

        Raises
        ------
        DwiMLUserError
            When another process holds the lock.
        """
        fd = self._open(os.O_CREAT)
        self._locked = self._lock_or_refuse(fd)
        os.ftruncate(fd, 0)
        os.write(fd, _holder_line().encode())
        self._fd = fd
        _HELD.add(self)
        return self

    def refuse_if_held(self):
        """Refuse, naming the holder, when another process holds the lock.

        Lets a run say that the experiment is in use before it checks the
        folder's content (an experiment in its first epoch has no
        checkpoint yet). Creates no lock file. Under torchrun, ranks other
        than 0 do nothing: rank 0 of the same run may hold the lock
        already, and a probe of theirs could make its acquire() fail.
        """
        if int(os.environ.get("RANK", "0")) != 0:
            return
        try:
            fd = self._open()
        except (FileNotFoundError, NotADirectoryError):
            return
        if self._lock_or_refuse(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self):
        """Who holds the lock now ('process PID'), or None.

        For a process that only reads the experiment (it never takes the
        lock): it needs no write access, and creates no lock file.
        """
        try:
            # O_NONBLOCK: a FIFO in its place must not block the reader.
            fd = os.open(self.path,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return _read_holder(fd)
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _open(self, flags=0):
        """Open the lock file for writing; a user error when it cannot be
        (a read-only copy of an experiment, another user's lock file, a
        folder or a link in its place).

        O_NOFOLLOW: a symbolic link is refused, never followed, so that
        its target is neither created nor written.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | flags, 0o644)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR):
                self._refuse_not_a_file()
            if error.errno not in _NOT_WRITABLE:
                raise
            raise DwiMLUserError(
                f"experiment '{self.experiment_dir}': cannot open its lock "
                f"file {self.path} for writing ({error.strerror}); training "
                "writes into the experiment: make it writable, or copy it to "
                "a folder you can write to.") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self._refuse_not_a_file()
        return fd

    def _refuse_not_a_file(self):
        found = ("a symbolic link" if os.path.islink(self.path)
                 else "a folder" if os.path.isdir(self.path)
                 else "not a regular file")
        raise DwiMLUserError(
            f"experiment '{self.experiment_dir}': its lock file {self.path} "
            f"is {found}; expected a regular file (or none): remove it, then "
            "run again.")

    def _lock_or_refuse(self, fd):
        """True once locked; False where the file system has no locks."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as error:
            if error.errno in _NO_LOCKS:
                self._without_locks(fd, error)
                return False
            held = error.errno in (errno.EWOULDBLOCK, errno.EACCES)
            holder = _read_holder(fd) if held else None
            with contextlib.suppress(OSError):
                os.close(fd)
            if not held:
                raise DwiMLUserError(
                    f"experiment '{self.experiment_dir}': cannot lock its "
                    f"lock file {self.path} ({error.strerror}); expected a "
                    "file system that supports flock or refuses it.") \
                    from None
            raise DwiMLUserError(
                f"experiment '{self.experiment_dir}' is in use by {holder} "
                f"(lock {self.path}): wait for it to end or stop it, then "
                "run again.") from None

    def _without_locks(self, fd, error):
        """No flock here: refuse when the lock file names a live process
        of this host (a release empties it), else warn."""
        line = os.pread(fd, 256, 0).decode(errors="replace")
        if holder_is_alive_here(line):
            os.close(fd)
            raise DwiMLUserError(
                f"experiment '{self.experiment_dir}' is in use by "
                f"{_describe_holder(line)} (lock {self.path}, on a file "
                f"system without locks: {error.strerror}): wait for it to "
                "end or stop it; if no run of this experiment is going, "
                "remove the lock file, then run again.")
        if self._warned_no_locks:
            return
        self._warned_no_locks = True
        named = (f"; its lock file names {_describe_holder(line)}, which "
                 "cannot be checked from here: if that run still goes, "
                 "stop this one" if line.split() else "")
        logger.warning(
            "The file system of %s does not support locks (%s): a second "
            "run of this experiment at the same time on another host would "
            "not be refused%s.", self.path, error.strerror, named)

    def release(self):
        """Release the lock; does nothing if it is not held."""
        if self._fd is None:
            return
        _HELD.discard(self)
        # Emptied, not removed: removing a lock file lets two processes
        # lock two different files of the same name.
        os.ftruncate(self._fd, 0)
        if self._locked:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _holder_line():
    """'PID HOST [SLURM_JOB_ID]': a PID alone names no process on another
    node (a shared file system) or from another container."""
    job = os.environ.get("SLURM_JOB_ID", "").strip()
    return " ".join([str(os.getpid()), socket.gethostname(),
                     *([job] if job.isalnum() else [])]) + "\n"


def holder_is_alive_here(line):
    """True when the holder line 'PID HOST ...' names a process that runs
    on this host (a reused PID reads as alive: the message says what to
    do)."""
    fields = line.split()
    if (len(fields) < 2 or not fields[0].isdigit()
            or fields[1] != socket.gethostname()):
        return False
    try:
        os.kill(int(fields[0]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, OSError):
        return False
    return True


def _read_holder(fd):
    return _describe_holder(os.pread(fd, 256, 0).decode(errors="replace"))


def _describe_holder(line):
    fields = line.split()
    if not fields or not fields[0].isdigit():
        return "another process"
    holder = f"process {fields[0]}"
    if len(fields) > 1:
        holder += f" on host {fields[1]}"
    if len(fields) > 2:
        holder += f" (SLURM job {fields[2]})"
    return holder


def check_experiment_writable(experiment_dir):
    """Refuse, before any work, an experiment that a run could not write.

    A run writes into the experiment folder and into its checkpoint, best
    model and logs folders; an experiment copied read-only (from an
    archive, a teammate's folder, a read-only project) would fail at its
    first save otherwise.

    Raises
    ------
    DwiMLUserError
        Naming the first folder that is not writable.
    """
    for folder in (experiment_dir, *(os.path.join(experiment_dir, name)
                                     for name in EXPERIMENT_FOLDERS)):
        if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
            where = ("" if folder == experiment_dir
                     else f": its folder '{folder}'")
            raise DwiMLUserError(
                f"experiment '{experiment_dir}'{where} is not writable; "
                "training writes there: make it writable, or copy the "
                "experiment to a folder you can write to.")


def start_new_experiment(lock, overwrite, hint="", check=None):
    """Lock, then create or replace (``overwrite``) an experiment folder.

    Call it on the main process only, after every check of the run: the
    folder's state is checked again under the lock (another run may have
    written it meanwhile), then it is emptied and marked as an experiment.

    Parameters
    ----------
    lock : ExperimentLock
        The experiment's lock, not yet acquired.
    overwrite : bool
        ``-f``: replace an existing experiment.
    hint : str
        Appended to the 'already exists' message.
    check : callable, optional
        Called with the folder once the lock is held, before any change:
        raises to refuse (the folder changed since the run's checks).
    """
    experiment_dir = lock.experiment_dir
    os.makedirs(experiment_dir, exist_ok=True)
    lock.acquire()
    if check is not None:
        check(experiment_dir)
    check_output_folder(experiment_dir, "experiment", overwrite,
                        what="experiment", hint=hint, ignore=(LOCK_FILE,))
    reset_output_folder(experiment_dir, "experiment", keep=(LOCK_FILE,))


def start_resumed_experiment(lock):
    """Lock an existing experiment to continue it; clean a killed run's leftovers.

    Call it on the main process only. Removes the temporary files and
    folders that a killed run of this experiment left (see
    :func:`~dwi_ml.io_utils.atomic.remove_stale_temporaries`) and marks an
    experiment written before markers existed.

    Parameters
    ----------
    lock : ExperimentLock
        The experiment's lock, not yet acquired.

    Raises
    ------
    DwiMLUserError
        When the folder is not a dwi_ml experiment or is in use.
    """
    experiment_dir = lock.experiment_dir
    if folder_kind(experiment_dir) != "experiment":
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' is not a dwi_ml experiment: no "
            f"{MARKER_FILE} or {PARAMETERS_FILE} with a checkpoint"
            f"{experiments_inside_hint(experiment_dir)}.")
    lock.acquire()
    for path in remove_stale_temporaries(experiment_dir, _ATOMIC_OUTPUTS):
        logging.info("Removed %s, left by a killed run.", path)
    if not os.path.isfile(os.path.join(experiment_dir, MARKER_FILE)):
        mark_output_folder(experiment_dir, "experiment")


def run_locked(args, run, callbacks=()):
    """Call ``run(args, callbacks, lock)`` holding the lock of experiment
    ``args.experiments_path/args.experiment_name``.

    The name is checked first; the lock is held from before any of the
    experiment's files is changed until the end of the run.
    """
    check_experiment_name(args.experiment_name)
    experiment_dir = os.path.join(args.experiments_path, args.experiment_name)
    with ExperimentLock(experiment_dir) as lock:
        return run(args, callbacks, lock)
