"""Coalesced reads of many row ranges of one HDF5 dataset.

A batch asks for a few hundred or thousand streamlines scattered over a
subject's ``data``. We sort the ranges, merge overlapping and near ones
(reading a small gap costs less than one more read) and read the merged
blocks into one buffer.

How the blocks are read was chosen by measurement (1000 random streamlines
of ~60 points among 100k, file in the page cache, h5py 3.16, HDF5 2.0):

- unfiltered dataset, contiguous (the reference layout) or chunked by whole
  rows (our writer): one ``os.pread`` per block and chunk at the bytes'
  address in the file, ~1.5 ms. It bypasses HDF5's per-call overhead;
- otherwise (compressed...), one h5py slice per block: ~9 ms contiguous,
  ~17 ms with 4096-row chunks. A union of hyperslabs read in ONE
  ``H5Dread`` was slower still: building the selection is quadratic in the
  number of blocks in HDF5 (9 ms for 1000 blocks, 93 ms for 3000) and the
  read itself took 5 ms (36 ms in all with chunks).

Checksums: a dataset written with a sibling ``NAME_crc32`` (our writer's
streamline ``data``, see ``dwi_ml.data.hdf5.writer``) has each block of
rows checked once per process, the first time a read touches it: a 48 KiB
read per block, once, then a lookup in a boolean array per batch.
"""
import os
import zlib

import h5py
import numpy as np

from dwi_ml.data.hdf5.file_check import checksum_mismatch
from dwi_ml.data.hdf5.layout import (
    CHECKSUM_SUFFIX,
    ROWS_PER_CHECKSUM_ATTR,
    row_block_checksums,
)
from dwi_ml.data.packed import (
    offsets_from_lengths,
    ranges_to_indices,
    split_by_lengths,
)

# Merge two ranges when the gap between them is at most this many bytes:
# reading 16 KiB from the page cache costs about one extra read call.
MERGE_GAP_BYTES = 16 * 1024


