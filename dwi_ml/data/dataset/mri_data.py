"""One subject's input volume, in RAM (eager) or read on demand (lazy)."""
import numpy as np
import torch

from dwi_ml.data.finite import all_finite
from dwi_ml.data.hdf5.file_check import checksum_mismatch, hdf5_read_errors
from dwi_ml.data.hdf5.layout import VOLUME_CHECKSUM_ATTR, volume_checksum
from dwi_ml.io_utils.errors import DwiMLUserError


def read_volume_checksum(attrs):
    """The CRC-32 a volume group's attrs hold, or None (the reference's
    files, ours made before it existed: their data is not checked)."""
    if VOLUME_CHECKSUM_ATTR not in attrs:
        return None
    return int(attrs[VOLUME_CHECKSUM_ATTR])


def check_volume_checksum(stored, checksum, path, key):
    """Refuse a volume, as read from ``key``, that differs from the one
    written at creation.

    Parameters
    ----------
    stored : np.ndarray
        The dataset as read, in its stored dtype and shape.
    checksum : int or None
        From :func:`read_volume_checksum`; None: nothing to check.
    """
    if checksum is not None and volume_checksum(stored) != checksum:
        raise checksum_mismatch(path, key,
                                f"the volume data (dataset '{key}')")


def check_finite_volume(data, path, key):
    """Refuse NaN or Inf in a (X, Y, Z, F) volume read from ``key``.

    Our HDF5 creation refuses them; the reference's does not, and they
    would reach the inputs, then the loss.
    """
    if all_finite(data):
        return
    bad = ~np.isfinite(data)
    voxel = np.unravel_index(int(np.argmax(bad)), data.shape)
    subject, group = key.split("/")[:2]
    raise DwiMLUserError(
        f"HDF5 file '{path}', subject '{subject}', group '{group}': expected "
        f"finite values, found {int(np.count_nonzero(bad))} NaN or Inf (the "
        f"first at voxel {tuple(int(i) for i in voxel[:3])}, feature "
        f"{int(voxel[3])}).")


def normalize_device(device):
    """``torch.device`` with an explicit CUDA index, for use as a cache key."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class MRIData:
    """A volume held in RAM, with one tensor copy per device.

    Parameters
    ----------
    data : np.ndarray, shape (X, Y, Z, F)
        The volume, features last. Kept as float32.
    affine : np.ndarray, shape (4, 4)
        Voxel to RAS mm transform, as in NIfTI (see notes).
    voxres : np.ndarray, shape (3,)
        Voxel sizes in mm.

    Notes
    -----
    ``affine`` is the NIfTI affine: it maps voxel centres (integer indices)
    to RAS mm. Streamlines are stored with a corner origin, so a point p in
    VOX corner space lies at ``affine @ (p - 0.5)``.
    """

    def __init__(self, data, affine, voxres):
        self.data = np.asarray(data, dtype=np.float32)
        self.affine = affine
        self.voxres = voxres
        self._tensors = {}

    @property
    def shape(self):
        """(X, Y, Z, F)."""
        return self.data.shape

    @property
    def nb_features(self):
        """F, the number of features per voxel."""
        return self.shape[-1]

    def as_tensor(self, device="cpu"):
        """The volume as a (X, Y, Z, F) float32 tensor on ``device``.

        The copy on each device is made once and kept. On the CPU it shares
        memory with :attr:`data`: do not modify it in place.
        """
        device = normalize_device(device)
        tensor = self._tensors.get(device)
        if tensor is None:
            tensor = torch.from_numpy(self.data).to(device)
            self._tensors[device] = tensor
        return tensor

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tensors"] = {}
        return state


class LazyMRIData:
    """A volume read from the HDF5 file when needed, kept in an LRU cache.

    Parameters
    ----------
    handle : Hdf5Handle
        The per-process file handle.
    key : str
        Path of the volume's ``data`` dataset in the file.
    shape : tuple
        (X, Y, Z, F); a 3-D dataset is read as F=1.
    affine, voxres : np.ndarray
        As in :class:`MRIData`.
    cache : LRUCache
        Shared by all lazy volumes of a dataset, keyed by (key, device).
    checksum : int, optional
        The CRC-32 stored at creation (:func:`read_volume_checksum`),
        checked at the first read in each process; None: not checked.
    """

    def __init__(self, handle, key, shape, affine, voxres, cache,
                 checksum=None):
        self._handle = handle
        self._key = key
        self.shape = tuple(shape)
        self.affine = affine
        self.voxres = voxres
        self._cache = cache
        self._checksum = checksum

    @property
    def nb_features(self):
        """F, the number of features per voxel."""
        return self.shape[-1]

    @property
    def data(self):
        """The volume read from disk as a (X, Y, Z, F) float32 array.

        Its CRC-32 is checked at its first read in each process that
        passes; later reads (after the LRU cache evicted it) are not
        checked again.
        """
        path = self._handle.path
        with hdf5_read_errors(path, self._key):
            stored = self._handle.dataset(self._key)[()]
        if self._checksum is not None:
            self._handle.memoize(
                ("volume_checksum", self._key),
                lambda: check_volume_checksum(stored, self._checksum, path,
                                              self._key))
        data = np.asarray(stored, dtype=np.float32).reshape(self.shape)
        check_finite_volume(data, path, self._key)
        return data

    def as_tensor(self, device="cpu"):
        """The volume as a (X, Y, Z, F) float32 tensor on ``device``.

        Served from the dataset's LRU cache when there; otherwise read from
        the file and cached. Do not modify it in place.
        """
        device = normalize_device(device)
        cache_key = (self._key, device)
        tensor = self._cache.get(cache_key)
        if tensor is None:
            tensor = torch.from_numpy(self.data).to(device)
            self._cache.put(cache_key, tensor,
                            tensor.element_size() * tensor.nelement())
        return tensor
