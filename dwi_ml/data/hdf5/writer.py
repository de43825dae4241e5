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
  (attr ``rows_per_checksum``), checked by our readers;
- a volume group's attr ``data_crc32`` holds the CRC-32 of its whole
  ``data``: fletcher32 is recomputed by HDF5 on every write, so only this
  one tells a volume edited in place since creation (our readers check it
  on their full reads).
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
    VOLUME_CHECKSUM_ATTR,
    VOLUME_TYPE,
    row_block_checksums,
    volume_checksum,
    write_optional_number,
)

STREAMLINE_CHUNK_ROWS = 4096
# Rows StreamlinePointsWriter gathers before writing (12 MiB, whole chunks):
# each write to a resizable dataset costs ~0.7 ms, and resampling runs
# bring ~65 000 rows each (written as they came: 1.9x the writer's time).
WRITE_ROWS = 256 * STREAMLINE_CHUNK_ROWS


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
    data = np.asarray(data, dtype=np.float32)
    group.attrs[VOLUME_CHECKSUM_ATTR] = np.uint32(volume_checksum(data))
    _create_checked(group, "data", data)


class StreamlinePointsWriter:
    """Append a streamline group's points to its ``data`` dataset.

    The points arrive in runs (one per file, or per resampling run) and go
    to the file through a buffer of ``WRITE_ROWS`` rows, written whenever
    it is full, so a group never holds more than that many points. The
    dataset is resizable (``maxshape`` (None, 3)) and chunked by
    ``STREAMLINE_CHUNK_ROWS`` rows; a group of fewer rows gets one chunk
    of its size, as when written whole. Every write but the last is of
    whole chunks, so each chunk's CRC-32 is computed once, on its full
    rows: the result equals writing all the points at once.

    Parameters
    ----------
    group : h5py.Group
        The streamline group.
    """

    def __init__(self, group):
        self._group = group
        self._dataset = None
        self._buffer = np.empty((WRITE_ROWS, 3), np.float32)
        self._nb_buffered = 0
        self._checksums = []

    def append(self, points):
        """Write points, shape (n, 3), in voxel space with a corner origin."""
        points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        while len(points):
            size = min(len(self._buffer) - self._nb_buffered, len(points))
            self._buffer[self._nb_buffered:self._nb_buffered + size] = \
                points[:size]
            self._nb_buffered += size
            points = points[size:]
            if self._nb_buffered == len(self._buffer):
                self._write_buffer()

    def close(self):
        """Write the buffered rows and ``data_crc32``; return the dataset."""
        self._write_buffer()
        if self._dataset is None:
            self._dataset = self._create(1)
        chunk_rows = self._dataset.chunks[0]
        checksums = _create_checked(
            self._group, "data" + CHECKSUM_SUFFIX,
            np.concatenate(self._checksums or [np.empty(0, np.uint32)]))
        checksums.attrs[ROWS_PER_CHECKSUM_ATTR] = np.int64(chunk_rows)
        return self._dataset

    def _write_buffer(self):
        """Append the buffered rows (whole chunks unless the last write)."""
        if not self._nb_buffered:
            return
        if self._dataset is None:
            self._dataset = self._create(
                min(STREAMLINE_CHUNK_ROWS, self._nb_buffered))
        self._write(self._buffer[:self._nb_buffered])
        self._nb_buffered = 0

    def _create(self, chunk_rows):
        return self._group.create_dataset(
            "data", shape=(0, 3), maxshape=(None, 3), dtype=np.float32,
            chunks=(chunk_rows, 3), track_times=False)

    def _write(self, rows):
        """Append rows starting at a chunk boundary."""
        start = self._dataset.shape[0]
        self._dataset.resize(start + len(rows), axis=0)
        self._dataset[start:] = rows
        self._checksums.append(
            row_block_checksums(rows, self._dataset.chunks[0]))


def write_streamline_group(group, streamlines, points):
    """Finish a streamline group whose points went through ``points``.

    Parameters
    ----------
    group : h5py.Group
        The group, created empty with ``subject_group.create_group(name)``.
    streamlines : StreamlineGroupData
        Lengths, offsets and the rest; points in voxel space with a corner
        origin.
    points : StreamlinePointsWriter
        The writer that received the group's points.
    """
    points.close()
    group.attrs["type"] = STREAMLINES_TYPE
    group.attrs["space"] = STREAMLINE_SPACE
    group.attrs["origin"] = STREAMLINE_ORIGIN
    affine, dimensions, voxel_sizes, voxel_order = \
        streamlines.space_attributes
    group.attrs["affine"] = affine
    group.attrs["dimensions"] = dimensions
    group.attrs["voxel_sizes"] = voxel_sizes
    group.attrs["voxel_order"] = voxel_order
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
