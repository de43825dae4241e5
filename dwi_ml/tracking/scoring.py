"""Scores of a tracked tractogram against the subject's reference tractogram.

:func:`score_tractogram` returns a flat dict of floats, for the scoring
script and for validation by tracking during training. Every function here
takes packed streamlines (nibabel ``ArraySequence``: one ``(P, 3)`` array,
``offsets`` and ``lengths``) in voxel space with a corner origin (dipy
``Space.VOX``, ``Origin.TRACKVIS``), and works on all points at once.

Distances to the reference are point-to-point distances to the reference
streamlines resampled to steps of at most ``max_step_vox`` (0.5 voxel by
default), which approximate the distances to the reference curves: a point
at distance ``d`` from a curve sampled every ``h`` is at most
``sqrt(d**2 + (h / 2)**2)`` from its nearest sample, 1.03 voxels for
``d = 1`` and ``h = 0.5``.

Points
    ``points_within_1_vox`` and ``points_within_2_vox`` (one key per
    ``distances_vox``): the share of tracked points within that distance
    (voxels, <=) of a reference point. ``points_aligned``: the share of
    tracked points whose nearest reference point is within
    ``direction_max_distance_vox`` and whose direction makes at most
    ``max_angle_deg`` with that reference point's direction, whatever the
    sign. The direction at a point is the step to the next point (the step
    from the previous one at the last point), measured in mm.

Bundles
    Tractometer-style scores when the reference has bundle labels, see
    :mod:`dwi_ml.tracking.bundle_scoring`.

Lengths
    ``mean_length_mm`` and ``median_length_mm`` of the tracked streamlines.

Counts
    ``nb_tracked``, ``nb_reference`` (streamlines) and ``nb_tracked_points``.

Points off the grid
    Points must lie on the grid: in ``[0, shape[d]]`` along each axis ``d``
    (dipy's bounding box). A reference point outside is refused (the
    reference defines the bundles: it is on another grid or in another
    space); tracked points outside are scored (as far from the reference,
    in no voxel) with one warning giving their count.
"""
import logging
import numbers

import numpy as np
from nibabel.streamlines import ArraySequence

from dwi_ml.data.packed import (
    compact,
    lengths_mm,
    make_array_sequence,
    offsets_from_lengths,
    packed_arrays,
)
from dwi_ml.data.processing.length_rounding import point_rounding_mm
from dwi_ml.data.processing.resampling import STEP_COUNT_TOLERANCE
from dwi_ml.data.processing.space import check_affine, check_grid_affine
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.bundle_scoring import score_bundles
from dwi_ml.tracking.voxel_masks import point_voxel_indices, voxel_set

DEFAULT_DISTANCES_VOX = (1.0, 2.0)
DEFAULT_MAX_ANGLE_DEG = 30.0
DEFAULT_DIRECTION_MAX_DISTANCE_VOX = 2.0
DEFAULT_MIN_SHARE_IN_VOLUME = 0.5
DEFAULT_MAX_STEP_VOX = 0.5
_QUERY_BLOCK_VOX = 4.0

logger = logging.getLogger(__name__)


