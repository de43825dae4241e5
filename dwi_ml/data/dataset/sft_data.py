"""One subject's streamlines, in RAM (eager) or read on demand (lazy).

Both kinds keep the per-streamline lengths (points and mm) in RAM, so that
a sampler can choose streamlines without touching their points. Points are
in voxel space with a corner origin (dipy ``Space.VOX``,
``Origin.TRACKVIS``).
"""
import logging

import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram

from dwi_ml.data.dataset.row_ranges import (
    read_row_ranges,
    read_row_ranges_of_datasets,
)
from dwi_ml.data.finite import all_finite
from dwi_ml.data.hdf5.connectivity import read_connectivity
from dwi_ml.data.hdf5.file_check import hdf5_read_errors
from dwi_ml.data.packed import (
    drop_repeated_points,
    gather,
    make_array_sequence,
    offsets_from_lengths,
    ranges_to_indices,
    split_by_lengths,
)
from dwi_ml.io_utils.errors import DwiMLUserError


def check_finite_points(data, offsets, lengths, ids, path, key):
    """Refuse NaN or Inf in the streamlines (offsets, lengths) of ``data``.

    Our HDF5 creation refuses them; the reference's does not, and they
    would reach the interpolation. Rows outside the streamlines (gaps) may
    hold anything.

    Parameters
    ----------
    data : np.ndarray (R, 3)
    offsets, lengths : np.ndarray (N,)
    ids : np.ndarray (N,)
        The streamline ids of these ranges, named in the error.
    path, key : str
        The HDF5 file and the streamline group ('subject/group').
    """
    if all_finite(data):  # no copy, in the usual case
        return
    rows = ranges_to_indices(offsets, lengths)
    bad = ~np.isfinite(np.take(data, rows, axis=0)).all(axis=1)
    if not bad.any():
        return
    first = np.searchsorted(offsets_from_lengths(lengths), np.argmax(bad),
                            side="right") - 1
    subject, group = key.split("/")[:2]
    raise DwiMLUserError(
        f"HDF5 file '{path}', subject '{subject}', group '{group}': expected "
        f"finite points, found NaN or Inf in streamline {int(ids[first])}.")


# (what, file, group) already said by a lazy dataset of this process.
_SAID_ONCE = set()


def _say_once(what, path, key):
    """True the first time (what, path, key) is asked, in this process."""
    if (what, path, key) in _SAID_ONCE:
        return False
    _SAID_ONCE.add((what, path, key))
    return True


def without_repeated_points(data, offsets, lengths, ids, path, key,
                            collapsed_as_stored=False):
    """The streamlines (offsets, lengths) of ``data`` without the points
    equal to the one before them.

    Our HDF5 creation stores none; a reference-made file may (a tracker's
    seed point written twice): their zero-length segment has no
    direction, and its target would be a zero vector.

    Parameters
    ----------
    data : np.ndarray (R, 3)
    offsets, lengths : np.ndarray (N,)
    ids : np.ndarray (N,)
        The streamline ids of these ranges, named in the error.
    path, key : str
        The HDF5 file and the streamline group ('subject/group').
    collapsed_as_stored : bool
        A streamline whose points are all equal keeps them as stored, with a
        warning (lazy: the checks before training read the stored lengths,
        so one point would reach a model that needs two, hours into a run).
        Else it keeps one point, and those checks name it (eager).

    Returns
    -------
    (data, offsets, lengths, nb_removed)
        The inputs themselves when nothing is repeated (one pass over
        ``data``, no copy), else a compact copy.
    """
    # Compared as the batches hold them (float32): eager and lazy agree.
    as_read = data if data.dtype == np.float32 else data.astype(np.float32)
    if not _has_equal_neighbours(as_read):
        return data, offsets, lengths, 0
    points, _, lengths = gather(as_read, offsets, lengths)
    distinct, distinct_lengths, nb_removed = drop_repeated_points(points,
                                                                  lengths)
    collapsed = np.flatnonzero((distinct_lengths < 2) & (lengths >= 2))
    if collapsed_as_stored and len(collapsed):
        subject, group = key.split("/")[:2]
        if _say_once("collapsed", path, key):
            logging.warning(
                "HDF5 file '%s', subject '%s', group '%s': streamline %d "
                "has all its points equal (no direction to learn); read as "
                "stored. Create the file with dwiml_create_hdf5_dataset.py "
                "(--remove_invalid drops such streamlines).", path, subject,
                group, int(ids[collapsed[0]]))
        as_stored = np.zeros(len(lengths), dtype=bool)
        as_stored[collapsed] = True
        distinct, distinct_lengths, nb_removed = drop_repeated_points(
            points, lengths, as_stored)
    return (distinct, offsets_from_lengths(distinct_lengths),
            distinct_lengths, nb_removed)


