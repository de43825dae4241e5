"""One subject's groups, and how they are read from the reference layout."""
import h5py
import nibabel as nib
import numpy as np

from dwi_ml.data.dataset.mri_data import (
    LazyMRIData,
    MRIData,
    check_finite_volume,
    check_volume_checksum,
    read_volume_checksum,
)
from dwi_ml.data.dataset.row_ranges import (
    check_row_checksums,
    load_row_checksums,
    read_row_ranges,
)
from dwi_ml.data.dataset.sft_data import (
    LazySFTData,
    SFTData,
    check_finite_points,
    warn_repeated_points,
    without_repeated_points,
)
from dwi_ml.data.hdf5.connectivity import check_connectivity, read_connectivity
from dwi_ml.data.hdf5.file_check import hdf5_read_errors
from dwi_ml.data.hdf5.layout import (
    SPACE_ATTRS,
    STREAMLINE_ORIGIN,
    STREAMLINE_SPACE,
    STREAMLINES_TYPE,
    VOLUME_TYPE,
    decode_str,
    strip_enum_prefix,
)
from dwi_ml.data.packed import lengths_mm, offsets_from_lengths
from dwi_ml.io_utils.errors import DwiMLUserError

# Points read at once when computing missing euclidean lengths lazily.
LENGTHS_BLOCK_POINTS = 2 ** 20


class SubjectData:
    """The volumes and streamlines of one subject.

    Parameters
    ----------
    subject_id : str
    volume_groups, streamline_groups : list of str
    mri_data_list : list of MRIData or LazyMRIData
        Aligned with ``volume_groups``.
    sft_data_list : list of SFTData or LazySFTData
        Aligned with ``streamline_groups``.
    """

    def __init__(self, subject_id, volume_groups, streamline_groups,
                 mri_data_list, sft_data_list):
        self.subject_id = subject_id
        self.volume_groups = volume_groups
        self.streamline_groups = streamline_groups
        self.mri_data_list = mri_data_list
        self.sft_data_list = sft_data_list

    @property
    def nb_features(self):
        """Number of features of each volume group."""
        return [mri_data.nb_features for mri_data in self.mri_data_list]


def read_group_signatures(handle, subject_id):
    """Type and feature count of each group of a subject.

    Returns
    -------
    dict of str to (str, int or None)
        Group name to (type, nb_features), in h5py (alphabetical) order;
        nb_features is None for streamline groups.
    """
    if subject_id not in handle.file:
        raise DwiMLUserError(
            f"HDF5 file {handle.path}: subject '{subject_id}' is listed in "
            "the splits but there is no group of that name at the root.")
    signatures = {}
    for name, group in handle.file[subject_id].items():
        where = f"HDF5 file {handle.path}: group '{subject_id}/{name}'"
        if not isinstance(group, h5py.Group):
            raise DwiMLUserError(
                f"{where}: expected a group with attr 'type' '{VOLUME_TYPE}' "
                f"or '{STREAMLINES_TYPE}', found a dataset.")
        if "type" not in group.attrs:
            raise DwiMLUserError(
                f"{where}: expected attr 'type' ('{VOLUME_TYPE}' or "
                f"'{STREAMLINES_TYPE}'), found it missing.")
        group_type = decode_str(group.attrs["type"])
        if group_type == VOLUME_TYPE:
            signatures[name] = (group_type, _volume_shape(group, where)[-1])
        elif group_type == STREAMLINES_TYPE:
            signatures[name] = (group_type, None)
        else:
            raise DwiMLUserError(
                f"{where}: expected attr 'type' to be '{VOLUME_TYPE}' or "
                f"'{STREAMLINES_TYPE}', found '{group_type}'.")
    return signatures


def load_subject(handle, subject_id, volume_groups, streamline_groups,
                 lazy, volume_cache=None):
    """Read one subject; groups were validated by the caller.

    Parameters
    ----------
    handle : Hdf5Handle
    subject_id : str
    volume_groups, streamline_groups : list of str
    lazy : bool
        Eager reads all volumes and points now; lazy reads only metadata and
        the per-streamline lengths.
    volume_cache : LRUCache, optional
        The cache shared by lazy volumes.

    Raises
    ------
    DwiMLUserError
        A group that is not in the layout, or data that cannot be read or
        does not match its checksum (corrupt or truncated file).
    """
    mri_data_list, sft_data_list = [], []
    for name in volume_groups:
        key = f"{subject_id}/{name}"
        with hdf5_read_errors(handle.path, key):
            mri_data_list.append(_load_volume(handle, key, lazy,
                                              volume_cache))
    for name in streamline_groups:
        key = f"{subject_id}/{name}"
        with hdf5_read_errors(handle.path, key):
            sft_data_list.append(_load_streamlines(handle, key, lazy))
    return SubjectData(subject_id, list(volume_groups),
                       list(streamline_groups), mri_data_list, sft_data_list)