class DenseReference:
    """A reference tractogram densified once, with its k-d tree.

    Scoring several tractograms against the same reference (tracking
    validation, epoch after epoch) then resamples it, builds the tree and
    finds its voxels once.

    Parameters
    ----------
    reference : nibabel ArraySequence (or list of (n, 3) arrays)
        Voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        The grid's voxel-to-RAS mm affine.
    max_step_vox : float
        See :func:`densify`.

    Attributes
    ----------
    streamlines : nibabel ArraySequence
        The densified reference, compact, voxel space, corner origin.
    nb_streamlines : int
    """

    def __init__(self, reference, affine, max_step_vox=DEFAULT_MAX_STEP_VOX):
        self.affine = check_grid_affine(affine, "DenseReference")
        self.max_step_vox = max_step_vox
        self.nb_streamlines = len(reference)
        reference = _compact_points(reference, "reference")
        points = packed_arrays(reference)[0]
        # Bounding box of the points, to check them against a grid.
        self.bounds = (np.stack([points.min(axis=0), points.max(axis=0)])
                       if len(points) else None)
        self.streamlines = densify(reference, self.affine, max_step_vox)
        self._tree = None
        self._voxel_sets = {}

    def voxel_set(self, shape):
        """Sorted flat indices of the voxels (grid ``shape``) that the dense
        points visit (:func:`dwi_ml.tracking.voxel_masks.voxel_set`),
        computed at the first call for each shape."""
        shape = tuple(int(size) for size in shape)
        voxels = self._voxel_sets.get(shape)
        if voxels is None:
            voxels = voxel_set(point_voxel_indices(
                packed_arrays(self.streamlines)[0], shape))
            self._voxel_sets[shape] = voxels
        return voxels

    @property
    def tree(self):
        """scipy ``cKDTree`` of the dense points, built at the first query."""
        if self._tree is None:
            self._tree = _kd_tree(packed_arrays(self.streamlines)[0])
        return self._tree

    def check_on_grid(self, shape):
        """Refuse a reference with points outside the grid ``shape``:
        ``[0, shape[d]]`` along each axis (its bundles would lose them)."""
        if self.bounds is None or (np.all(self.bounds[0] >= 0) and np.all(
                self.bounds[1] <= np.asarray(shape))):
            return
        low, high = (tuple(round(float(x), 2) for x in row)
                     for row in self.bounds)
        raise DwiMLUserError(
            f"score_tractogram argument reference: expected points on the "
            f"grid of shape {tuple(shape)} (voxel space, corner origin: "
            f"[0, size] along each axis), found points from {low} to "
            f"{high}; is it in the space of this grid?")

    def check_matches(self, affine, max_step_vox):
        """Refuse to score on another grid or resampling than its own."""
        if max_step_vox != self.max_step_vox or not np.array_equal(
                check_affine(affine), self.affine):
            raise ValueError(
                f"DenseReference: built for max_step_vox {self.max_step_vox}"
                f" and its affine, asked for {max_step_vox} or another "
                f"affine.")


def score_tractogram(tracked, reference, shape, affine, reference_labels=None,
                     distances_vox=DEFAULT_DISTANCES_VOX,
                     max_angle_deg=DEFAULT_MAX_ANGLE_DEG,
                     direction_max_distance_vox=DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
                     min_share_in_volume=DEFAULT_MIN_SHARE_IN_VOLUME,
                     max_step_vox=DEFAULT_MAX_STEP_VOX,
                     tracked_name="score_tractogram"):
    """Score tracked streamlines against the reference streamlines.

    Parameters
    ----------
    tracked, reference : nibabel ArraySequence (or list of (n, 3) arrays)
        Packed streamlines in voxel space, corner origin, on the grid of
        ``shape`` and ``affine``. ``reference`` may instead be a
        :class:`DenseReference` built with the same affine and
        ``max_step_vox``.
    shape : tuple of 3 int
        Grid size in voxels (the grid of voxel distances and voxel masks).
    affine : np.ndarray, shape (4, 4)
        The grid's voxel-to-RAS mm affine (lengths, angles and resampling
        are in mm).
    reference_labels : np.ndarray, shape (len(reference),), int, optional
        Bundle label of each reference streamline. Without it, no bundle
        scores.
    distances_vox : tuple of float
        One ``points_within_{d}_vox`` key per distance (voxels).
    max_angle_deg : float
        Largest angle (degrees) of an aligned point.
    direction_max_distance_vox : float
        Farthest nearest reference point (voxels) of an aligned point.
    min_share_in_volume : float
        Share of a tracked streamline's points that must lie in a bundle's
        volume for it to be a valid connection of that bundle, in [0, 1].
    max_step_vox : float
        Both tractograms are resampled to steps of at most this (voxels)
        for the distances to the reference and for the voxel masks.
    tracked_name : str
        What the warning about tracked points off the grid begins with,
        to name them (the scoring script: ``"tractogram 'FILE'"``).

    Returns
    -------
    dict of str to float
        The keys of the module docstring, and those of
        :func:`dwi_ml.tracking.bundle_scoring.score_bundles` when
        ``reference_labels`` is given.
    """
    affine = check_grid_affine(affine, "score_tractogram")
    shape = check_grid_shape(shape, "score_tractogram")
    check_scoring_numbers(distances_vox, max_angle_deg,
                          direction_max_distance_vox, min_share_in_volume,
                          max_step_vox)
    if isinstance(reference, DenseReference):
        reference.check_matches(affine, max_step_vox)
    else:
        reference = DenseReference(reference, affine, max_step_vox)
    reference.check_on_grid(shape)
    if reference_labels is not None and \
            len(reference_labels) != reference.nb_streamlines:
        raise DwiMLUserError(
            f"reference_labels: expected one label per reference streamline "
            f"({reference.nb_streamlines}), found {len(reference_labels)}.")

    tracked = _compact_points(tracked, "tracked")
    _warn_points_off_grid(packed_arrays(tracked)[0], shape, tracked_name)
    dense_reference = reference.streamlines
    scores = {"nb_tracked": float(len(tracked)),
              "nb_reference": float(reference.nb_streamlines),
              "nb_tracked_points": float(len(packed_arrays(tracked)[0]))}
    scores.update(score_points(
        tracked, dense_reference, affine, distances_vox, max_angle_deg,
        direction_max_distance_vox, reference.tree))
    if reference_labels is not None:
        scores.update(score_bundles(
            densify(tracked, affine, max_step_vox), dense_reference,
            reference_labels, shape, min_share_in_volume))
    scores.update(score_lengths(tracked, affine))
    return scores


