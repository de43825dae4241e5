"""Packed streamlines: one (P, 3) array plus per-streamline offsets/lengths.

We keep streamlines packed from HDF5 to the batch, as nibabel's
``ArraySequence`` does, and build ``ArraySequence`` objects without copying.
These helpers are the only code that touches the sequence's private
``_data``, ``_offsets`` and ``_lengths``: everything else goes through
:func:`packed_arrays` and :func:`make_array_sequence`.
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


def packed_arrays(sequence):
    """The arrays behind an ``ArraySequence``, without copying.

    Returns
    -------
    data : np.ndarray, shape (P, 3)
        May hold rows that belong to no streamline. (0, 3) for an empty
        sequence (nibabel's ``ArraySequence([])`` holds a (0,) array).
    offsets, lengths : np.ndarray, shape (N,), int64
        First row in ``data`` and number of points of each streamline.
    """
    data = np.asarray(sequence._data)
    if data.ndim == 1 and not data.size:
        data = data.reshape(0, 3)
    return (data,
            np.asarray(sequence._offsets, dtype=np.int64),
            np.asarray(sequence._lengths, dtype=np.int64))


def split_by_lengths(array, lengths):
    """``array`` cut into consecutive views of ``lengths`` rows (what
    ``np.split`` at the cumulative lengths gives, 10-20x faster for
    hundreds of pieces: plain slices).
    """
    ends = np.cumsum(lengths).tolist()
    return [array[start:end] for start, end in zip([0] + ends[:-1], ends)]


def offsets_from_lengths(lengths):
    """Offsets of compact streamlines: the exclusive cumulative sum of lengths.

    Examples
    --------
    >>> offsets_from_lengths(np.array([2, 3, 1]))
    array([0, 2, 5])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    return offsets


def compact(sequence):
    """Return (data, offsets, lengths) where offsets == cumsum of lengths.

    ``data`` is the sequence's own array when it is already compact (no
    copy: do not modify it), else one gather over all points, never a loop.
    """
    data, offsets, lengths = packed_arrays(sequence)
    new_offsets = offsets_from_lengths(lengths)
    if len(data) == lengths.sum() and np.array_equal(offsets, new_offsets):
        return data, new_offsets, lengths
    return gather(data, offsets, lengths)


def gather(data, offsets, lengths):
    """A new compact copy of the streamlines (offsets, lengths) of ``data``.

    One ``np.take`` over all points (~3x faster than ``data[rows]`` for
    (P, 3) rows), never a loop per streamline.

    Returns
    -------
    (points, new_offsets, lengths) : points of shape (sum(lengths), 3) and
        offsets == the exclusive cumulative sum of lengths.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = ranges_to_indices(offsets, lengths)
    return np.take(data, rows, axis=0), offsets_from_lengths(lengths), lengths


def drop_repeated_points(points, lengths, keep_streamlines=None):
    """Remove each point equal to the one before it in its streamline.

    A zero-length segment has no direction: its target would be a zero
    vector (a wrong class for classification getters).

    Parameters
    ----------
    points : np.ndarray, shape (P, 3)
        Compact streamlines.
    lengths : np.ndarray, shape (N,)
        Number of points of each streamline.
    keep_streamlines : np.ndarray of bool, shape (N,), optional
        Streamlines left as they are, repeats included.

    Returns
    -------
    (np.ndarray, np.ndarray, int)
        The points and lengths without the repeats (the inputs themselves
        when there are none), and the number of points removed. A
        streamline whose points are all equal keeps one.
    """
    repeated = np.zeros(len(points), dtype=bool)
    # Column by column: numpy's reduction over rows of 3 is much slower.
    same = repeated[1:]
    np.equal(points[1:, 0], points[:-1, 0], out=same)
    same &= points[1:, 1] == points[:-1, 1]
    same &= points[1:, 2] == points[:-1, 2]
    starts = offsets_from_lengths(lengths)
    repeated[starts[lengths > 0]] = False
    if keep_streamlines is not None and keep_streamlines.any():
        repeated[np.repeat(keep_streamlines, lengths)] = False
    nb_repeated = int(np.count_nonzero(repeated))
    if not nb_repeated:
        return points, lengths, 0
    removed = np.zeros(len(lengths), dtype=np.int64)
    filled = lengths > 0
    removed[filled] = np.add.reduceat(repeated, starts[filled])
    return points[~repeated], lengths - removed, nb_repeated


def lengths_mm(data, offsets, lengths, affine, dtype=np.float32):
    """Euclidean length of each streamline, in mm.

    Parameters
    ----------
    data : np.ndarray, shape (P, 3)
        Points in voxel space (any origin: lengths do not depend on it).
    offsets, lengths : np.ndarray, shape (N,)
        First row in ``data`` and number of points of each streamline.
    affine : np.ndarray, shape (4, 4)
        Voxel to RAS mm transform (the identity for points already in mm).
    dtype : numpy dtype
        Of the result: float32 as stored in HDF5 files.

    Returns
    -------
    np.ndarray, shape (N,)
    """
    points, first_rows, lengths = compact(make_array_sequence(data, offsets,
                                                             lengths))
    total_mm = cumulative_lengths_mm(points, first_rows, lengths, affine)
    return (total_mm[first_rows + lengths] - total_mm[first_rows]).astype(dtype)


def cumulative_lengths_mm(points, first_rows, lengths, affine):
    """Arc lengths (mm) of compact streamlines, summed over all rows.

    Row k's step is ``|A (p_k - p_(k-1))|`` (A: the affine's linear part);
    a streamline's first row has none, so sums never cross streamlines.

    Parameters
    ----------
    points : np.ndarray, shape (P, 3)
        Compact points in voxel space (any origin).
    first_rows, lengths : np.ndarray, shape (N,)
        ``offsets_from_lengths(lengths)`` and the number of points of each
        streamline.
    affine : np.ndarray, shape (4, 4)
        Voxel to RAS mm transform.

    Returns
    -------
    np.ndarray, shape (P + 1,), float64
        Entry k + 1 sums the steps of rows 0 to k (``np.cumsum``, in row
        order); streamline i's length is entry ``first_rows[i] +
        lengths[i]`` minus entry ``first_rows[i]``.
    """
    # Steps are taken in voxels (the float64 difference of two float32
    # coordinates is exact), then mapped to mm: the norm of A d, summed as
    # ((A d)_x² w_x + (A d)_y² w_y) + (A d)_z² w_z by one matrix-vector
    # product over flat squares (numpy's loops over rows of 3 are slow).
    # An axis-aligned affine needs no matrix product: |A d|² is then
    # sum(a_ii² d_i²).
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    steps = np.zeros((len(points), 3), dtype=np.float64)
    np.subtract(points[1:], points[:-1], out=steps[1:], dtype=np.float64)
    if np.count_nonzero(linear - np.diag(np.diag(linear))):
        steps = steps @ linear.T
        weights = np.ones(3)
    else:
        weights = np.square(np.diag(linear))
    squares = steps.reshape(-1)
    np.square(squares, out=squares)
    step_mm = steps @ weights
    np.sqrt(step_mm, out=step_mm)
    step_mm[first_rows[lengths > 0]] = 0.
    total_mm = np.zeros(len(points) + 1, dtype=np.float64)
    np.cumsum(step_mm, out=total_mm[1:])
    return total_mm


def ranges_to_indices(starts, lengths, steps=None):
    """Concatenate ``arange(s, s + n)`` for every (s, n), vectorised.

    With ``steps`` (an integer per range), range i is
    ``s, s + steps[i], ...`` (n values): -1 walks a streamline backwards
    from its last row; k > 1 picks every k-th value (one per point of
    interleaved records).

    Examples
    --------
    >>> ranges_to_indices(np.array([5, 0]), np.array([2, 3]))
    array([5, 6, 0, 1, 2])
    >>> ranges_to_indices(np.array([6, 0]), np.array([2, 3]), np.array([-1, 1]))
    array([6, 5, 0, 1, 2])
    """
    # Value of output row r in range i: starts[i] + steps[i] * (r - first
    # row of range i), i.e. one repeated term plus steps[i] * r: two
    # passes over the rows (three with steps), 2.5x faster for a batch's
    # ~100 ranges than a cumulative sum of increments.
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    first_rows = offsets_from_lengths(lengths)
    total = int(first_rows[-1] + lengths[-1]) if len(lengths) else 0
    rows = np.arange(total, dtype=np.int64)
    if steps is None:
        rows += np.repeat(starts - first_rows, lengths)
        return rows
    steps = np.asarray(steps, dtype=np.int64)
    rows *= np.repeat(steps, lengths)
    rows += np.repeat(starts - steps * first_rows, lengths)
    return rows


def cut_by_budget(costs, budget):
    """Cut a sequence into consecutive chunks whose costs fit the budget.

    Greedy: each chunk takes as many of the next items as fit. An item that
    alone exceeds the budget forms its own chunk.

    Parameters
    ----------
    costs : np.ndarray, shape (N,)
        Non-negative cost of each item, in the order in which they are cut.
    budget : float
        Maximal total cost of a chunk (same unit as ``costs``).

    Returns
    -------
    np.ndarray, shape (nb_chunks + 1,), int64
        Chunk boundaries: chunk i is ``costs[bounds[i]:bounds[i + 1]]``.
    """
    cumulative = np.concatenate(([0.], np.cumsum(costs, dtype=np.float64)))
    nb_items = len(costs)
    bounds = [0]
    start = 0
    # One searchsorted per chunk, never a loop per item.
    while start < nb_items:
        end = int(np.searchsorted(cumulative, cumulative[start] + budget,
                                  side="right")) - 1
        start = max(end, start + 1)
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def subject_runs(subject_indices, lengths, nb_points):
    """``[(subject, first point, end point)]`` of runs of one subject.

    ``subject_indices`` and ``lengths`` are the (N,) tensors of a packed
    batch of ``nb_points`` points; computed on the CPU, with no per-point
    work.
    """
    subjects = subject_indices.cpu().numpy()
    if len(subjects) == 0:
        return []
    first = subjects[0]
    if first == subjects[-1] and (subjects == first).all():
        return [(int(first), 0, nb_points)]
    starts = np.concatenate(
        ([0], np.flatnonzero(subjects[1:] != subjects[:-1]) + 1))
    point_bounds = np.append(offsets_from_lengths(lengths.cpu().numpy()),
                             nb_points)
    ends = np.append(starts[1:], len(subjects))
    return [(int(subjects[start]), int(point_bounds[start]),
             int(point_bounds[end])) for start, end in zip(starts, ends)]