def _require(group, name, where):
    """Dataset ``name`` of ``group``; refuse it missing or a group."""
    if name not in group:
        raise DwiMLUserError(f"{where}: expected a dataset '{name}', found "
                             f"only {sorted(group.keys())}.")
    item = group[name]
    if not isinstance(item, h5py.Dataset):
        raise DwiMLUserError(f"{where}: expected '{name}' to be a dataset, "
                             f"found a group of {len(item)} items.")
    return item


def _read_counts(group, name, where):
    """Dataset ``name`` (offsets or lengths) as int64; refused unless it
    holds whole numbers."""
    dataset = _require(group, name, where)
    kind = dataset.dtype.kind
    if kind in "iu":
        return np.asarray(dataset[()], np.int64)
    values = dataset[()] if kind == "f" else None
    if values is None or not np.all(np.isfinite(values)) or not np.all(
            values == np.round(values)):
        raise DwiMLUserError(
            f"{where}: expected '{name}' of integers, found dtype "
            f"{dataset.dtype}" + ("" if values is None else
                                  " holding values that are not whole")
            + ".")
    return values.astype(np.int64)


def read_affine(attrs, where):
    """The attr ``affine`` as a (4, 4) float64 array; refused otherwise."""
    if "affine" not in attrs:
        raise DwiMLUserError(f"{where}: expected attr 'affine', found none.")
    value = np.asarray(attrs["affine"])
    if value.shape != (4, 4) or value.dtype.kind not in "iuf" or not \
            np.isfinite(value).all():
        raise DwiMLUserError(
            f"{where}: expected attr 'affine' a 4x4 array of finite numbers,"
            f" found {_describe_attr(value)}.")
    return value.astype(np.float64)


def _describe_attr(value):
    """An attr's shape and dtype, and its value when short, for errors."""
    text = f"shape {value.shape}, dtype {value.dtype}"
    if value.size <= 4:
        text += f" ({value.tolist()!r})"
    return text


def _volume_shape(group, where):
    """(X, Y, Z, F) of a volume group; a 3-D dataset counts as F=1."""
    shape = _require(group, "data", where).shape
    if len(shape) == 3:
        return shape + (1,)
    if len(shape) != 4:
        raise DwiMLUserError(f"{where}: expected 'data' of shape (X, Y, Z, F),"
                             f" found shape {shape}.")
    return shape


def _load_volume(handle, key, lazy, volume_cache):
    group = handle.file[key]
    where = f"HDF5 file {handle.path}: volume group '{key}'"
    shape = _volume_shape(group, where)
    affine = read_affine(group.attrs, where)
    if "voxres" in group.attrs:
        voxres = np.asarray(group.attrs["voxres"], dtype=np.float32).ravel()
    else:
        voxres = nib.affines.voxel_sizes(affine).astype(np.float32)
    checksum = read_volume_checksum(group.attrs)
    if lazy:
        return LazyMRIData(handle, key + "/data", shape, affine, voxres,
                           volume_cache, checksum)
    stored = group["data"][()]
    check_volume_checksum(stored, checksum, handle.path, key + "/data")
    data = np.asarray(stored, dtype=np.float32).reshape(shape)
    check_finite_volume(data, handle.path, key)
    return MRIData(data, affine, voxres)


def read_space_attributes(attrs, where):
    """dipy's (affine, dimensions, voxel_sizes, voxel_order), cast.

    The reference stores them with the dtypes of the source file; dipy
    wants float64, int, float32 and str.
    """
    missing = [name for name in SPACE_ATTRS if name not in attrs]
    if missing:
        raise DwiMLUserError(f"{where}: expected attrs {list(SPACE_ATTRS)}, "
                             f"missing {missing}.")
    return (read_affine(attrs, where),
            _read_dimensions(attrs, where),
            _read_voxel_sizes(attrs, where),
            _read_voxel_order(attrs, where))