def _compact_points(streamlines, name):
    """Compact copy whose data is (P, 3) even without streamlines; refuses
    points that are not 3-D or not finite (argument ``name``)."""
    if not isinstance(streamlines, ArraySequence):
        streamlines = ArraySequence(streamlines)
    data, offsets, lengths = compact(streamlines)
    data = np.asarray(data)
    if data.size and (data.ndim != 2 or data.shape[1] != 3):
        raise DwiMLUserError(
            f"score_tractogram argument {name}: expected streamlines of "
            f"(n, 3) points, found points of shape {data.shape[1:]} "
            f"(coordinates per point).")
    data = np.reshape(data, (-1, 3))
    bad = ~np.all(np.isfinite(data), axis=1)
    if bad.any():
        raise DwiMLUserError(
            f"score_tractogram argument {name}: expected finite points, "
            f"found {np.count_nonzero(bad)} with NaN or infinite "
            f"coordinates.")
    return make_array_sequence(data, offsets, lengths)


def _warn_points_off_grid(points, shape, tracked_name):
    """One warning with the count of tracked points off the grid (see the
    module docstring), beginning with ``tracked_name``."""
    outside = np.count_nonzero(np.any((points < 0) | (points > shape),
                                      axis=1))
    if outside:
        logger.warning(
            "%s: %d of the %d tracked points lie outside the grid of shape "
            "%s (voxel space, corner origin); they count as far from the "
            "reference and in no voxel. Is the tractogram in the space of "
            "this grid?", tracked_name, outside, len(points), shape)


def check_grid_shape(shape, owner):
    """Return ``shape`` as 3 ints >= 1, or raise a one-line user error."""
    values = tuple(np.atleast_1d(np.asarray(shape, dtype=object)))
    if len(values) != 3 or not all(
            isinstance(size, numbers.Integral) and not isinstance(size, bool)
            and size >= 1 for size in values):
        raise DwiMLUserError(
            f"{owner} argument shape: expected 3 integers >= 1 (the grid's "
            f"size in voxels), found {shape!r}.")
    return tuple(int(size) for size in values)


def check_scoring_numbers(distances_vox, max_angle_deg,
                          direction_max_distance_vox, min_share_in_volume,
                          max_step_vox, option_names=None):
    """Raise a user error for a threshold of :func:`score_tractogram` out of
    its range, naming its argument, or its option in ``option_names``
    (argument name -> e.g. '--max_angle') when a script gave it."""
    checks = [
        ("distances_vox", distances_vox, len(distances_vox) > 0 and
         all(d > 0 for d in distances_vox), "distances > 0 (voxels)"),
        ("max_angle_deg", max_angle_deg, 0 <= max_angle_deg <= 90,
         "an angle in [0, 90] degrees"),
        ("direction_max_distance_vox", direction_max_distance_vox,
         direction_max_distance_vox > 0, "a distance > 0 (voxels)"),
        ("min_share_in_volume", min_share_in_volume,
         0 <= min_share_in_volume <= 1, "a share in [0, 1]"),
        ("max_step_vox", max_step_vox, max_step_vox > 0,
         "a step > 0 (voxels)"),
    ]
    for name, value, valid, expected in checks:
        if not valid:
            name = (option_names or {}).get(name, name)
            raise DwiMLUserError(
                f"argument {name}: expected {expected}, found {value!r}.")


