"""Data augmentation on packed streamlines: splitting, reversal, noise.

All functions take packed streamlines in voxel space with a corner origin
(dipy ``Space.VOX`` + ``Origin.TRACKVIS``), a ``numpy.random.Generator`` for
randomness (never the global state), and are vectorised over all points.
"""
import functools

import numpy as np

from dwi_ml.data.packed import (
    make_array_sequence,
    offsets_from_lengths,
    packed_arrays,
    ranges_to_indices,
)
from dwi_ml.data.processing.space import vectors_rasmm_to_vox
from dwi_ml.io_utils.errors import DwiMLUserError

# Noise is a Gaussian truncated at this many standard deviations.
NOISE_TRUNCATION_NB_SIGMAS = 2.


def count_from_ratio(ratio, nb_items, name="ratio"):
    """Number of items a ratio selects: ``floor(ratio * nb_items + 0.5)``.

    That is ``ratio * nb_items`` rounded to the nearest integer, halves
    rounded up (0.5 of 3 items is 2), so the count is exact and reproducible.

    Raises
    ------
    DwiMLUserError
        If ``ratio`` is not in [0, 1]; ``name`` names the argument.
    """
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise DwiMLUserError(
            f"{name}: expected a number in [0, 1], found {ratio!r}.") from None
    if not 0. <= ratio <= 1.:
        raise DwiMLUserError(f"{name}: expected a number in [0, 1], found {ratio}.")
    return int(np.floor(ratio * nb_items + 0.5))


def split_streamlines(streamlines, split_ratio, rng, min_nb_points=3):
    """Cut a ratio of the streamlines in two at a random point, without copying.

    A streamline is *eligible* when it has at least ``2 * min_nb_points - 1``
    points. Exactly ``count_from_ratio(split_ratio, nb_eligible)`` eligible
    streamlines, chosen uniformly without replacement (:func:`choose`), are
    cut at a point index ``c`` drawn uniformly in
    ``[min_nb_points - 1, n - min_nb_points]`` (:func:`uniform_integers`).
    The two pieces are ``points[:c + 1]`` and ``points[c:]``: they SHARE the cut
    point, so no segment (and no training direction) is lost, each piece has
    at least ``min_nb_points`` points, and concatenating the first piece with
    the second minus its first point gives back the original streamline.
    Streamlines too short to split, and those not chosen, are kept whole:
    splitting never drops a streamline.

    The result is zero-copy: pieces are new (offset, length) pairs into the
    SAME data array. The first piece of a split streamline replaces it in the
    output order and the second piece follows it directly.

    Parameters
    ----------
    streamlines : nibabel ArraySequence
        Packed streamlines (any space: only point indices are used).
    split_ratio : float
        Ratio in [0, 1] of the eligible streamlines to split.
    rng : numpy.random.Generator
        Source of randomness.
    min_nb_points : int
        Minimal number of points of each piece, >= 2.

    Returns
    -------
    new_streamlines : nibabel ArraySequence
        Sharing ``streamlines._data``; ``N + nb_split`` streamlines.
    source_ids : np.ndarray of int64, shape (N + nb_split,)
        Index in the input of the streamline each output streamline comes
        from (use it to keep subject ids or per-streamline data aligned).
    """
    data, offsets, lengths = packed_arrays(streamlines)
    new_offsets, new_lengths, source_ids = split_ranges(
        offsets, lengths, split_ratio, rng, min_nb_points)
    return (make_array_sequence(data, new_offsets, new_lengths),
            source_ids)


def split_ranges(offsets, lengths, split_ratio, rng, min_nb_points=3):
    """:func:`split_streamlines` on (offsets, lengths) alone.

    Same draws, same pieces; no data array is needed.

    Returns
    -------
    new_offsets, new_lengths, source_ids : np.ndarray of int64,
        shape (N + nb_split,)
    """
    if isinstance(min_nb_points, bool) \
            or not isinstance(min_nb_points, (int, np.integer)) or min_nb_points < 2:
        raise DwiMLUserError(
            f"min_nb_points: expected an integer >= 2, found {min_nb_points!r}.")
    min_nb_points = int(min_nb_points)
    eligible_ids = np.flatnonzero(lengths >= 2 * min_nb_points - 1)
    nb_split = count_from_ratio(split_ratio, len(eligible_ids), "split_ratio")
    split_ids = eligible_ids[choose(len(eligible_ids), nb_split, rng)]
    cut_indices = uniform_integers(
        min_nb_points - 1, lengths[split_ids] - 2 * min_nb_points + 2, rng)

    pieces_per_streamline = np.ones(len(lengths), dtype=np.int64)
    pieces_per_streamline[split_ids] = 2
    source_ids = np.repeat(np.arange(len(lengths)), pieces_per_streamline)
    new_offsets = offsets[source_ids]
    new_lengths = lengths[source_ids]
    # Output position of each split streamline's first piece.
    first_pieces = split_ids + np.arange(nb_split)
    new_lengths[first_pieces] = cut_indices + 1
    new_offsets[first_pieces + 1] += cut_indices
    new_lengths[first_pieces + 1] -= cut_indices
    return new_offsets, new_lengths, source_ids