def _read_dimensions(attrs, where):
    value = np.asarray(attrs["dimensions"])
    valid = (value.shape == (3,) and value.dtype.kind in "iuf"
             and np.isfinite(value).all() and (value >= 1).all()
             and (value == np.round(value)).all() and (value < 2 ** 15).all())
    if not valid:
        raise DwiMLUserError(
            f"{where}: expected attr 'dimensions' 3 positive integers, found "
            f"{_describe_attr(value)}.")
    return value.astype(np.int16)


def _read_voxel_sizes(attrs, where):
    value = np.asarray(attrs["voxel_sizes"])
    if not (value.shape == (3,) and value.dtype.kind in "iuf"
            and np.isfinite(value).all() and (value > 0).all()):
        raise DwiMLUserError(
            f"{where}: expected attr 'voxel_sizes' 3 positive finite "
            f"numbers, found {_describe_attr(value)}.")
    return value.astype(np.float32)


# One letter per axis, each axis once (nibabel's axis codes).
_AXIS_LETTERS = ("LR", "PA", "IS")


def _read_voxel_order(attrs, where):
    value = attrs["voxel_order"]
    text = decode_str(value) if isinstance(
        value, (str, bytes, np.bytes_, np.str_)) or (
        isinstance(value, np.ndarray) and value.shape == ()
        and value.dtype.kind in "SUO") else None
    order = None if text is None else text.upper()
    axes = ([next((i for i, pair in enumerate(_AXIS_LETTERS) if c in pair),
                  None) for c in order] if order is not None else [])
    if order is None or len(order) != 3 or sorted(
            a for a in axes if a is not None) != [0, 1, 2]:
        raise DwiMLUserError(
            f"{where}: expected attr 'voxel_order' 3 letters, one of L/R, "
            f"P/A and I/S each (e.g. 'RAS'), found {value!r}.")
    return order


def _check_space(attrs, where):
    """Refuse points not in VOX space with a corner origin.

    Spelled as the reference's reader accepts them: any case, with or
    without the enum prefix, the origin also by dipy's value 'corner'.
    Older reference files have no 'origin': their points have dipy's
    default centre origin, so they are refused too.
    """
    expected = {"space": (STREAMLINE_SPACE, {"vox"}),
                "origin": (STREAMLINE_ORIGIN, {"trackvis", "corner"})}
    for name, (value, accepted) in expected.items():
        if name not in attrs:
            raise DwiMLUserError(
                f"{where}: expected attr '{name}' = '{value}', found none "
                "(older reference dwi_ml files stored centre-origin points "
                "without it: create the file again).")
        if strip_enum_prefix(attrs[name]).lower() not in accepted:
            raise DwiMLUserError(f"{where}: expected attr '{name}' = "
                                 f"'{value}', found '{decode_str(attrs[name])}'.")


def _load_streamlines(handle, key, lazy):
    group = handle.file[key]
    where = f"HDF5 file {handle.path}: streamline group '{key}'"
    _check_space(group.attrs, where)
    space_attributes = read_space_attributes(group.attrs, where)
    data = _require(group, "data", where)
    offsets = _read_counts(group, "offsets", where)
    lengths = _read_counts(group, "lengths", where)
    _check_packing(data.shape, offsets, lengths, where)
    dps_names = _check_data_per_streamline(group, len(lengths), where)
    # Shapes and types only: the labels are read with the connectivity
    # (below when eager, at first use when lazy).
    check_connectivity(group, space_attributes[1], where)
    affine = space_attributes[0]
    if lazy:
        lengths_mm = _read_lengths_mm(handle, key, offsets, lengths, affine)
        return LazySFTData(handle, key, offsets, lengths, lengths_mm,
                           space_attributes, dps_names)
    stored_points = data[()]
    checksums = load_row_checksums(handle, key + "/data")
    if checksums is not None:
        check_row_checksums(handle.path, key + "/data", stored_points,
                            *checksums[:2])
    points = np.asarray(stored_points, dtype=np.float32)
    check_finite_points(points, offsets, lengths, np.arange(len(lengths)),
                        handle.path, key)
    points, offsets, lengths, nb_removed = without_repeated_points(
        points, offsets, lengths, np.arange(len(lengths)), handle.path, key)
    if nb_removed:
        warn_repeated_points(nb_removed, handle.path, key)
    lengths_mm = _read_lengths_mm(handle, key, offsets, lengths, affine,
                                  points)
    dps = {name: group["data_per_streamline"][name][()] for name in dps_names}
    return SFTData(points, offsets, lengths, lengths_mm, space_attributes, dps,
                   read_connectivity(group, f"{where}:"))


