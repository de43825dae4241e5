"""The streamline format (step size, number of points or compression) and
the one resampler of dwi_ml, used by HDF5 creation, the batch loader, the
models and the scripts.

Streamlines come and go in voxel space with a corner origin (see
``space.py``), but step sizes and tolerances are in mm: with anisotropic
voxels, one voxel is not one mm and not the same length along each axis.
Arc lengths are measured in RAS mm. An affine map keeps straight segments
straight and ratios along them, so the point at a fraction f of a segment's
length in mm is at the fraction f of that segment in voxels: new points are
interpolated between the voxel-space points themselves, on the original
polyline, with no conversion back from mm.

The step-size convention is the reference dwi_ml's (scilpy's
``resample_streamlines_step_size``): a streamline of ``L`` mm gets
``max(ceil(L / s), 2)`` points, equally spaced along its arc length, so
steps are ``L / (n - 1)`` mm, close to ``s`` but possibly a little longer.
``L`` is taken less its float32 rounding error (see
:mod:`dwi_ml.data.processing.length_rounding`): a streamline of exactly ``k``
steps of ``s`` gets ``k`` points whether it was read from a .trk, .tck or .trx
file. HDF5 creation and the loader use this same function, and the loader does
not resample streamlines already stored in the model's format: a streamline
stored at ``s`` mm reaches the model with exactly its stored points.

Resampling moves points by linear interpolation along the arc length in mm,
vectorised over all points of all streamlines (one ``searchsorted``), which
is what dipy's ``set_number_of_points`` does one streamline at a time.
"""
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from dipy.tracking.streamlinespeed import compress_streamlines

from dwi_ml.data.packed import (
    compact,
    cumulative_lengths_mm,
    make_array_sequence,
    offsets_from_lengths,
    packed_arrays,
)
from dwi_ml.data.processing.length_rounding import counts_within_rounding
from dwi_ml.data.processing.space import (
    points_rasmm_to_vox_corner,
    points_vox_corner_to_rasmm,
)
from dwi_ml.io_utils.arg_checks import (
    check_at_most_one,
    check_int,
    check_positive_float,
)

# ceil(L / s) would give one extra point to a streamline of exactly k steps
# whose length picked up rounding noise: round such noise away first (see
# length_rounding_bound_mm for the noise of float32 points).
STEP_COUNT_TOLERANCE = 1e-6
# dipy's default: a compressed segment never exceeds 10 mm.
COMPRESS_MAX_SEGMENT_MM = 10.0


@dataclass(frozen=True)
class StreamlineFormat:
    """How streamlines are resampled: at most one of three options.

    Validated once, here; HDF5 creation, the loader, the models and the
    scripts share this object.

    Attributes
    ----------
    step_size : float or None
        Step in mm; see the module docstring for the number of points.
    nb_points : int or None
        Number of points of every streamline (>= 2), equally spaced in mm.
    compress : float or None
        dipy's compression tolerance in mm (segments up to 10 mm).
    """

    step_size: Optional[float] = None
    nb_points: Optional[int] = None
    compress: Optional[float] = None

    def __post_init__(self):
        check_at_most_one({"step_size": self.step_size,
                           "nb_points": self.nb_points,
                           "compress": self.compress})
        # Frozen: normalise the types through object.__setattr__.
        if self.step_size is not None:
            object.__setattr__(self, "step_size", check_positive_float(
                "step_size", self.step_size))
        if self.nb_points is not None:
            object.__setattr__(self, "nb_points", check_int(
                "nb_points", self.nb_points, 2))
        if self.compress is not None:
            object.__setattr__(self, "compress", check_positive_float(
                "compress", self.compress))

    @property
    def is_set(self):
        """False when streamlines are used as they are."""
        # Not through asdict (a deep copy): the loader asks once per batch.
        return not (self.step_size is None and self.nb_points is None
                    and self.compress is None)

    def as_dict(self):
        """``{'step_size', 'nb_points', 'compress'}``, JSON-able."""
        return asdict(self)

    def apply(self, streamlines_vox, affine):
        """Streamlines in this format (the input itself when unset).

        Parameters
        ----------
        streamlines_vox : nibabel ArraySequence
            Voxel space, corner origin.
        affine : np.ndarray, shape (4, 4)
            nibabel voxel-to-RAS mm affine (steps are in mm).
        """
        if self.step_size is not None:
            return resample_to_step_size(streamlines_vox, affine,
                                         self.step_size)
        if self.nb_points is not None:
            return resample_to_nb_points(streamlines_vox, affine,
                                         self.nb_points)
        if self.compress is not None:
            return compress(streamlines_vox, affine, self.compress)
        return streamlines_vox