def open_ended_pieces(source_ids, is_reversed=None):
    """Which streamlines end at a cut, not at an end of their fibre.

    After :func:`split_streamlines` (and :func:`reverse_streamlines`), the
    first piece of a split streamline ends at the cut point and the second
    piece starts there; reversing a piece swaps its ends. A piece whose
    LAST point is the cut has no true end: the fibre goes on there, so the
    model must not learn to stop (EOS) at it.

    Parameters
    ----------
    source_ids : np.ndarray of int64, shape (N,)
        From :func:`split_streamlines`: the two pieces of a split
        streamline are neighbours with the same source.
    is_reversed : np.ndarray of bool, shape (N,), optional
        From :func:`reverse_streamlines`, applied after the split.

    Returns
    -------
    np.ndarray of bool, shape (N,)
        True where the last point is a cut: first pieces not reversed and
        second pieces reversed.
    """
    open_ends = np.zeros(len(source_ids), dtype=bool)
    # Pieces i and i + 1 of one split streamline (slices, not np.append /
    # np.insert: a fifth of the cost, per batch).
    same_as_next = source_ids[1:] == source_ids[:-1]
    if is_reversed is None:
        open_ends[:-1] = same_as_next
        return open_ends
    np.logical_and(same_as_next, ~is_reversed[:-1], out=open_ends[:-1])
    open_ends[1:] |= same_as_next & is_reversed[1:]
    return open_ends


def reverse_streamlines(streamlines, reverse_ratio, rng):
    """Reverse the point order of a ratio of the streamlines.

    Exactly ``count_from_ratio(reverse_ratio, N)`` streamlines, chosen
    uniformly without replacement (:func:`choose`), are reversed; the
    others are unchanged.
    One gather over all points builds the result.

    Parameters
    ----------
    streamlines : nibabel ArraySequence
        Packed streamlines (any space).
    reverse_ratio : float
        Ratio in [0, 1] of the streamlines to reverse.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    new_streamlines : nibabel ArraySequence
        Compact copy (offsets = cumsum of lengths), same order and lengths.
    is_reversed : np.ndarray of bool, shape (N,)
        True for the reversed streamlines.
    """
    data, offsets, lengths = packed_arrays(streamlines)
    rows, is_reversed = reverse_rows(offsets, lengths, reverse_ratio, rng)
    return (make_array_sequence(np.take(data, rows, axis=0),
                                offsets_from_lengths(lengths), lengths),
            is_reversed)


def reverse_rows(offsets, lengths, reverse_ratio, rng):
    """:func:`reverse_streamlines` as row indices, without moving points.

    Same draws. ``data[rows]`` is the compact result of
    :func:`reverse_streamlines` on the streamlines (offsets, lengths) of
    ``data``.

    Returns
    -------
    rows : np.ndarray of int64, shape (sum(lengths),)
    is_reversed : np.ndarray of bool, shape (N,)
    """
    nb_reversed = count_from_ratio(reverse_ratio, len(lengths), "reverse_ratio")
    is_reversed = choose(len(lengths), nb_reversed, rng)
    # A reversed streamline [o, o + n) is the range from o + n - 1 with
    # step -1.
    steps = 1 - 2 * is_reversed.astype(np.int64)
    starts = offsets + (lengths - 1) * is_reversed
    return ranges_to_indices(starts, lengths, steps), is_reversed


def choose(nb_items, nb_chosen, rng):
    """A uniformly random subset of ``nb_chosen`` of ``nb_items`` items.

    One draw, ``rng.permutation(nb_items)``: the items whose value in it is
    below ``nb_chosen``. A third of ``Generator.choice(replace=False)``'s
    cost for a batch's ~100 items, and a mask needs no sort.

    Returns
    -------
    np.ndarray of bool, shape (nb_items,)
        Exactly ``nb_chosen`` True.
    """
    return rng.permutation(nb_items) < nb_chosen


def uniform_integers(low, counts, rng):
    """One integer drawn uniformly in ``[low, low + counts[i])`` for each i.

    ``floor(u * counts)`` from doubles ``u`` in [0, 1) (``rng.random``),
    never ``counts``: uniform up to a relative bias below ``counts / 2**53``,
    at a third of ``Generator.integers``' cost with array bounds.

    Returns
    -------
    np.ndarray of int64, shape (len(counts),)
    """
    values = rng.random(len(counts))
    values *= counts
    return values.astype(np.int64) + low