def plan_blocks(starts, counts, max_gap_rows=0):
    """Merge row ranges into sorted, disjoint blocks.

    Parameters
    ----------
    starts, counts : np.ndarray, shape (N,)
        First row and number of rows of each range, in any order; ranges may
        overlap or repeat.
    max_gap_rows : int
        Ranges separated by at most this many rows share a block.

    Returns
    -------
    block_starts, block_counts : np.ndarray, shape (B,)
        The blocks, sorted by start, to read one after the other into a
        buffer.
    positions : np.ndarray, shape (N,)
        The buffer row where each input range begins.
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if len(starts) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    # About 15 numpy calls whatever the number of ranges (a batch: ~100).
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    reach = np.maximum.accumulate(sorted_starts + counts[order])
    opens_block = np.empty(len(starts), dtype=bool)
    opens_block[0] = True
    np.greater(sorted_starts[1:], reach[:-1] + max_gap_rows,
               out=opens_block[1:])
    first_of_block = np.flatnonzero(opens_block)
    block_starts = sorted_starts[first_of_block]
    # A block ends where the reach of its last range does.
    block_counts = reach[np.append(first_of_block[1:] - 1, -1)] - block_starts
    buffer_shift = np.cumsum(block_counts) - block_counts - block_starts
    positions = np.empty(len(starts), dtype=np.int64)
    positions[order] = (buffer_shift[np.cumsum(opens_block) - 1]
                        + sorted_starts)
    return block_starts, block_counts, positions


def read_row_ranges(handle, key, starts, counts):
    """Read rows ``[s, s + n)`` of dataset ``key`` for many (s, n).

    Parameters
    ----------
    handle : Hdf5Handle
        The per-process file handle.
    key : str
        Path of a dataset of shape (R, ...) in the file.
    starts, counts : np.ndarray, shape (N,)
        The ranges, in any order, possibly overlapping or repeated.

    Returns
    -------
    buffer : np.ndarray, shape (M, ...)
        The merged blocks, in file order, in the dataset's dtype. May be
        read-only: copy (gather) out of it.
    positions : np.ndarray, shape (N,)
        ``buffer[positions[i]:positions[i] + counts[i]]`` is range i.
    """
    layout = handle.memoize(("row_layout", key),
                            lambda: _RowLayout(handle, key))
    block_starts, block_counts, positions = plan_blocks(
        starts, counts, layout.max_gap_rows)
    if not block_counts.any():
        return np.empty((0,) + layout.row_shape, layout.dtype), positions
    if layout.checksums is not None:
        _verify_touched_rows(handle, key, layout, block_starts, block_counts)
    return _read_blocks(handle, layout, block_starts, block_counts), positions


def read_row_ranges_of_datasets(handle, keys, starts, counts):
    """:func:`read_row_ranges` for several datasets of one file at once.

    The ranges of all datasets are planned together and read into ONE
    buffer: one sort, one merge and one list of reads, where a dataset at
    a time costs those steps' fixed overhead again (~100 us each: a lazy
    batch of 48 subjects spent more time planning than reading).

    Parameters
    ----------
    handle : Hdf5Handle
    keys : list of str
        Distinct datasets of the same dtype and row shape (e.g. every
        subject's streamline ``data``).
    starts, counts : list of np.ndarray
        The ranges of each dataset, as for :func:`read_row_ranges`.

    Returns
    -------
    (buffer, positions) or None
        ``buffer[positions[k][i]:...]`` is range i of dataset ``keys[k]``;
        each dataset's blocks are consecutive in the buffer (datasets never
        share one). None when the datasets cannot be read together: fewer
        than two, a key twice, one whose bytes cannot be read directly
        (compressed...) or another dtype or row shape; read each with
        :func:`read_row_ranges` then.
    """
    if len(keys) < 2 or len(set(keys)) < len(keys):
        return None
    layouts = [handle.memoize(("row_layout", key),
                              lambda key=key: _RowLayout(handle, key))
               for key in keys]
    first = layouts[0]
    if any(layout.extent_rows is None or layout.dtype != first.dtype
           or layout.row_shape != first.row_shape for layout in layouts):
        return None
    space = handle.memoize(("row_space", first.dtype.str, first.row_shape),
                           lambda: _RowSpace(first))
    bases = space.bases(layouts)
    sizes = np.array([len(part) for part in starts], dtype=np.int64)
    all_starts = np.concatenate(starts).astype(np.int64, copy=False)
    all_starts += np.repeat(bases, sizes)
    # Datasets never share a block: the row space leaves more than
    # max_gap_rows between them.
    block_starts, block_counts, positions = plan_blocks(
        all_starts, np.concatenate(counts), first.max_gap_rows)
    for key, layout, base in zip(keys, layouts, bases.tolist()):
        if layout.checksums is not None and not layout.checksums[2].all():
            mine = ((block_starts >= base)
                    & (block_starts < base + layout.nb_rows))
            _verify_touched_rows(handle, key, layout,
                                 block_starts[mine] - base,
                                 block_counts[mine])
    if not block_counts.any():
        buffer = np.empty((0,) + first.row_shape, first.dtype)
    else:
        buffer = _read_blocks(handle, space, block_starts, block_counts)
    return buffer, split_by_lengths(positions, sizes)


class _RowSpace:
    """The rows of many datasets of one file (one dtype and row shape) laid
    end to end, each at a fixed base with a gap larger than the merge gap
    after it, and the file extents of all of them: one plan and one
    :func:`_file_pieces` serve reads over several datasets. Datasets are
    added the first time a read names them."""

    def __init__(self, layout):
        self.key = None  # read with os.pread only
        self.dtype, self.row_shape = layout.dtype, layout.row_shape
        self.row_bytes = layout.row_bytes
        self._gap = layout.max_gap_rows + 1
        self._bases = {}
        self._end = 0
        self._extents = []
        self.extent_rows = self.extent_ends = self.extent_addresses = None

    def bases(self, layouts):
        """The base row of each layout's dataset, added if new."""
        new = [layout for layout in layouts if layout.key not in self._bases]
        for layout in new:
            base = self._end
            self._bases[layout.key] = base
            self._end += layout.nb_rows + self._gap
            ends = np.append(layout.extent_rows[1:], layout.nb_rows)
            self._extents.append((layout.extent_rows + base, ends + base,
                                  layout.extent_addresses))
        if new:
            rows, ends, addresses = map(np.concatenate, zip(*self._extents))
            self.extent_rows, self.extent_ends = rows, ends
            self.extent_addresses = addresses
        return np.array([self._bases[layout.key] for layout in layouts],
                        dtype=np.int64)


