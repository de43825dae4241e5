"""Resampling and compression of packed streamlines, measured in mm.

Streamlines come and go in voxel space with a corner origin (see
``space.py``), but step sizes and tolerances are in mm: with anisotropic
voxels, one voxel is not one mm and not the same length along each axis. Every
function here converts to RAS mm, works there, and converts back; affine maps
keep straight segments straight, so the new points lie on the original
polyline.

Both resamplers move points by linear interpolation along the arc length in
mm, vectorised over all points of all streamlines (one ``searchsorted``), which
is what dipy's ``set_number_of_points`` does one streamline at a time.
"""
import numpy as np
from dipy.tracking.streamlinespeed import compress_streamlines

from dwi_ml.data.packed import compact, make_array_sequence
from dwi_ml.data.processing.space import (
    points_rasmm_to_vox_corner,
    points_vox_corner_to_rasmm,
)
from dwi_ml.io_utils.errors import DwiMLUserError

# A remainder shorter than this fraction of a step is not worth its own point:
# the last regular point becomes the endpoint instead of adding a ~0 mm step.
_STEP_REMAINDER_TOLERANCE = 1e-6


def resample_to_step_size(streamlines_vox, affine, step_size_mm):
    """Resample streamlines so that consecutive points are ``step_size_mm`` apart.

    New points sit at arc lengths ``0, s, 2s, ...`` mm from the first point and
    the last point is always the original endpoint, so every step along the
    curve is exactly ``s`` mm except the last one, which is in ``(0, s]``. A
    streamline of length ``L`` mm gets ``ceil(L / s) + 1`` points (one point
    if ``L == 0``). Steps are measured along the polyline; on curved parts the
    straight distance between new points can be slightly less than ``s``.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine of the subject.
    step_size_mm : float
        Step size in mm, > 0.

    Returns
    -------
    nibabel ArraySequence
        Compact resampled streamlines in voxel space, corner origin, with the
        dtype of the input (float32 for integer inputs).
    """
    step_size_mm = _check_positive("step_size_mm", step_size_mm)
    points_mm, lengths = _compact_in_mm(streamlines_vox, affine)
    length_mm = _lengths_mm(points_mm, lengths)
    nb_steps = np.ceil(length_mm / step_size_mm - _STEP_REMAINDER_TOLERANCE)
    nb_new_points = np.where(lengths > 0, nb_steps.astype(np.int64) + 1, 0)
    streamline_ids, rank = _new_point_ranks(nb_new_points)
    arc_lengths = np.minimum(rank * step_size_mm, length_mm[streamline_ids])
    is_last = rank == nb_new_points[streamline_ids] - 1
    arc_lengths[is_last] = length_mm[streamline_ids[is_last]]
    return _resample_at_arc_lengths(points_mm, lengths, nb_new_points,
                                    streamline_ids, arc_lengths, affine,
                                    _output_dtype(streamlines_vox))


def resample_to_nb_points(streamlines_vox, affine, nb_points):
    """Resample every streamline to ``nb_points`` points, equally spaced in mm.

    Both endpoints are kept. A streamline of length 0 mm gets ``nb_points``
    copies of its point; an empty streamline stays empty.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine. Needed because equal spacing in voxels
        is not equal spacing in mm when voxels are anisotropic.
    nb_points : int
        Number of points of every output streamline, >= 2.

    Returns
    -------
    nibabel ArraySequence
        Compact resampled streamlines in voxel space, corner origin.
    """
    if isinstance(nb_points, bool) or not float(nb_points).is_integer() \
            or nb_points < 2:
        raise DwiMLUserError(
            f"nb_points: expected an integer >= 2, found {nb_points!r}.")
    points_mm, lengths = _compact_in_mm(streamlines_vox, affine)
    length_mm = _lengths_mm(points_mm, lengths)
    nb_new_points = np.where(lengths > 0, int(nb_points), 0)
    streamline_ids, rank = _new_point_ranks(nb_new_points)
    arc_lengths = length_mm[streamline_ids] * (rank / (int(nb_points) - 1))
    return _resample_at_arc_lengths(points_mm, lengths, nb_new_points,
                                    streamline_ids, arc_lengths, affine,
                                    _output_dtype(streamlines_vox))