def add_noise_mm(streamlines_vox, sigma_mm, affine, rng):
    """Add truncated Gaussian noise (sigma in mm) to every point.

    Each RAS mm component of each point's displacement is ``sigma_mm`` times
    a standard normal value truncated to ``[-2, 2]`` by redrawing the values
    outside (a true truncated Gaussian, no pile-up at the bounds), drawn in
    float32. Displacements are then converted to voxel units with the
    inverse of the affine's linear part, so anisotropic voxels move by the
    right number of voxels: with voxel sizes 1x2x4 mm, a point moves by at
    most 2 sigma / (1, 2, 4) voxels along each axis.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    sigma_mm : float
        Standard deviation in mm, >= 0. 0 returns ``streamlines_vox`` itself.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    nibabel ArraySequence
        Same offsets and lengths, new data array (every row of ``_data``,
        covered by a streamline or not, is moved) with the input's dtype.
        Pieces from ``split_streamlines`` that still share a cut point (one
        row of ``_data``) share it after noise; once reversed
        (``reverse_streamlines`` copies every streamline), each piece gets
        its own noise there. Float32 points get ``point + noise`` rounded once
        (both are float32).
    """
    try:
        sigma_mm = float(sigma_mm)
    except (TypeError, ValueError):
        raise DwiMLUserError(
            f"sigma_mm: expected a number >= 0 (mm), found {sigma_mm!r}.") from None
    if not np.isfinite(sigma_mm) or sigma_mm < 0:
        raise DwiMLUserError(
            f"sigma_mm: expected a number >= 0 (mm), found {sigma_mm}.")
    if sigma_mm == 0:
        return streamlines_vox
    data, offsets, lengths = packed_arrays(streamlines_vox)
    noise_vox = draw_noise_vox(len(data), sigma_mm, affine, rng)
    return make_array_sequence(np.add(data, noise_vox, dtype=data.dtype),
                               offsets, lengths)


def draw_noise_vox(nb_rows, sigma_mm, affine, rng):
    """The displacements :func:`add_noise_mm` adds to ``nb_rows`` rows.

    Same draws: ``np.add(data, draw_noise_vox(len(data), ...),
    dtype=data.dtype)`` is ``add_noise_mm``'s data for ``sigma_mm > 0``.

    Float32 draws (numpy's float32 ziggurat, 15 % faster than float64) and
    one float32 product by ``sigma_mm`` times the inverse of the affine's
    linear part (a scalar for isotropic axis-aligned voxels): noise needs
    no more precision than the float32 points it moves.

    Returns
    -------
    np.ndarray, shape (nb_rows, 3), float32, in voxel units.
    """
    return draw_noise_vox_runs(np.array([0, nb_rows]), sigma_mm, [affine],
                               rng)


def draw_noise_vox_runs(bounds, sigma_mm, affines, rng):
    """:func:`draw_noise_vox` for consecutive runs of rows, each in its own
    voxel space, with one draw for all rows.

    Run ``i`` is rows ``[bounds[i], bounds[i + 1])``, converted with
    ``affines[i]``. With one run this is ``draw_noise_vox(bounds[1],
    sigma_mm, affines[0], rng)``, the same bits.

    Parameters
    ----------
    bounds : np.ndarray of int64, shape (R + 1,)
        Non-decreasing, from 0 to the number of rows.
    sigma_mm : float
    affines : sequence of R (4, 4) arrays
    rng : numpy.random.Generator

    Returns
    -------
    np.ndarray, shape (bounds[-1], 3), float32, in voxel units.
    """
    noise = _truncated_standard_normal(int(bounds[-1]),
                                       NOISE_TRUNCATION_NB_SIGMAS, rng)
    scales = [_mm_to_vox_scale(np.asarray(affine, dtype=np.float64).tobytes(),
                               float(sigma_mm)) for affine in affines]
    if len(scales) == 1 and scales[0].ndim:
        return noise @ scales[0]
    if all(scale.ndim == 0 for scale in scales):
        if len(set(scales)) == 1:
            noise *= scales[0]
        else:  # one product per row, as noise *= scale run by run
            noise *= np.repeat(np.array(scales, dtype=np.float32),
                               np.diff(bounds))[:, None]
        return noise
    for scale, start, stop in zip(scales, bounds[:-1], bounds[1:]):
        if scale.ndim == 0:
            noise[start:stop] *= scale
        else:  # oblique or anisotropic voxels: a product per run
            noise[start:stop] = noise[start:stop] @ scale
    return noise


# One entry per subject's affine (and sigma): 64 thrashed with mixed
# batches of more subjects, each call then inverting its affine again.
@functools.lru_cache(maxsize=16384)
def _mm_to_vox_scale(affine_bytes, sigma_mm):
    """``sigma_mm`` times the mm-to-voxel map of an affine (given as the
    bytes of its float64 (4, 4) array), float32, transposed for a product
    on the right: a scalar when it is a multiple of the identity."""
    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    scale = vectors_rasmm_to_vox(sigma_mm * np.eye(3), affine)
    if np.array_equal(scale, scale[0, 0] * np.eye(3)):
        return np.float32(scale[0, 0])
    return scale.astype(np.float32)


def _truncated_standard_normal(nb_rows, bound, rng):
    """(nb_rows, 3) float32 N(0, 1) values in [-bound, bound], redrawing the
    others (row by row, x, y, z, in order).

    With bound = 2, about 4.6% of the values are redrawn each round, so a
    handful of vectorised rounds suffice.
    """
    values = rng.standard_normal((nb_rows, 3), dtype=np.float32)
    flat = values.reshape(-1)
    outside = np.flatnonzero(np.abs(flat) > bound)
    while outside.size:
        flat[outside] = rng.standard_normal(outside.size, dtype=np.float32)
        outside = outside[np.abs(flat[outside]) > bound]
    return values