def warn_repeated_points(nb_removed, path, key):
    """Log how many points :func:`without_repeated_points` removed (lazy:
    in the first read that found some)."""
    subject, group = key.split("/")[:2]
    logging.warning(
        "HDF5 file '%s', subject '%s', group '%s': read without %d points "
        "equal to the point before them (a zero-length segment has no "
        "direction); dwiml_create_hdf5_dataset.py stores none.", path,
        subject, group, nb_removed)


def _has_equal_neighbours(data):
    """True when a row of ``data`` equals the row before it (one pass)."""
    if len(data) < 2:
        return False
    # Column by column: numpy's reduction over rows of 3 is much slower.
    same = data[1:, 0] == data[:-1, 0]
    same &= data[1:, 1] == data[:-1, 1]
    same &= data[1:, 2] == data[:-1, 2]
    return bool(same.any())


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
        given = np.asarray(ids)
        if given.size and not np.issubdtype(given.dtype, np.integer):
            raise IndexError(f"Streamline ids must be integers; got "
                             f"{given.dtype} values.")
        ids = given.astype(np.int64, copy=False).reshape(-1)
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
        points, new_offsets, lengths = gather(*self.read_points(ids))
        return make_array_sequence(points.astype(np.float32, copy=False),
                                   new_offsets, lengths)

    def read_points(self, ids=None):
        """The streamlines ``ids`` as rows of a packed array, not copied.

        For a caller that gathers the points once, after choosing them
        (the batch loader): :meth:`get_streamlines` is
        ``gather(*read_points(ids))``.

        Returns
        -------
        data : np.ndarray, shape (R, 3), as stored (float32 in our files)
            All the subject's points (eager) or the blocks read for ``ids``
            (lazy, possibly read-only). Do not modify it.
        offsets, lengths : np.ndarray, shape (len(ids),), int64
            Row in ``data`` and number of points of each streamline.
        """
        return self._read_points(self._check_ids(ids))

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
    connectivity : Connectivity or None
        The subject's known connectivity, when the HDF5 has one (see
        :mod:`dwi_ml.data.hdf5.connectivity`).
    """

    def __init__(self, data, offsets, lengths, lengths_mm, space_attributes,
                 data_per_streamline, connectivity=None):
        super().__init__(offsets, lengths, lengths_mm, space_attributes)
        self._data = data
        self.data_per_streamline = data_per_streamline
        self.connectivity = connectivity

    @property
    def streamlines(self):
        """All streamlines as an ``ArraySequence`` (no copy)."""
        return make_array_sequence(self._data, self._offsets, self.lengths)

    def _read_points(self, ids):
        return self._data, self._offsets[ids], self.lengths[ids]

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
            data, offsets = read_row_ranges(self._handle, self._key + "/data",
                                            self._offsets[ids],
                                            self.lengths[ids])
        return self._checked(data, offsets, ids)

    def _checked(self, data, offsets, ids):
        """(data, offsets, lengths) of streamlines ``ids`` read at
        ``offsets``, refused if not finite and without repeated points."""
        lengths = self.lengths[ids]
        check_finite_points(data, offsets, lengths, ids, self._handle.path,
                            self._key)
        # The lengths kept in RAM are the stored ones (the sampler's point
        # budget counts repeats, an upper bound).
        data, offsets, lengths, nb_removed = without_repeated_points(
            data, offsets, lengths, ids, self._handle.path, self._key,
            collapsed_as_stored=True)
        if nb_removed and _say_once("repeats", self._handle.path, self._key):
            warn_repeated_points(nb_removed, self._handle.path, self._key)
        return data, offsets, lengths

    @property
    def connectivity(self):
        """The group's Connectivity or None, read from disk."""
        with hdf5_read_errors(self._handle.path, self._key):
            return read_connectivity(self._handle.file[self._key])

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