def densify(streamlines_vox, affine, max_step_vox=DEFAULT_MAX_STEP_VOX):
    """Subdivide streamlines into steps of at most ``max_step_vox`` voxels.

    The step in mm is ``max_step_vox`` times the smallest singular value of
    the affine's linear part, so no step is longer than ``max_step_vox`` in
    voxel units, along any direction, even with anisotropic or oblique
    voxels. Every original point is kept, and each segment is cut into
    ``ceil(length / step)`` equal parts (the length less its rounding
    error, so that files of every format give the same parts): a point of
    a streamline is thus its own nearest point in the densified one
    (resampling the whole curve at equal steps moved the points, so that
    at a crossing another streamline could be nearer, and a tractogram
    scored against itself was not aligned everywhere).

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
    max_step_vox : float

    Returns
    -------
    nibabel ArraySequence
        Compact, voxel space, corner origin, float32.
    """
    linear = check_affine(affine)[:3, :3]
    step_mm = max_step_vox * np.linalg.svd(linear, compute_uv=False).min()
    data, offsets, lengths = compact(streamlines_vox)
    points = np.asarray(data, dtype=np.float64).reshape(-1, 3)
    # Segment i joins points i and i + 1 of one streamline.
    is_last = np.zeros(len(points), dtype=bool)
    is_last[(offsets + lengths - 1)[lengths > 0]] = True
    starts = np.flatnonzero(~is_last)
    vectors = points[starts + 1] - points[starts]
    # A segment of exactly k steps, read from any file format (points
    # rounded differently), gets k parts: its length less its rounding.
    length_atol_mm = min(2 * point_rounding_mm(data, affine), step_mm / 4)
    nb_parts = np.maximum(np.ceil(
        (np.linalg.norm(vectors @ linear.T, axis=1) - length_atol_mm)
        / step_mm - STEP_COUNT_TOLERANCE), 1).astype(np.int64)
    # Each point gives itself, then its segment's inner points.
    nb_rows = np.ones(len(points), dtype=np.int64)
    nb_rows[starts] = nb_parts
    steps = np.zeros((len(points), 3))
    steps[starts] = vectors / nb_parts[:, None]
    owner = np.repeat(np.arange(len(points)), nb_rows)
    ends = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(nb_rows, out=ends[1:])
    part = np.arange(len(owner)) - ends[owner]
    dense = points[owner] + part[:, None] * steps[owner]
    new_lengths = ends[offsets + lengths] - ends[offsets]
    return make_array_sequence(dense.astype(np.float32),
                               offsets_from_lengths(new_lengths), new_lengths)


def point_directions_mm(streamlines_vox, affine, rows=None):
    """Direction (mm, not normalised) at points of compact streamlines.

    A point's direction is the step to the next point; the last point takes
    the step that reaches it. Streamlines of one point get zeros.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Compact (offsets == cumsum of lengths), voxel space.
    affine : np.ndarray, shape (4, 4)
    rows : np.ndarray of int, optional
        Rows of the points to give (default: all), so that a few points of
        a large tractogram cost only their own work.

    Returns
    -------
    np.ndarray, shape (len(rows), 3), float64
    """
    data, offsets, lengths = packed_arrays(streamlines_vox)
    data = data.astype(np.float64, copy=False)
    rows = np.arange(len(data)) if rows is None \
        else np.asarray(rows, dtype=np.int64)
    # Offsets are sorted: the last one <= row is the row's streamline (an
    # empty streamline shares its offset with the next one).
    owners = np.searchsorted(offsets, rows, side="right") - 1
    first_rows = offsets[owners]
    last_rows = first_rows + lengths[owners] - 1
    is_last = rows == last_rows
    step_starts = np.where(is_last, np.maximum(rows - 1, first_rows), rows)
    step_ends = np.where(is_last, rows, rows + 1)
    return (data[step_ends] - data[step_starts]) @ \
        check_affine(affine)[:3, :3].T


