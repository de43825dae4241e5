"""Write root attrs and subject groups in the reference dwi_ml HDF5 layout.

Every key comes from ``dwi_ml.data.hdf5.layout``. Datasets are written with
``track_times=False`` so that the same inputs give the same bytes.

Chunking: streamline ``data`` is chunked by ``STREAMLINE_CHUNK_ROWS`` rows
(4096 points x 3 x float32 = 48 KiB), uncompressed. A lazy read of one
streamline (typically 20 to 300 points) then touches one or two chunks,
and h5py's default 1 MiB chunk cache holds about 20 of them. Compression
would make every such read decompress whole chunks.

Checksums, so that corrupt bytes raise instead of feeding a model (see
docs/hdf5_layout.md, "Storage choices"):

- volumes, ``offsets``, ``lengths``, ``euclidean_lengths`` and
  ``data_per_streamline`` are chunked with HDF5's fletcher32 filter: HDF5
  checks every chunk it reads, and any h5py (the reference's too) reads
  them transparently;
- streamline ``data`` stays unfiltered, so that lazy reads can fetch its
  bytes with ``os.pread`` (a filter would force HDF5's much slower path).
  Its sibling dataset ``data_crc32`` holds the CRC-32 of each chunk's rows
  (attr ``rows_per_checksum``), checked by our readers.
"""
import h5py
import numpy as np

from dwi_ml.data.hdf5.layout import (
    CHECKSUM_SUFFIX,
    FORMAT_VERSION,
    ROWS_PER_CHECKSUM_ATTR,
    SPLIT_ATTRS,
    SPLITS,
    STREAMLINE_ORIGIN,
    STREAMLINE_SPACE,
    STREAMLINES_TYPE,
    VOLUME_TYPE,
    row_block_checksums,
    write_optional_number,
)

STREAMLINE_CHUNK_ROWS = 4096


def _create_checked(group, name, data):
    """A dataset with HDF5's fletcher32 checksum (chunked, as it needs)."""
    return group.create_dataset(name, data=data, fletcher32=True,
                                chunks=True, track_times=False)


def write_root_attrs(hdf_file, subjects, groups_config_text, date_time, *,
                     step_size=None, nb_points=None, compress=None):
    """Write the root attributes.

    Parameters
    ----------
    hdf_file : h5py.File
    subjects : SubjectLists
    groups_config_text : str
        The config as JSON.
    date_time : str
        Creation date, stored as ``data_and_time``.
    step_size, nb_points, compress : optional
        Streamline processing options (mm, points, mm); None is stored as
        ``layout.NOT_DEFINED``.
    """
    attrs = hdf_file.attrs
    attrs["version"] = np.int64(FORMAT_VERSION)
    attrs["data_and_time"] = date_time
    attrs["groups_config"] = groups_config_text
    attrs["chosen_subjs"] = _string_array(subjects.all)
    for split in SPLITS:
        attrs[SPLIT_ATTRS[split]] = _string_array(subjects.split(split))
    attrs["step_size"] = write_optional_number(step_size)
    attrs["nb_points"] = write_optional_number(nb_points)
    attrs["compress"] = write_optional_number(compress)


def write_volume_group(subject_group, name, data, grid):
    """Write a volume group.

    Parameters
    ----------
    subject_group : h5py.Group
    name : str
    data : np.ndarray, shape (X, Y, Z, F), float32
    grid : VolumeGrid
        Its affine (voxel to RAS mm) and voxres (mm).
    """
    group = subject_group.create_group(name)
    group.attrs["type"] = VOLUME_TYPE
    group.attrs["affine"] = np.asarray(grid.affine, dtype=np.float64)
    group.attrs["voxres"] = np.asarray(grid.voxres, dtype=np.float32)
    group.attrs["nb_features"] = np.int64(data.shape[-1])
    _create_checked(group, "data", np.asarray(data, dtype=np.float32))


def write_streamline_group(subject_group, name, streamlines):
    """Write a streamline group.

    Parameters
    ----------
    subject_group : h5py.Group
    name : str
    streamlines : StreamlineGroupData
        Points in voxel space with a corner origin.
    """
    group = subject_group.create_group(name)
    group.attrs["type"] = STREAMLINES_TYPE
    group.attrs["space"] = STREAMLINE_SPACE
    group.attrs["origin"] = STREAMLINE_ORIGIN
    affine, dimensions, voxel_sizes, voxel_order = \
        streamlines.space_attributes
    group.attrs["affine"] = affine
    group.attrs["dimensions"] = dimensions
    group.attrs["voxel_sizes"] = voxel_sizes
    group.attrs["voxel_order"] = voxel_order

    data = np.asarray(streamlines.data, dtype=np.float32)
    chunk_rows = min(STREAMLINE_CHUNK_ROWS, max(len(data), 1))
    group.create_dataset("data", data=data, chunks=(chunk_rows, 3),
                         track_times=False)
    checksums = _create_checked(group, "data" + CHECKSUM_SUFFIX,
                                row_block_checksums(data, chunk_rows))
    checksums.attrs[ROWS_PER_CHECKSUM_ATTR] = np.int64(chunk_rows)
    _create_checked(group, "offsets",
                    np.asarray(streamlines.offsets, np.int64))
    _create_checked(group, "lengths",
                    np.asarray(streamlines.lengths, np.int64))
    _create_checked(group, "euclidean_lengths",
                    np.asarray(streamlines.euclidean_lengths, np.float32))
    dps_group = group.create_group("data_per_streamline")
    for key, values in streamlines.data_per_streamline.items():
        _create_checked(dps_group, key, values)


def _string_array(values):
    """Subject IDs as a 1-D array of variable-length UTF-8 strings."""
    return np.array(list(values), dtype=h5py.string_dtype("utf-8"))