def read_points_of_many(sft_datas, ids_list):
    """``[sft.read_points(ids) for sft, ids in zip(sft_datas, ids_list)]``,
    the lazy streamlines of one file read together.

    A mixed batch reads some streamlines of each of many subjects: one read
    plan over all of them (``read_row_ranges_of_datasets``) and one check
    of the buffer replace a plan, a read and the checks per subject. The
    same values and dtype; the data of every entry is then the one shared
    buffer, or, when the buffer holds NaN or repeated points, each entry's
    own part of it, checked on its own (so that a repeat in one subject
    costs that subject's rows, not the whole buffer per subject).
    """
    lazy = all(isinstance(sft, LazySFTData) for sft in sft_datas)
    if len(sft_datas) < 2 or not lazy or len(
            {id(sft._handle) for sft in sft_datas}) > 1:
        return [sft.read_points(ids) for sft, ids in zip(sft_datas, ids_list)]
    ids_list = _checked_ids_of_many(sft_datas, ids_list)
    handle = sft_datas[0]._handle
    try:
        with hdf5_read_errors(handle.path):
            read = read_row_ranges_of_datasets(
                handle, [sft._key + "/data" for sft in sft_datas],
                [sft._offsets[ids] for sft, ids in zip(sft_datas, ids_list)],
                [sft.lengths[ids] for sft, ids in zip(sft_datas, ids_list)])
    except DwiMLUserError:
        read = None  # read again subject by subject: the error names it
    if read is None:
        return [sft.read_points(ids) for sft, ids in zip(sft_datas, ids_list)]
    buffer, positions = read
    # One pass over the buffer for all subjects, in the usual case.
    as_read = (buffer if buffer.dtype == np.float32
               else buffer.astype(np.float32))
    if all_finite(buffer) and not _has_equal_neighbours(as_read):
        return [(buffer, offsets, sft.lengths[ids])
                for sft, offsets, ids in zip(sft_datas, positions, ids_list)]
    reads = []
    for sft, offsets, ids in zip(sft_datas, positions, ids_list):
        # Each subject's blocks are consecutive in the buffer.
        first = int(offsets.min()) if len(offsets) else 0
        last = (int((offsets + sft.lengths[ids]).max()) if len(offsets)
                else 0)
        reads.append(sft._checked(buffer[first:last], offsets - first, ids))
    return reads


def _checked_ids_of_many(sft_datas, ids_list):
    """``[sft._check_ids(ids) ...]`` in a few numpy calls over all entries
    (each one's checks cost ~15 us); an entry that fails is checked again
    on its own, for its error."""
    given = [np.asarray(ids).reshape(-1) for ids in ids_list]
    if all(ids.dtype.kind in "iu" for ids in given):
        sizes = [len(ids) for ids in given]
        all_ids = np.concatenate(given).astype(np.int64, copy=False)
        limits = np.repeat([sft.nb_streamlines for sft in sft_datas], sizes)
        if not len(all_ids) or (all_ids.min() >= 0
                                and (all_ids < limits).all()):
            return split_by_lengths(all_ids, sizes)
    return [sft._check_ids(ids) for sft, ids in zip(sft_datas, ids_list)]