def _check_data_per_streamline(group, nb_streamlines, where):
    """Names of the group's data_per_streamline datasets, each of one row
    per streamline; refuse anything else (a lazy read past a dataset's end
    would return bytes that are no data).

    Returns
    -------
    list of str
    """
    if "data_per_streamline" not in group:
        return []
    dps = group["data_per_streamline"]
    if not isinstance(dps, h5py.Group):
        raise DwiMLUserError(
            f"{where}: expected 'data_per_streamline' to be a group (one "
            f"dataset per key), found a dataset of shape {dps.shape}.")
    for name, item in dps.items():
        key = f"data_per_streamline/{name}"
        if not isinstance(item, h5py.Dataset):
            raise DwiMLUserError(f"{where}: expected '{key}' to be a "
                                 "dataset, found a group.")
        rows = item.shape[0] if item.shape else None
        # Without streamlines nothing is read from it (an empty group is
        # refused where used).
        if nb_streamlines and rows != nb_streamlines:
            raise DwiMLUserError(
                f"{where}: expected '{key}' of {nb_streamlines} rows (one per "
                f"streamline), found {'shape ()' if rows is None else rows}"
                f"{'' if rows is None else ' rows'}.")
    return list(dps)


def _check_packing(data_shape, offsets, lengths, where):
    if len(data_shape) != 2 or data_shape[1] != 3:
        raise DwiMLUserError(f"{where}: expected 'data' of shape (P, 3), "
                             f"found {data_shape}.")
    if offsets.shape != lengths.shape or offsets.ndim != 1:
        raise DwiMLUserError(f"{where}: expected 'offsets' and 'lengths' of "
                             f"the same shape (N,), found {offsets.shape} and "
                             f"{lengths.shape}.")
    if len(lengths) and (offsets.min() < 0 or lengths.min() < 0
                         or (offsets + lengths).max() > data_shape[0]):
        raise DwiMLUserError(f"{where}: expected offsets + lengths within "
                             f"the {data_shape[0]} rows of 'data', found "
                             "streamlines outside.")
    if len(lengths) and lengths.min() < 1:
        raise DwiMLUserError(
            f"{where}: expected 'lengths' >= 1 (a streamline has points), "
            f"found {int(np.sum(lengths < 1))} of {len(lengths)} streamlines "
            f"of 0 points (the first: {int(np.argmax(lengths < 1))}).")


def _read_lengths_mm(handle, key, offsets, lengths, affine, points=None):
    """Stored euclidean lengths, or computed from the points when there
    are none, or not one per streamline.

    From ``points`` when given (eager), else read from disk block by block,
    so that lazy loading never holds all the points.
    """
    group = handle.file[key]
    # Older reference files may hold the lengths of streamlines removed
    # later (invalid ones): then they match no streamline.
    if ("euclidean_lengths" in group
            and group["euclidean_lengths"].shape == lengths.shape):
        stored = group["euclidean_lengths"]
        if stored.dtype.kind not in "iuf":
            raise DwiMLUserError(
                f"HDF5 file {handle.path}: streamline group '{key}': expected"
                f" dataset 'euclidean_lengths' of numbers (mm), found dtype "
                f"{stored.dtype}.")
        return stored[()]
    if points is not None:
        return lengths_mm(points, offsets, lengths, affine)
    result = np.zeros(len(lengths), dtype=np.float32)
    first_points = offsets_from_lengths(lengths)
    block_of_streamline = first_points // LENGTHS_BLOCK_POINTS
    bounds = np.concatenate([
        [0], np.flatnonzero(np.diff(block_of_streamline)) + 1, [len(lengths)]
    ]).astype(np.int64)
    for first, last in zip(bounds[:-1], bounds[1:]):
        points, starts = read_row_ranges(handle, key + "/data",
                                         offsets[first:last],
                                         lengths[first:last])
        # Measured on float32 points, as the eager path and the batches
        # hold them: the same lengths (and length_mm batches) either way.
        result[first:last] = lengths_mm(
            points.astype(np.float32, copy=False), starts,
            lengths[first:last], affine)
    return result