class _RowLayout:
    """What reading rows of one dataset needs, looked up once per process
    (h5py's ``shape`` and ``dtype`` cost microseconds per access)."""

    def __init__(self, handle, key):
        # The dataset object is not kept: the handle closes the least
        # recently used ones (each holds a chunk cache).
        self.key = key
        dataset = handle.dataset(key)
        self.nb_rows = len(dataset)
        self.row_shape = dataset.shape[1:]
        self.dtype = dataset.dtype
        self.row_bytes = self.dtype.itemsize * int(
            np.prod(self.row_shape, dtype=np.int64))
        self.max_gap_rows = MERGE_GAP_BYTES // max(self.row_bytes, 1)
        # Rows where each extent of chunks contiguous in the file begins,
        # and its address; None: read through h5py.
        self.extent_rows = self.extent_addresses = None
        raw_chunks = find_raw_chunks(dataset)
        if raw_chunks is not None:
            chunk_rows, addresses = raw_chunks
            opens = np.ones(len(addresses), dtype=bool)
            opens[1:] = (np.diff(addresses)
                         != chunk_rows * self.row_bytes)
            self.extent_rows = np.flatnonzero(opens) * chunk_rows
            self.extent_ends = np.append(self.extent_rows[1:],
                                         np.iinfo(np.int64).max)
            self.extent_addresses = addresses[opens]
        self.checksums = load_row_checksums(handle, key)


def _read_blocks(handle, layout, block_starts, block_counts):
    """Rows of sorted, disjoint blocks, one after the other."""
    if layout.extent_rows is None:
        return _read_with_h5py(handle.dataset(layout.key), block_starts,
                               block_counts)
    file_starts, sizes, _ = _file_pieces(layout, block_starts, block_counts)
    fd = handle.fd
    raw = b"".join([os.pread(fd, size, start) for size, start
                    in zip(sizes.tolist(), file_starts.tolist())])
    if len(raw) != sizes.sum():
        raise OSError(f"Short read in {handle.path}: the file is shorter "
                      "than its datasets.")
    return np.frombuffer(raw, dtype=layout.dtype).reshape(
        (-1,) + layout.row_shape)


def _file_pieces(layout, block_starts, block_counts):
    """Where sorted, disjoint blocks of rows lie in the file.

    Returns
    -------
    file_starts, sizes : np.ndarray of int64, shape (nb_pieces,)
        Bytes to read, in order; a block that crosses the end of an extent
        (rare) is read as several pieces.
    blocks : np.ndarray or None
        The block of each piece; None when there is one piece per block.
    """
    extents = np.searchsorted(layout.extent_rows, block_starts,
                              side="right") - 1
    block_ends = block_starts + block_counts
    blocks = None
    if np.any(block_ends > layout.extent_ends[extents]):
        last_extents = np.searchsorted(layout.extent_rows, block_ends - 1,
                                       side="right") - 1
        nb_pieces = last_extents - extents + 1
        blocks = np.repeat(np.arange(len(block_starts)), nb_pieces)
        extents = (np.arange(len(blocks))
                   - offsets_from_lengths(nb_pieces)[blocks] + extents[blocks])
        block_starts = np.maximum(block_starts[blocks],
                                  layout.extent_rows[extents])
        block_ends = np.minimum(block_ends[blocks],
                                layout.extent_ends[extents])
    row_bytes = layout.row_bytes
    file_starts = (layout.extent_addresses[extents]
                   + row_bytes * (block_starts - layout.extent_rows[extents]))
    return file_starts, row_bytes * (block_ends - block_starts), blocks


def load_row_checksums(handle, key):
    """The stored checksums of dataset ``key``, or None if it has none.

    Returns
    -------
    (rows_per_checksum, checksums, verified) or None
        CRC-32 (uint32) of each block of rows, and a boolean array, all
        False, to record the blocks already checked in this process.
    """
    checksum_key = key + CHECKSUM_SUFFIX
    if checksum_key not in handle.file:
        return None
    dataset = handle.dataset(checksum_key)
    checksums = np.asarray(dataset[()], dtype=np.uint32)
    return (int(dataset.attrs[ROWS_PER_CHECKSUM_ATTR]), checksums,
            np.zeros(len(checksums), dtype=bool))