def compress(streamlines_vox, affine, tolerance_mm, max_segment_length_mm=10.):
    """Compress streamlines with dipy's ``compress_streamlines``, in mm.

    Removes points of nearly collinear segments so that every removed point is
    within ``tolerance_mm`` of the compressed streamline; endpoints are kept.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine.
    tolerance_mm : float
        Maximal distance (mm) between a removed point and the result, > 0.
    max_segment_length_mm : float
        No segment of the result is longer than this (mm), as in dipy.

    Returns
    -------
    nibabel ArraySequence
        Compact compressed streamlines in voxel space, corner origin.
    """
    tolerance_mm = _check_positive("tolerance_mm", tolerance_mm)
    max_segment_length_mm = _check_positive("max_segment_length_mm",
                                            max_segment_length_mm)
    points_mm, lengths = _compact_in_mm(streamlines_vox, affine)
    if len(lengths) == 0:
        return make_array_sequence(np.zeros((0, 3), _output_dtype(streamlines_vox)),
                                   lengths, lengths)
    # dipy's Cython loop takes the whole list; np.split only makes views.
    pieces = np.split(points_mm, np.cumsum(lengths[:-1]))
    compressed = compress_streamlines(pieces, tol_error=tolerance_mm,
                                      max_segment_length=max_segment_length_mm)
    new_lengths = np.fromiter(map(len, compressed), dtype=np.int64,
                              count=len(compressed))
    new_points_vox = points_rasmm_to_vox_corner(np.concatenate(compressed), affine)
    return make_array_sequence(
        new_points_vox.astype(_output_dtype(streamlines_vox), copy=False),
        _starts(new_lengths), new_lengths)


def _check_positive(name, value):
    """Return ``value`` as a float, or raise if it is not finite and > 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DwiMLUserError(
            f"{name}: expected a number > 0 (mm), found {value!r}.") from None
    if not np.isfinite(value) or value <= 0:
        raise DwiMLUserError(f"{name}: expected a number > 0 (mm), found {value}.")
    return value


def _output_dtype(streamlines):
    dtype = np.asarray(streamlines._data).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def _starts(lengths):
    """Offsets of compact streamlines: exclusive cumulative sum of lengths."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _compact_in_mm(streamlines_vox, affine):
    """Compact float64 RAS mm points (offsets = cumsum) and their lengths."""
    points_vox, _, lengths = compact(streamlines_vox)
    return points_vox_corner_to_rasmm(points_vox, affine), lengths


def _segment_lengths_mm(points_mm, lengths):
    """Length (mm) of the segment from each point to the next, 0 at boundaries.

    Returns an array of shape (P,): the last point of each streamline (and
    the last row) gets 0, so a cumulative sum never crosses streamlines.
    """
    segment_lengths = np.zeros(len(points_mm))
    segment_lengths[:-1] = np.linalg.norm(np.diff(points_mm, axis=0), axis=1)
    last_rows = (_starts(lengths) + lengths - 1)[lengths > 0]
    segment_lengths[last_rows] = 0.
    return segment_lengths


def _lengths_mm(points_mm, lengths):
    """Length in mm of every compact streamline, shape (N,)."""
    ids = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(ids, weights=_segment_lengths_mm(points_mm, lengths),
                       minlength=len(lengths))


def _new_point_ranks(nb_new_points):
    """Streamline id and rank within its streamline of every new point."""
    streamline_ids = np.repeat(np.arange(len(nb_new_points)), nb_new_points)
    rank = np.arange(len(streamline_ids)) - _starts(nb_new_points)[streamline_ids]
    return streamline_ids, rank


def _resample_at_arc_lengths(points_mm, lengths, nb_new_points, streamline_ids,
                             arc_lengths, affine, dtype):
    """Place new points at given arc lengths (mm) along compact streamlines.

    Parameters
    ----------
    points_mm : np.ndarray, shape (P, 3)
        Compact points in RAS mm.
    lengths : np.ndarray, shape (N,)
        Number of points of each streamline.
    nb_new_points : np.ndarray, shape (N,)
        Number of new points of each streamline.
    streamline_ids, arc_lengths : np.ndarray, shape (Q,)
        For every new point, its streamline and its arc length (mm) from that
        streamline's first point.
    affine : np.ndarray, shape (4, 4)
        Used to convert the result back to voxel space, corner origin.
    dtype : numpy dtype
        dtype of the returned points.
    """
    cumulative = np.cumsum(_segment_lengths_mm(points_mm, lengths))
    cumulative = np.concatenate(([0.], cumulative[:-1]))
    first_rows = _starts(lengths)[streamline_ids]
    last_rows = first_rows + lengths[streamline_ids] - 1
    targets = cumulative[first_rows] + arc_lengths
    # Arc length is flat across streamline boundaries: clipping to the
    # streamline's own segments resolves ties with its neighbours.
    segment_starts = np.searchsorted(cumulative, targets, side="right") - 1
    segment_starts = np.clip(segment_starts, first_rows,
                             np.maximum(last_rows - 1, first_rows))
    segment_ends = np.minimum(segment_starts + 1, last_rows)
    segment_lengths = cumulative[segment_ends] - cumulative[segment_starts]
    safe_lengths = np.where(segment_lengths > 0, segment_lengths, 1.)
    fractions = np.clip((targets - cumulative[segment_starts]) / safe_lengths, 0., 1.)
    fractions[segment_lengths <= 0] = 0.
    new_points_mm = points_mm[segment_starts] + fractions[:, None] * (
        points_mm[segment_ends] - points_mm[segment_starts])
    new_points_vox = points_rasmm_to_vox_corner(new_points_mm, affine)
    return make_array_sequence(new_points_vox.astype(dtype, copy=False),
                               _starts(nb_new_points), nb_new_points)
