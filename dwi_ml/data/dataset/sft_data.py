"""One subject's streamlines, in RAM (eager) or read on demand (lazy).

Both kinds keep the per-streamline lengths (points and mm) in RAM, so that
a sampler can choose streamlines without touching their points. Points are
in voxel space with a corner origin (dipy ``Space.VOX``,
``Origin.TRACKVIS``).
"""
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram

from dwi_ml.data.dataset.row_ranges import read_row_ranges
from dwi_ml.data.hdf5.file_check import hdf5_read_errors
from dwi_ml.data.packed import make_array_sequence, ranges_to_indices


def compute_lengths_mm(data, offsets, lengths, affine):
    """Euclidean length of each streamline, in mm.

    Parameters
    ----------
    data : np.ndarray, shape (P, 3)
        Points in voxel space (any origin: lengths do not depend on it).
    offsets, lengths : np.ndarray, shape (N,)
        First row in ``data`` and number of points of each streamline.
    affine : np.ndarray, shape (4, 4)
        Voxel to RAS mm transform.

    Returns
    -------
    np.ndarray, shape (N,), float32
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    points_mm = data[ranges_to_indices(offsets, lengths)] @ affine[:3, :3].T
    step_mm = np.zeros(len(points_mm), dtype=np.float64)
    step_mm[1:] = np.linalg.norm(np.diff(points_mm, axis=0), axis=1)
    first_rows = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first_rows[1:])
    # A streamline's first point has no step from the previous streamline.
    step_mm[first_rows[lengths > 0]] = 0.
    total_mm = np.zeros(len(points_mm) + 1, dtype=np.float64)
    np.cumsum(step_mm, out=total_mm[1:])
    return (total_mm[first_rows + lengths]
            - total_mm[first_rows]).astype(np.float32)


class _SFTDataBase:
    """What eager and lazy streamlines share; see :class:`SFTData`."""

    def __init__(self, offsets, lengths, lengths_mm, space_attributes):
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.lengths_mm = np.asarray(lengths_mm, dtype=np.float32)
        self.space_attributes = space_attributes

    @property
    def nb_streamlines(self):
        """N, the number of streamlines."""
        return len(self.lengths)

    def _check_ids(self, ids):
        if ids is None:
            return np.arange(self.nb_streamlines, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.nb_streamlines):
            raise IndexError(
                f"Streamline ids must lie in [0, {self.nb_streamlines}); "
                f"got min {ids.min()}, max {ids.max()}.")
        return ids

    def get_streamlines(self, ids=None):
        """Packed streamlines in VOX space, corner origin, in ``ids`` order.

        Parameters
        ----------
        ids : array-like of int, optional
            Streamline indices, in any order, possibly repeated. All when
            None.

        Returns
        -------
        nibabel.streamlines.ArraySequence
            Compact: its float32 ``_data`` holds exactly the points of the
            requested streamlines, one after the other, and ``_offsets`` is
            the cumulative sum of ``_lengths``.
        """
        ids = self._check_ids(ids)
        data, offsets = self._read_points(ids)
        lengths = self.lengths[ids]
        rows = ranges_to_indices(offsets, lengths)
        new_offsets = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(lengths[:-1], out=new_offsets[1:])
        # np.take is ~3x faster than data[rows] for (P, 3) rows.
        points = np.take(data, rows, axis=0).astype(np.float32, copy=False)
        return make_array_sequence(points, new_offsets, lengths)

    def as_sft(self, ids=None):
        """A dipy ``StatefulTractogram`` of the streamlines ``ids``.

        In ``Space.VOX``, ``Origin.TRACKVIS``, with the reference built from
        :attr:`space_attributes` and the data_per_streamline of ``ids``.
        """
        ids = self._check_ids(ids)
        return StatefulTractogram(
            self.get_streamlines(ids), self.space_attributes, Space.VOX,
            origin=Origin.TRACKVIS,
            data_per_streamline=self.get_data_per_streamline(ids))


class SFTData(_SFTDataBase):
    """Streamlines held in RAM, packed.

    Parameters
    ----------
    data : np.ndarray, shape (P, 3)
        All points, VOX space, corner origin. Rows not covered by any
        streamline are allowed.
    offsets, lengths : np.ndarray, shape (N,)
        First row in ``data`` and number of points of each streamline.
    lengths_mm : np.ndarray, shape (N,)
        Euclidean length of each streamline in mm.
    space_attributes : tuple
        dipy's (affine, dimensions, voxel_sizes, voxel_order).
    data_per_streamline : dict of str to np.ndarray (N, k)
    """

    def __init__(self, data, offsets, lengths, lengths_mm, space_attributes,
                 data_per_streamline):
        super().__init__(offsets, lengths, lengths_mm, space_attributes)
        self._data = data
        self.data_per_streamline = data_per_streamline

    @property
    def streamlines(self):
        """All streamlines as an ``ArraySequence`` (no copy)."""
        return make_array_sequence(self._data, self._offsets, self.lengths)

    def _read_points(self, ids):
        return self._data, self._offsets[ids]

    def get_data_per_streamline(self, ids=None):
        """data_per_streamline rows of ``ids``, as a dict of arrays."""
        ids = self._check_ids(ids)
        return {name: values[ids]
                for name, values in self.data_per_streamline.items()}


class LazySFTData(_SFTDataBase):
    """Streamlines read from the HDF5 file when asked for.

    Only offsets, lengths and lengths in mm stay in RAM (20 bytes per
    streamline); points and data_per_streamline are read per request, with
    coalesced reads (see ``row_ranges.py``).

    Parameters
    ----------
    handle : Hdf5Handle
        The per-process file handle.
    key : str
        Path of the streamline group in the file ('subject/group').
    offsets, lengths, lengths_mm, space_attributes
        As in :class:`SFTData`.
    dps_names : list of str
        Datasets of the group's ``data_per_streamline`` sub-group.
    """

    def __init__(self, handle, key, offsets, lengths, lengths_mm,
                 space_attributes, dps_names):
        super().__init__(offsets, lengths, lengths_mm, space_attributes)
        self._handle = handle
        self._key = key
        self.dps_names = list(dps_names)

    def _read_points(self, ids):
        with hdf5_read_errors(self._handle.path, self._key):
            return read_row_ranges(self._handle, self._key + "/data",
                                   self._offsets[ids], self.lengths[ids])

    @property
    def data_per_streamline(self):
        """All data_per_streamline, read from disk."""
        return self.get_data_per_streamline()

    def get_data_per_streamline(self, ids=None):
        """data_per_streamline rows of ``ids``, read from disk."""
        ids = self._check_ids(ids)
        values = {}
        for name in self.dps_names:
            with hdf5_read_errors(self._handle.path, self._key):
                buffer, positions = read_row_ranges(
                    self._handle, f"{self._key}/data_per_streamline/{name}",
                    ids, np.ones(len(ids), dtype=np.int64))
            values[name] = buffer[positions]
        return values