def check_row_checksums(path, key, data, rows_per_checksum, checksums,
                        first_block=0):
    """Raise a user error naming the first block of ``data`` that differs.

    ``data`` holds the rows of blocks ``first_block``, ``first_block + 1``...
    """
    found = row_block_checksums(data, rows_per_checksum)
    expected = checksums[first_block:first_block + len(found)]
    bad = np.flatnonzero(found != expected)
    if len(bad) or len(expected) != len(found):
        block = first_block + (int(bad[0]) if len(bad) else len(expected))
        raise checksum_mismatch(
            path, key, f"rows {block * rows_per_checksum} to "
            f"{(block + 1) * rows_per_checksum - 1} of dataset '{key}'")


def _verify_touched_rows(handle, key, layout, block_starts, block_counts):
    """Check, once per process, every checksum block these reads touch."""
    rows, expected, verified = layout.checksums
    if verified.all():  # the usual case after the first epoch
        return
    first = block_starts // rows
    last = (block_starts + block_counts - 1) // rows
    touched = np.unique(ranges_to_indices(first, last - first + 1))
    new = touched[~verified[touched]]
    if not len(new):
        return
    starts = new * rows
    counts = np.minimum(rows, layout.nb_rows - starts)
    found = _block_checksums(handle, layout, starts, counts, rows)
    bad = np.flatnonzero(found != expected[new])
    if len(bad):
        block = int(bad[0])
        check_row_checksums(
            handle.path, key,
            _read_blocks(handle, layout, starts[block:block + 1],
                         counts[block:block + 1]),
            rows, expected, int(new[block]))
    verified[new] = True


def _block_checksums(handle, layout, starts, counts, rows_per_checksum):
    """CRC-32 of the rows ``[s, s + n)`` of each (s, n): checksum blocks,
    sorted, all of ``rows_per_checksum`` rows but the dataset's last.

    Read from the file's bytes, each read's CRC computed as it comes: the
    first epoch of a lazy run reads every chunk once this way, and no
    buffer is assembled (a copy less).
    """
    if layout.extent_rows is None:
        return row_block_checksums(
            _read_with_h5py(handle.dataset(layout.key), starts, counts),
            rows_per_checksum)
    file_starts, sizes, blocks = _file_pieces(layout, starts, counts)
    crcs = [0] * len(starts)
    fd = handle.fd
    for piece, (size, start) in enumerate(zip(sizes.tolist(),
                                              file_starts.tolist())):
        data = os.pread(fd, size, start)
        if len(data) != size:
            raise OSError(f"Short read in {handle.path}: the file is "
                          "shorter than its datasets.")
        block = piece if blocks is None else int(blocks[piece])
        crcs[block] = zlib.crc32(data, crcs[block])
    return np.array(crcs, dtype=np.uint32)


def find_raw_chunks(dataset):
    """Where the rows of an unfiltered dataset lie in the file, or None.

    Returns
    -------
    (chunk_rows, chunk_addresses) or None
        Rows ``[k * chunk_rows, (k + 1) * chunk_rows)`` are stored one
        after the other from byte ``chunk_addresses[k]``. A contiguous
        dataset is one chunk. None when its bytes cannot be read directly
        (compressed or otherwise filtered, external, partly unallocated,
        chunks not spanning whole rows, or no ``os.pread``).
    """
    create_plist = dataset.id.get_create_plist()
    layout = create_plist.get_layout()
    if (not hasattr(os, "pread") or create_plist.get_nfilters() > 0
            or create_plist.get_external_count() > 0 or len(dataset) == 0):
        return None
    if layout == h5py.h5d.CONTIGUOUS:
        address = dataset.id.get_offset()
        return None if address is None else (
            len(dataset), np.array([address], dtype=np.int64))
    if (layout != h5py.h5d.CHUNKED or dataset.chunks[1:] != dataset.shape[1:]
            or not hasattr(dataset.id, "chunk_iter")):
        return None
    chunk_rows = dataset.chunks[0]
    addresses = np.full(-(-len(dataset) // chunk_rows), -1, dtype=np.int64)

    def store(info):
        addresses[info.chunk_offset[0] // chunk_rows] = info.byte_offset
    dataset.id.chunk_iter(store)
    return None if (addresses < 0).any() else (chunk_rows, addresses)


def _read_with_h5py(dataset, block_starts, block_counts):
    return np.concatenate([
        dataset[start:start + count] for start, count
        in zip(block_starts.tolist(), block_counts.tolist())])