def nb_points_for_step_size(lengths_in_mm, step_size_mm, nb_extra_points=0,
                            length_atol_mm=0.0):
    """Points per streamline for a step size: ``max(ceil(L / s) + extra, 2)``.

    Parameters
    ----------
    lengths_in_mm : np.ndarray, shape (N,)
    step_size_mm : float
    nb_extra_points : int
        0: the reference's convention; 1: no step longer than ``s``.
    length_atol_mm : float or np.ndarray, shape (N,)
        Bound on the rounding error of each length (see
        :mod:`dwi_ml.data.processing.length_rounding`): ``ceil((L - atol) /
        s)`` is used, so that a streamline of exactly ``k`` steps gets the same
        count from a .trk, .tck or .trx file, whatever the sign of its noise. A
        streamline less than ``atol`` longer than ``k s`` thus gets steps up to
        ``atol / k`` mm longer than ``s``. Capped at ``s / 4``.

    Returns
    -------
    np.ndarray, shape (N,), int64
    """
    # Capped so that a count drops by one step at most.
    length_atol_mm = np.minimum(length_atol_mm, step_size_mm / 4)
    nb_steps = np.ceil((np.asarray(lengths_in_mm) - length_atol_mm)
                       / step_size_mm - STEP_COUNT_TOLERANCE)
    return np.maximum(nb_steps.astype(np.int64) + nb_extra_points, 2)


