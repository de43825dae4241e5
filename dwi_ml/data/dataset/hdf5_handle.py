"""One read-only h5py handle per process, safe across fork and spawn.

HDF5 handles must not be shared between processes: a ``DataLoader`` worker
forked from the main process would otherwise read through the parent's
handle. :class:`Hdf5Handle` opens the file on first use and again whenever
the process id changes, and drops the open file when pickled (spawn).
"""
import collections
import os

import h5py

from dwi_ml.io_utils.errors import DwiMLUserError

# Per open dataset, for chunks read through h5py (volumes, filtered
# streamlines); unfiltered streamline data is read with os.pread and
# bypasses it. HDF5 keeps both until the dataset closes.
CHUNK_CACHE_BYTES = 4 * 1024 ** 2
# A prime about 100x the number of 48-KiB streamline chunks that fit, as
# HDF5 advises (its slot table costs 8 bytes a slot, per open dataset).
CHUNK_CACHE_SLOTS = 10_007
# Datasets kept open, the most recently used: a lazy run over 1000
# subjects kept all of theirs, each with its own chunk cache.
MAX_OPEN_DATASETS = 16


class Hdf5Handle:
    """Lazily opened, per-process, read-only access to one HDF5 file.

    Parameters
    ----------
    path : str
        The HDF5 file.

    Notes
    -----
    Besides the h5py file, the handle keeps a raw file descriptor, used to
    read unfiltered datasets with ``os.pread`` (see ``row_ranges.py``), and
    the h5py dataset objects and chunk addresses already looked up, so that
    a batch does not pay the lookup again. All are per process.
    """

    def __init__(self, path):
        self.path = str(path)
        self._pid = None
        self._file = None
        self._fd = None
        self._datasets = collections.OrderedDict()
        self._memo = {}
        # (device, inode, size, modification time) at the first opening:
        # a process opening the file later (a worker) must find the same.
        self._identity = None

    def _ensure_open(self):
        if self._pid == os.getpid() and self._file is not None:
            return
        if self._pid != os.getpid():
            # Inherited from the parent through fork: never read through it.
            # Closing our copy of the descriptor leaves the parent's intact.
            if self._fd is not None:
                os.close(self._fd)
            self._file, self._fd = None, None
        self._datasets, self._memo = collections.OrderedDict(), {}
        self._file = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES,
                               rdcc_nslots=CHUNK_CACHE_SLOTS)
        self._fd = _own_descriptor(self._file, self.path)
        self._pid = os.getpid()
        self._check_identity()

    def _check_identity(self):
        stat = os.fstat(self._fd)
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            self.close()
            raise DwiMLUserError(
                f"HDF5 file '{self.path}': it changed since the dataset was "
                "loaded (re-created or modified); a lazy dataset "
                "reads it until the end of the run: restart the run, or "
                "resume it from its checkpoint.")

    @property
    def file(self):
        """The ``h5py.File`` of this process, opened on first use."""
        self._ensure_open()
        return self._file

    @property
    def fd(self):
        """A raw read-only file descriptor of this process (for pread)."""
        self._ensure_open()
        return self._fd

    def dataset(self, key):
        """The h5py dataset at ``key`` (e.g. 'subj1/streamlines/data').

        The :data:`MAX_OPEN_DATASETS` most recently used stay open; the
        caller should not keep the object (it would keep its chunk cache).
        """
        self._ensure_open()
        dataset = self._datasets.get(key)
        if dataset is None:
            dataset = self._file[key]
            self._datasets[key] = dataset
            if len(self._datasets) > MAX_OPEN_DATASETS:
                self._datasets.popitem(last=False)
        else:
            self._datasets.move_to_end(key)
        return dataset

    def memoize(self, key, compute):
        """``compute()``, computed once per process and file opening."""
        self._ensure_open()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def close(self):
        """Close this process's file; a later access reopens it."""
        if self._pid == os.getpid():
            if self._file is not None:
                self._file.close()
            if self._fd is not None:
                os.close(self._fd)
        self._pid, self._file, self._fd = None, None, None
        self._datasets, self._memo = collections.OrderedDict(), {}

    def __del__(self):
        # The raw descriptor is ours (h5py closes its own file): left open,
        # it kept the file open, and locked, after a lazy run returned.
        if getattr(self, "_fd", None) is not None \
                and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __getstate__(self):
        return {"path": self.path, "identity": self._identity}

    def __setstate__(self, state):
        self.__init__(state["path"])
        self._identity = state["identity"]


def _own_descriptor(file, path):
    """A descriptor of the very file that h5py opened (a copy of its own):
    opening ``path`` again could open a file renamed there meanwhile, read
    at the first one's offsets."""
    try:
        return os.dup(file.id.get_vfd_handle())
    except (TypeError, ValueError, OSError):  # a driver without one
        return os.open(path, os.O_RDONLY)