def score_points(tracked, dense_reference, affine,
                 distances_vox=DEFAULT_DISTANCES_VOX,
                 max_angle_deg=DEFAULT_MAX_ANGLE_DEG,
                 direction_max_distance_vox=DEFAULT_DIRECTION_MAX_DISTANCE_VOX,
                 reference_tree=None):
    """Shares of tracked points near, and aligned with, the reference.

    Parameters
    ----------
    tracked : nibabel ArraySequence
        Compact, voxel space, corner origin: the points as tracked.
    dense_reference : nibabel ArraySequence
        Compact reference streamlines, voxel space, corner origin, already
        resampled densely (see :func:`densify`).
    affine : np.ndarray, shape (4, 4)
        Directions are compared in mm.
    distances_vox, max_angle_deg, direction_max_distance_vox
        See :func:`score_tractogram`.
    reference_tree : scipy.spatial.cKDTree, optional
        Of the dense reference's points (:attr:`DenseReference.tree`);
        built here when None.

    Returns
    -------
    dict
        ``points_within_{d:g}_vox`` for each distance, and
        ``points_aligned``; 0 when there are no tracked points.
    """
    tracked_points = packed_arrays(tracked)[0]
    reference_points = packed_arrays(dense_reference)[0]
    nb_points = len(tracked_points)
    keys = [f"points_within_{d:g}_vox" for d in distances_vox]
    if nb_points == 0 or len(reference_points) == 0:
        return dict.fromkeys(keys + ["points_aligned"], 0.0)

    if reference_tree is None:
        reference_tree = _kd_tree(reference_points)
    distances, nearest = _nearest_reference_points(
        reference_tree, tracked_points,
        max(max(distances_vox), direction_max_distance_vox))
    scores = {key: float(np.count_nonzero(distances <= d)) / nb_points
              for key, d in zip(keys, distances_vox)}

    near = np.flatnonzero(distances <= direction_max_distance_vox)
    tracked_dirs = point_directions_mm(tracked, affine, near)
    reference_dirs = point_directions_mm(dense_reference, affine,
                                         nearest[near])
    norms = (np.linalg.norm(tracked_dirs, axis=1)
             * np.linalg.norm(reference_dirs, axis=1))
    dots = np.abs(np.sum(tracked_dirs * reference_dirs, axis=1))
    aligned = (norms > 0) & (dots >= np.cos(np.radians(max_angle_deg)) * norms)
    scores["points_aligned"] = float(np.count_nonzero(aligned)) / nb_points
    return scores


def _kd_tree(points):
    """scipy ``cKDTree`` of ``points`` (float64).

    scipy.spatial is imported here, not with this module: every training
    run imports this module (for tracking validation), and scipy.spatial
    held ~28 MB of RSS and took 0.14 s to import in runs without it.
    """
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(points, dtype=np.float64))


def _nearest_reference_points(tree, points, max_distance):
    """Distance (inf beyond ``max_distance``) and row of the nearest
    reference point (in the k-d ``tree``) of each point; all in the same
    (voxel) units."""
    points = np.asarray(points, dtype=np.float64)
    # Queried block by block (4 voxels wide), neighbouring queries visit the
    # same tree nodes: twice as fast as in streamline order.
    blocks = np.floor(points / _QUERY_BLOCK_VOX).astype(np.int64)
    order = np.lexsort(blocks.T[::-1])
    # The bound only prunes the search; the margin keeps the points exactly
    # at a threshold, which the callers compare with <=.
    sorted_distances, sorted_nearest = tree.query(
        points[order], k=1,
        distance_upper_bound=max_distance * (1 + 1e-6) + 1e-9)
    distances = np.empty_like(sorted_distances)
    nearest = np.empty_like(sorted_nearest)
    distances[order] = sorted_distances
    nearest[order] = sorted_nearest
    return distances, nearest


def score_lengths(streamlines_vox, affine):
    """Mean and median length (mm) of streamlines; 0 for none.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space (any origin).
    affine : np.ndarray, shape (4, 4)

    Returns
    -------
    dict
        ``mean_length_mm``, ``median_length_mm``.
    """
    if len(streamlines_vox) == 0:
        return {"mean_length_mm": 0.0, "median_length_mm": 0.0}
    data, offsets, lengths = packed_arrays(streamlines_vox)
    length_mm = lengths_mm(data.astype(np.float64, copy=False), offsets,
                           lengths, check_affine(affine)).astype(np.float64)
    return {"mean_length_mm": float(length_mm.mean()),
            "median_length_mm": float(np.median(length_mm))}
