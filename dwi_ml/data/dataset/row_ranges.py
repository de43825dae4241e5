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

import h5py
import numpy as np

from dwi_ml.data.hdf5.layout import (
    CHECKSUM_SUFFIX,
    ROWS_PER_CHECKSUM_ATTR,
    row_block_checksums,
)
from dwi_ml.data.packed import ranges_to_indices
from dwi_ml.io_utils.errors import DwiMLUserError

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
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    sorted_ends = sorted_starts + counts[order]
    reach = np.maximum.accumulate(sorted_ends)
    opens_block = np.ones(len(starts), dtype=bool)
    opens_block[1:] = sorted_starts[1:] > reach[:-1] + max_gap_rows
    first_of_block = np.flatnonzero(opens_block)
    block_starts = sorted_starts[first_of_block]
    block_counts = np.maximum.reduceat(sorted_ends, first_of_block) - block_starts
    block_buffer_rows = np.zeros(len(block_starts), dtype=np.int64)
    np.cumsum(block_counts[:-1], out=block_buffer_rows[1:])
    block_of_range = np.cumsum(opens_block) - 1
    positions = np.empty(len(starts), dtype=np.int64)
    positions[order] = (block_buffer_rows[block_of_range]
                        + sorted_starts - block_starts[block_of_range])
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
    dataset = handle.dataset(key)
    row_shape = dataset.shape[1:]
    row_bytes = dataset.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    max_gap_rows = MERGE_GAP_BYTES // max(row_bytes, 1)
    block_starts, block_counts, positions = plan_blocks(starts, counts,
                                                        max_gap_rows)
    if not block_counts.any():
        return np.empty((0,) + row_shape, dataset.dtype), positions
    raw_chunks = handle.memoize(("raw_chunks", key),
                                lambda: find_raw_chunks(dataset))
    checksums = handle.memoize(("checksums", key),
                               lambda: load_row_checksums(handle, key))
    if checksums is not None:
        _verify_touched_rows(handle, key, raw_chunks, checksums,
                             block_starts, block_counts)
    return _read_blocks(handle, dataset, raw_chunks, block_starts,
                        block_counts), positions


def _read_blocks(handle, dataset, raw_chunks, block_starts, block_counts):
    """Rows of sorted, disjoint blocks, one after the other."""
    if raw_chunks is None:
        return _read_with_h5py(dataset, block_starts, block_counts)
    row_shape = dataset.shape[1:]
    row_bytes = dataset.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    file_starts, nb_bytes = _file_pieces(block_starts, block_counts,
                                         row_bytes, *raw_chunks)
    fd = handle.fd
    raw = b"".join([os.pread(fd, size, start) for size, start
                    in zip(nb_bytes.tolist(), file_starts.tolist())])
    if len(raw) != nb_bytes.sum():
        raise OSError(f"Short read in {handle.path}: the file is shorter "
                      "than its datasets.")
    return np.frombuffer(raw, dtype=dataset.dtype).reshape((-1,) + row_shape)


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
        parts = key.split("/")
        raise DwiMLUserError(
            f"HDF5 file '{path}', subject '{parts[0]}', group '{parts[1]}': "
            f"dataset '{key}' is corrupt: rows {block * rows_per_checksum} "
            f"to {(block + 1) * rows_per_checksum - 1} do not match the "
            "CRC-32 stored when the file was created.")


def _verify_touched_rows(handle, key, raw_chunks, checksums, block_starts,
                         block_counts):
    """Check, once per process, every checksum block these reads touch."""
    rows, expected, verified = checksums
    if verified.all():  # the usual case after the first epoch
        return
    first = block_starts // rows
    last = (block_starts + block_counts - 1) // rows
    touched = np.unique(ranges_to_indices(first, last - first + 1))
    new = touched[~verified[touched]]
    if not len(new):
        return
    dataset = handle.dataset(key)
    starts = new * rows
    counts = np.minimum(rows, len(dataset) - starts)
    # Merge consecutive blocks into one read; check each block on its own.
    merged_starts, merged_counts, _ = plan_blocks(starts, counts)
    data = _read_blocks(handle, dataset, raw_chunks, merged_starts,
                        merged_counts)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    for index, block in enumerate(new.tolist()):
        check_row_checksums(handle.path, key,
                            data[bounds[index]:bounds[index + 1]], rows,
                            expected, block)
    verified[new] = True


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


def _file_pieces(block_starts, block_counts, row_bytes, chunk_rows,
                 chunk_addresses):
    """Split blocks of rows at chunk ends; (file starts, sizes) in bytes.

    Pieces follow the blocks' order, so reading them one after the other
    gives the blocks' rows in order. Pieces adjacent in the file (a block
    over consecutive chunks written in order) are merged.
    """
    block_ends = block_starts + block_counts
    first_chunk = block_starts // chunk_rows
    nb_pieces = (block_ends - 1) // chunk_rows - first_chunk + 1
    piece_block = np.repeat(np.arange(len(block_starts)), nb_pieces)
    first_piece = np.cumsum(nb_pieces) - nb_pieces
    piece_chunk = (first_chunk[piece_block]
                   + np.arange(len(piece_block)) - first_piece[piece_block])
    chunk_first_row = piece_chunk * chunk_rows
    piece_starts = np.maximum(block_starts[piece_block], chunk_first_row)
    piece_ends = np.minimum(block_ends[piece_block],
                            chunk_first_row + chunk_rows)
    file_starts = (chunk_addresses[piece_chunk]
                   + (piece_starts - chunk_first_row) * row_bytes)
    file_ends = file_starts + (piece_ends - piece_starts) * row_bytes
    opens = np.ones(len(file_starts), dtype=bool)
    opens[1:] = file_starts[1:] != file_ends[:-1]
    merged_starts = file_starts[opens]
    merged_ends = file_ends[np.append(np.flatnonzero(opens)[1:] - 1,
                                      len(file_ends) - 1)]
    return merged_starts, merged_ends - merged_starts


def _read_with_h5py(dataset, block_starts, block_counts):
    return np.concatenate([
        dataset[start:start + count] for start, count
        in zip(block_starts.tolist(), block_counts.tolist())])