def resample_to_step_size(streamlines_vox, affine, step_size_mm):
    """Resample streamlines to ``max(ceil(L / s), 2)`` equally spaced points.

    The reference dwi_ml's convention (see the module docstring). Both
    endpoints are kept; a one-point streamline stays as it is.

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
    return _resample_by_length(streamlines_vox, affine, step_size_mm,
                               nb_extra_points=0)


def resample_to_max_step(streamlines_vox, affine, max_step_mm):
    """Densify: ``ceil(L / s) + 1`` equally spaced points, no step over ``s``.

    For measures that need points at most ``s`` mm apart along the curve
    (scoring), not for training data: see :func:`resample_to_step_size`.
    Arguments and result as in :func:`resample_to_step_size`.
    """
    return _resample_by_length(streamlines_vox, affine, max_step_mm,
                               nb_extra_points=1)


def _resample_by_length(streamlines_vox, affine, step_size_mm,
                        nb_extra_points):
    """``nb_points_for_step_size + nb_extra_points`` points per streamline;
    one point for streamlines of length 0 mm."""
    step_size_mm = check_positive_float("step_size_mm", step_size_mm)

    def count_points(length_mm, length_atol_mm):
        counts = nb_points_for_step_size(length_mm, step_size_mm,
                                         nb_extra_points, length_atol_mm)
        return np.where(length_mm > 0, counts, 1)
    return _resample(streamlines_vox, affine, count_points, length_atol=True)


def resample_to_nb_points(streamlines_vox, affine, nb_points):
    """Resample streamlines to a number of points, equally spaced in mm.

    Both endpoints are kept. A streamline of length 0 mm gets copies of its
    point; an empty streamline stays empty.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine. Needed because equal spacing in voxels
        is not equal spacing in mm when voxels are anisotropic.
    nb_points : int, or np.ndarray of shape (N,)
        Number of points of every output streamline (>= 2), or of each one
        (>= 1).

    Returns
    -------
    nibabel ArraySequence
        Compact resampled streamlines in voxel space, corner origin.
    """
    if np.ndim(nb_points) == 0:
        nb_points = check_int("nb_points", nb_points, 2)
    return _resample(streamlines_vox, affine, lambda length_mm: nb_points)


def _resample(streamlines_vox, affine, count_points, length_atol=False):
    """Resample to ``count_points(length_mm)`` points per streamline, or
    to ``count_points(length_mm, length_atol_mm)`` with ``length_atol``
    (see :mod:`dwi_ml.data.processing.length_rounding`).

    The arc lengths (mm) are summed once; they set the counts and place the
    new points. The lengths are those ``lengths_mm`` gives, bit for bit
    (the same sums).
    """
    points_vox, first_rows, lengths = compact(streamlines_vox)
    total_mm = cumulative_lengths_mm(points_vox, first_rows, lengths, affine)
    length_mm = total_mm[first_rows + lengths] - total_mm[first_rows]
    if length_atol:
        counts = counts_within_rounding(count_points, points_vox, first_rows,
                                         lengths, length_mm, affine)
    else:
        counts = count_points(length_mm)
    nb_new_points = np.where(lengths > 0, counts, 0).astype(np.int64)
    rank = (np.arange(nb_new_points.sum())
            - np.repeat(offsets_from_lengths(nb_new_points), nb_new_points))
    nb_steps = np.repeat(np.maximum(nb_new_points - 1, 1), nb_new_points)
    arc_lengths = np.repeat(length_mm, nb_new_points) * (rank / nb_steps)
    return _resample_at_arc_lengths(points_vox, lengths, total_mm,
                                    nb_new_points, arc_lengths,
                                    _output_dtype(streamlines_vox))


def compress(streamlines_vox, affine, tolerance_mm,
             max_segment_length_mm=COMPRESS_MAX_SEGMENT_MM):
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
    tolerance_mm = check_positive_float("tolerance_mm", tolerance_mm)
    max_segment_length_mm = check_positive_float("max_segment_length_mm",
                                                 max_segment_length_mm)
    points_mm, lengths = _compact_in_mm(streamlines_vox, affine)
    if len(lengths) == 0:
        return make_array_sequence(np.zeros((0, 3), _output_dtype(streamlines_vox)),
                                   lengths, lengths)
    # dipy's Cython loop takes the whole list; np.split only makes views.
    pieces = np.split(points_mm, offsets_from_lengths(lengths)[1:])
    compressed = compress_streamlines(pieces, tol_error=tolerance_mm,
                                      max_segment_length=max_segment_length_mm)
    new_lengths = np.fromiter(map(len, compressed), dtype=np.int64,
                              count=len(compressed))
    new_points_vox = points_rasmm_to_vox_corner(np.concatenate(compressed), affine)
    return make_array_sequence(
        new_points_vox.astype(_output_dtype(streamlines_vox), copy=False),
        offsets_from_lengths(new_lengths), new_lengths)


def _output_dtype(streamlines):
    dtype = packed_arrays(streamlines)[0].dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def _compact_in_mm(streamlines_vox, affine):
    """Compact float64 RAS mm points (offsets = cumsum) and their lengths."""
    points_vox, _, lengths = compact(streamlines_vox)
    return points_vox_corner_to_rasmm(points_vox, affine), lengths


def _resample_at_arc_lengths(points_vox, lengths, total_mm, nb_new_points,
                             arc_lengths, dtype):
    """Place new points at given arc lengths (mm) along compact streamlines.

    Parameters
    ----------
    points_vox : np.ndarray, shape (P, 3)
        Compact points in voxel space (any origin: the new points are
        interpolated between them, see the module docstring).
    lengths : np.ndarray, shape (N,)
        Number of points of each streamline.
    total_mm : np.ndarray, shape (P + 1,)
        ``packed.cumulative_lengths_mm``: entry k + 1 is row k's arc length
        (mm) from row 0.
    nb_new_points : np.ndarray, shape (N,)
        Number of new points of each streamline.
    arc_lengths : np.ndarray, shape (Q,)
        For every new point, in streamline order, its arc length (mm) from
        its streamline's first point.
    dtype : numpy dtype
        dtype of the returned points.
    """
    # Per-streamline values reach each new point by np.repeat (sequential,
    # faster than a gather by streamline id). Segment k's vector (voxels)
    # and length (mm, a difference of the sums) are computed once per input
    # row, then gathered: the same IEEE operations on the same operands as
    # when the two ends were gathered and subtracted per new point, so the
    # same values, in fewer passes over the (more numerous) new points. A
    # streamline's last row has a length of 0 (its sum does not grow), as
    # had the end-to-itself segment used when a streamline has one point.
    offsets = offsets_from_lengths(lengths)
    lowest = np.repeat(offsets, nb_new_points)
    highest = np.repeat(np.maximum(offsets + lengths - 2, offsets),
                        nb_new_points)
    targets = np.repeat(total_mm[offsets], nb_new_points)
    targets += arc_lengths
    cumulative = total_mm[1:]
    # Arc length is flat across streamline boundaries: clipping to the
    # streamline's own segments resolves ties with its neighbours.
    segment_starts = np.searchsorted(cumulative, targets, side="right")
    segment_starts -= 1
    np.clip(segment_starts, lowest, highest, out=segment_starts)
    del lowest, highest
    row_lengths = np.diff(cumulative, append=cumulative[-1:])
    flat_rows = row_lengths <= 0
    row_lengths[flat_rows] = 1.
    fractions = targets
    fractions -= np.take(cumulative, segment_starts)
    fractions /= np.take(row_lengths, segment_starts)
    np.clip(fractions, 0., 1., out=fractions)
    fractions[np.take(flat_rows, segment_starts)] = 0.
    # (y - x) * f + x, written into the output dtype by the last operation
    # (computed in float64, then rounded once, as astype did). np.take
    # gathers rows ~3x faster than fancy indexing.
    row_vectors = np.zeros(points_vox.shape, dtype=np.float64)
    np.subtract(points_vox[1:], points_vox[:-1], out=row_vectors[:-1],
                dtype=np.float64)
    new_vectors = np.take(row_vectors, segment_starts, axis=0)
    del row_vectors
    new_vectors *= fractions[:, None]
    new_points = np.empty(new_vectors.shape, dtype=dtype)
    np.add(new_vectors, np.take(points_vox, segment_starts, axis=0),
           out=new_points, casting="same_kind")
    return make_array_sequence(new_points, offsets_from_lengths(nb_new_points),
                               nb_new_points)
