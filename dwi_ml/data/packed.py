"""Packed streamlines: one (P, 3) array plus per-streamline offsets/lengths.

We keep streamlines packed from HDF5 to the batch, as nibabel's
``ArraySequence`` does, and build ``ArraySequence`` objects without copying.
"""
import numpy as np
from nibabel.streamlines import ArraySequence


def make_array_sequence(data, offsets, lengths):
    """Wrap packed arrays in an ``ArraySequence`` without copying them.

    Parameters
    ----------
    data : np.ndarray, shape (P, 3)
        All points. Rows not covered by any streamline are allowed.
    offsets, lengths : np.ndarray, shape (N,)
        First row and number of points of each streamline.
    """
    sequence = ArraySequence()
    sequence._data = np.asarray(data)
    sequence._offsets = np.asarray(offsets, dtype=np.int64)
    sequence._lengths = np.asarray(lengths, dtype=np.int64)
    return sequence


def compact(sequence):
    """Return (data, offsets, lengths) where offsets == cumsum of lengths.

    The copy is one gather over all points, never a loop per point.
    """
    lengths = np.asarray(sequence._lengths, dtype=np.int64)
    offsets = np.asarray(sequence._offsets, dtype=np.int64)
    new_offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=new_offsets[1:])
    rows = ranges_to_indices(offsets, lengths)
    return np.take(sequence._data, rows, axis=0), new_offsets, lengths


def ranges_to_indices(starts, lengths):
    """Concatenate ``arange(s, s + n)`` for every (s, n), vectorised.

    Examples
    --------
    >>> ranges_to_indices(np.array([5, 0]), np.array([2, 3]))
    array([5, 6, 0, 1, 2])
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    steps = np.ones(total, dtype=np.int64)
    first_rows = np.cumsum(lengths[:-1])
    steps[0] = starts[0]
    steps[first_rows] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(steps)
