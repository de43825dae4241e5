"""How far float rounding can move a streamline's length (mm), so that
step counts do not depend on the file format the points came from (see
:mod:`dwi_ml.data.processing.resampling`)."""
import numpy as np

from dwi_ml.data.packed import offsets_from_lengths, ranges_to_indices

# Roundings of each coordinate of a stored point before it reaches us: its
# storage in the file's own space, dipy's conversions to voxels (an affine
# map: ~4 each way), ours to mm; counted generously.
_NB_POINT_ROUNDINGS = 16


def length_rounding_bound_mm(points_vox, first_rows, lengths, affine):
    """Bound on the rounding error (mm) of each compact streamline's length.

    Each point is off by at most ``e = sqrt(3) * 16 * eps / 2 * M`` mm (see
    ``_NB_POINT_ROUNDINGS``; ``eps`` of float32, or of the points' dtype if
    coarser; ``M`` a bound on their coordinates in mm). To first order, the
    length ``sum |d_k|`` then changes by ``sum_k u_k . (e_(k+1) - e_k)``
    (``u_k`` the unit step directions), which regroups into
    ``-e_0 . u_0 + e_n . u_(n-1)`` plus, at each inner point,
    ``e_k . (u_(k-1) - u_k)``: at most ``e (2 + sum_k |u_(k-1) - u_k|)``,
    small on smooth streamlines whatever their number of points.

    Parameters
    ----------
    points_vox : np.ndarray, shape (P, 3)
        Compact points, voxel space (any origin).
    first_rows, lengths : np.ndarray, shape (N,)
    affine : np.ndarray, shape (4, 4)

    Returns
    -------
    np.ndarray, shape (N,), float64
        0 for integer points, and for streamlines of one point or none.
    """
    bound = np.zeros(len(lengths))
    point_error_mm = point_rounding_mm(points_vox, affine)
    if point_error_mm == 0:
        return bound
    linear = np.asarray(affine, np.float64)[:3, :3]
    # steps[r]: from row r to r + 1 (across two streamlines at their
    # boundary; those terms are left out below).
    steps = np.diff(points_vox.astype(np.float64), axis=0) @ linear.T
    norms = np.linalg.norm(steps, axis=1, keepdims=True)
    units = np.divide(steps, norms, out=np.zeros_like(steps),
                      where=norms > 0)
    # turns[r]: |u_(r+1) - u_r|, at row r + 1.
    turns = np.linalg.norm(np.diff(units, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(turns)])
    # Inner rows first + 1 .. first + n - 2: turns first .. first + n - 3.
    first = np.asarray(first_rows, np.int64)
    last = first + np.maximum(np.asarray(lengths, np.int64) - 2, 0)
    total_turns = cumulative[np.minimum(last, len(turns))] \
        - cumulative[np.minimum(first, len(turns))]
    bound = point_error_mm * (2 + total_turns)
    return np.where(np.asarray(lengths) > 1, bound, 0.0)


def point_rounding_mm(points_vox, affine):
    """``e`` of :func:`length_rounding_bound_mm`: a bound (mm) on the
    rounding error of each point of ``points_vox``; 0 for integer points or
    fewer than 2."""
    if (not np.issubdtype(points_vox.dtype, np.floating)
            or len(points_vox) < 2):
        return 0.0
    linear = np.asarray(affine, np.float64)[:3, :3]
    magnitude_mm = (np.abs(linear).sum(axis=1).max()
                    * np.abs(points_vox).max()
                    + np.abs(np.asarray(affine)[:3, 3]).max())
    # float64 points have been float32 too: in our HDF5, in dipy's
    # StatefulTractogram, and in the files (a .trx read back as float64).
    eps = max(np.finfo(points_vox.dtype).eps, np.finfo(np.float32).eps)
    return float(np.sqrt(3) * _NB_POINT_ROUNDINGS / 2 * eps * magnitude_mm)


def counts_within_rounding(count_points, points_vox, first_rows, lengths,
                            length_mm, affine):
    """``count_points(length_mm, length_rounding_bound_mm(...))``, with the
    exact bound computed only where it can change a count.

    A turn ``|u_(k-1) - u_k|`` is at most 2, so ``e (2 + 2 (n - 2))``
    bounds every streamline's bound; counts are non-increasing in the
    bound, so where that coarse bound and 0 give the same count, so does
    the exact bound (in practice, all but the few streamlines within a
    hair of a whole number of steps).
    """
    point_error_mm = point_rounding_mm(points_vox, affine)
    coarse = point_error_mm * (2 + 2 * np.maximum(lengths - 2, 0))
    counts = np.asarray(count_points(length_mm, coarse))
    unsure = np.flatnonzero(counts != count_points(length_mm, 0.0))
    if unsure.size:
        rows = ranges_to_indices(first_rows[unsure], lengths[unsure])
        counts = counts.copy()
        counts[unsure] = count_points(
            length_mm[unsure], length_rounding_bound_mm(
                points_vox[rows], offsets_from_lengths(lengths[unsure]),
                lengths[unsure], affine))
    return counts
