"""Space conversions, resampling, splitting, reversal and noise of streamlines."""
import nibabel as nib
import numpy as np
import pytest
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.tracking.streamlinespeed import set_number_of_points

from dwi_ml.data.packed import lengths_mm, make_array_sequence
from dwi_ml.data.processing.augmentation import (
    add_noise_mm,
    choose,
    count_from_ratio,
    draw_noise_vox,
    draw_noise_vox_runs,
    reverse_streamlines,
    split_streamlines,
    uniform_integers,
)
from dwi_ml.data.processing.resampling import (
    compress,
    resample_to_nb_points,
    resample_to_step_size,
)
from dwi_ml.data.processing.space import (
    points_rasmm_to_vox_corner,
    points_vox_corner_to_rasmm,
    streamlines_vox_corner_to_rasmm,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.tolerances import EPS64, rounding_atol

# Voxels of 1 x 2 x 4 mm with a translation: one voxel is not one mm.
ANISOTROPIC_AFFINE = np.array([[1., 0, 0, -10],
                               [0, 2., 0, 5],
                               [0, 0, 4., 20],
                               [0, 0, 0, 1]])


def _rotated_affine():
    """Anisotropic voxels, rotated about z by 30 degrees, flipped x."""
    angle = np.pi / 6
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0],
                         [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 2., 4.])
    affine[:3, 3] = [30., -12., 7.]
    return affine


def float32_mm_atol(affine, points_vox, nb_roundings):
    """Error in mm of points stored ``nb_roundings`` times in float32 (in
    voxels or mm; the conversions themselves are float64), in values below
    |A| |x| + |t| mm."""
    magnitude_mm = (np.abs(affine[:3, :3]).sum(axis=1).max()
                    * np.abs(np.asarray(points_vox)).max()
                    + np.abs(affine[:3, 3]).max())
    return rounding_atol(magnitude_mm, nb_roundings)


def _scattered(streamlines, gap_rows=2):
    """Pack streamlines in reverse order with unused rows between them.

    Offsets are then not the cumulative sum of the lengths, as allowed.
    """
    rows, offsets, position = [], [], 0
    for streamline in reversed(streamlines):
        rows.extend([streamline, np.full((gap_rows, 3), 999.)])
        offsets.append(position)
        position += len(streamline) + gap_rows
    data = np.concatenate(rows).astype(np.float32)
    lengths = [len(s) for s in streamlines]
    return make_array_sequence(data, offsets[::-1], lengths)


def _random_streamlines(rng, lengths):
    return [np.cumsum(rng.normal(size=(n, 3)), axis=0) + 20 for n in lengths]


# ---------------------------------------------------------------- space
def test_vox_corner_to_rasmm_matches_dipy_stateful_tractogram():
    rng = np.random.default_rng(0)
    affine = _rotated_affine()
    streamlines = _random_streamlines(rng, [4, 7, 2])
    reference = nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), affine)
    sft = StatefulTractogram(streamlines, reference, Space.VOX,
                             origin=Origin.TRACKVIS)
    sft.to_rasmm()
    sft.to_center()
    packed = _scattered(streamlines)

    in_mm = streamlines_vox_corner_to_rasmm(packed, affine)
    # Stored in float32 as voxels, then as mm (and as voxels again below);
    # back in voxels, an error in mm is divided by at least the smallest
    # voxel size (1.5 mm).
    for ours, dipys in zip(in_mm, sft.streamlines):
        np.testing.assert_allclose(ours, dipys, rtol=0,
                                   atol=float32_mm_atol(affine, packed._data, 2))
    back = [points_rasmm_to_vox_corner(s, affine) for s in in_mm]
    for ours, original in zip(back, streamlines):
        np.testing.assert_allclose(
            ours, original, rtol=0,
            atol=float32_mm_atol(affine, packed._data, 3) / 1.5)


def test_voxel_centre_corner_maps_to_affine_translation():
    # The corner-origin centre of voxel (0, 0, 0) is (.5, .5, .5).
    centre_mm = points_vox_corner_to_rasmm(np.full((1, 3), 0.5), _rotated_affine())
    # float64 all the way: 0.5 - 0.5 is exact, the inverse affine rounds.
    np.testing.assert_array_equal(centre_mm[0], _rotated_affine()[:3, 3])
    np.testing.assert_allclose(
        points_rasmm_to_vox_corner(centre_mm, _rotated_affine()), [[.5, .5, .5]],
        rtol=0, atol=rounding_atol(100, 16, eps=EPS64))


# ---------------------------------------------------------------- resampling
def _to_vox(streamlines_mm, affine=ANISOTROPIC_AFFINE):
    return _scattered([points_rasmm_to_vox_corner(s, affine)
                       for s in streamlines_mm])


def _to_mm(streamlines_vox, affine=ANISOTROPIC_AFFINE):
    return [points_vox_corner_to_rasmm(s, affine) for s in streamlines_vox]


def test_resample_to_step_size_gives_ceil_l_over_s_equal_steps_in_mm():
    rng = np.random.default_rng(1)
    streamlines_mm = []
    for nb_points in (5, 12, 2):
        # Straight lines with irregular spacing: steps along the curve are
        # also straight-line distances.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        positions = np.sort(rng.uniform(0, 17, nb_points))
        streamlines_mm.append(positions[:, None] * direction + 3)
    resampled = resample_to_step_size(_to_vox(streamlines_mm), ANISOTROPIC_AFFINE,
                                      step_size_mm=0.75)
    # Stored in float32 before and after resampling (and a float32 blend
    # of two points, at most 2 more roundings): a step is off by twice that.
    atol_mm = float32_mm_atol(ANISOTROPIC_AFFINE, resampled._data, 4)
    for new, original in zip(_to_mm(resampled), streamlines_mm):
        length_mm = np.linalg.norm(original[-1] - original[0])
        steps = np.linalg.norm(np.diff(new, axis=0), axis=1)
        # The reference dwi_ml's convention: ceil(L / s) equally spaced points.
        assert len(new) == max(int(np.ceil(length_mm / 0.75)), 2)
        np.testing.assert_allclose(steps, length_mm / (len(new) - 1), rtol=0,
                                   atol=2 * atol_mm)
        np.testing.assert_allclose(new[[0, -1]], original[[0, -1]], rtol=0,
                                   atol=atol_mm)


def test_resample_to_step_size_follows_corners():
    l_shape_mm = np.array([[0., 0, 0], [10, 0, 0], [10, 10, 0]])
    resampled = resample_to_step_size(_to_vox([l_shape_mm]), ANISOTROPIC_AFFINE, 3.)
    # 20 mm: ceil(20 / 3) = 7 points, 20 / 6 mm apart along the curve.
    third = 10 / 3
    expected = [[0, 0, 0], [third, 0, 0], [2 * third, 0, 0], [10, 0, 0],
                [10, third, 0], [10, 2 * third, 0], [10, 10, 0]]
    np.testing.assert_allclose(
        _to_mm(resampled)[0], expected, rtol=0,
        atol=float32_mm_atol(ANISOTROPIC_AFFINE, resampled._data, 4))


def test_resample_to_nb_points_matches_dipy_in_mm():
    rng = np.random.default_rng(2)
    streamlines_mm = _random_streamlines(rng, [3, 9, 2, 20])
    resampled = resample_to_nb_points(_to_vox(streamlines_mm), ANISOTROPIC_AFFINE, 7)
    assert list(resampled._lengths) == [7, 7, 7, 7]
    expected = set_number_of_points(streamlines_mm, 7)
    atol_mm = float32_mm_atol(ANISOTROPIC_AFFINE, resampled._data, 4)
    for ours, dipys in zip(_to_mm(resampled), expected):
        np.testing.assert_allclose(ours, dipys, rtol=0, atol=atol_mm)


def test_resample_on_rotated_voxels_matches_dipy_in_mm():
    # New points are interpolated between the voxel-space points, at
    # fractions of segment lengths measured in mm: right for any affine.
    affine = _rotated_affine()
    rng = np.random.default_rng(4)
    streamlines_mm = _random_streamlines(rng, [3, 9, 2, 20])
    resampled = resample_to_nb_points(_to_vox(streamlines_mm, affine),
                                      affine, 6)
    expected = set_number_of_points(streamlines_mm, 6)
    atol_mm = float32_mm_atol(affine, resampled._data, 4)
    for ours, dipys in zip(_to_mm(resampled, affine), expected):
        np.testing.assert_allclose(ours, dipys, rtol=0, atol=atol_mm)


@pytest.mark.parametrize("affine", [ANISOTROPIC_AFFINE, _rotated_affine()],
                         ids=["axis_aligned", "rotated"])
def test_lengths_mm_equal_the_norms_of_the_steps_in_mm(affine):
    # Axis-aligned and rotated affines take two paths (weights or a matrix
    # product); both must give each streamline's sum of |A (p_k - p_k-1)|,
    # with one-point and empty streamlines of length 0.
    streamlines = _random_streamlines(np.random.default_rng(8),
                                      [5, 1, 0, 200, 2])
    # Scattered rows (offsets not the cumulative lengths), float32 as
    # stored: the expected lengths are those of the float32 points.
    sequence = _scattered(streamlines)
    points = [np.asarray(s, np.float64) for s in sequence]
    expected = np.array([
        np.linalg.norm(np.diff(s @ affine[:3, :3].T, axis=0), axis=1).sum()
        for s in points])
    got = lengths_mm(sequence._data, sequence._offsets, sequence._lengths,
                     affine, dtype=np.float64)
    # Each step: a difference, a 3-term map and a norm (~8 roundings); the
    # sums: one rounding per step, all below the longest length.
    nb_roundings = 8 + max(len(s) for s in streamlines)
    np.testing.assert_allclose(got, expected, rtol=0, atol=rounding_atol(
        expected.max(), nb_roundings, EPS64))
    assert got[[1, 2]].tolist() == [0., 0.]


def test_resample_degenerate_streamlines():
    point = np.array([[4., 5, 6]])
    streamlines = _to_vox([np.repeat(point, 3, axis=0), point])
    by_nb = resample_to_nb_points(streamlines, ANISOTROPIC_AFFINE, 4)
    atol_mm = float32_mm_atol(ANISOTROPIC_AFFINE, by_nb._data, 4)
    for streamline in _to_mm(by_nb):
        np.testing.assert_allclose(streamline, np.repeat(point, 4, axis=0),
                                   rtol=0, atol=atol_mm)
    by_step = resample_to_step_size(streamlines, ANISOTROPIC_AFFINE, 1.)
    assert list(by_step._lengths) == [1, 1]


def test_resampling_twice_at_one_step_keeps_the_points():
    """Idempotence on smooth curves: resampling again keeps the points.

    (On sharp polylines chords cut corners, so the loader never resamples
    streamlines already stored in the model's format.)
    """
    angles = np.linspace(0, 3 * np.pi, 400)
    helix_mm = np.stack([10 * np.cos(angles), 10 * np.sin(angles),
                         2 * angles], axis=1) + 20
    streamlines = _to_vox([helix_mm, helix_mm[:150], helix_mm[:40]])
    once = resample_to_step_size(streamlines, ANISOTROPIC_AFFINE, 0.5)
    twice = resample_to_step_size(once, ANISOTROPIC_AFFINE, 0.5)
    assert list(twice._lengths) == list(once._lengths)
    smallest_voxel_mm = np.linalg.svd(ANISOTROPIC_AFFINE[:3, :3],
                                      compute_uv=False).min()
    for again, points in zip(twice, once):
        # Geometry, not rounding: once's chords c (mm) cut the helix
        # polyline's corners unevenly; resampling again puts point k at
        # k * mean(c) along once's polyline, where once's own point k is at
        # sum(c[:k]), so at most max_k |sum(c[:k] - mean(c))| mm from it,
        # / smallest_voxel_mm in voxels. Plus the rounding of the float64
        # arc lengths (a sum of n chords, each below the length L) and of
        # the new point to float32 (1, on coordinates below max |p|).
        chords = np.linalg.norm(np.diff(points_vox_corner_to_rasmm(
            points.astype(np.float64), ANISOTROPIC_AFFINE), axis=0), axis=1)
        drift_mm = np.abs(np.cumsum(chords - chords.mean())).max()
        atol = ((drift_mm + rounding_atol(chords.sum(), len(points), EPS64))
                / smallest_voxel_mm
                + rounding_atol(np.abs(points).max(), 1) / 2)
        np.testing.assert_allclose(again, points, rtol=0, atol=atol)


def test_compress_works_in_mm_and_keeps_endpoints():
    # A 0.4 mm zig-zag along z: 0.1 voxel (4 mm voxels), 0.4 mm in the world.
    x_mm = np.arange(0, 8, 0.5)
    zigzag_mm = np.stack([x_mm, np.zeros_like(x_mm),
                          0.4 * (np.arange(len(x_mm)) % 2)], axis=1)
    straight_mm = np.stack([x_mm, x_mm / 2, np.zeros_like(x_mm)], axis=1)
    streamlines = _to_vox([zigzag_mm, straight_mm])

    loose = compress(streamlines, ANISOTROPIC_AFFINE, tolerance_mm=0.5)
    tight = compress(streamlines, ANISOTROPIC_AFFINE, tolerance_mm=0.15)
    assert list(loose._lengths) == [2, 2]
    assert tight._lengths[0] == len(x_mm)  # 0.4 mm wiggles exceed 0.15 mm
    assert tight._lengths[1] == 2
    atol_mm = float32_mm_atol(ANISOTROPIC_AFFINE, streamlines._data, 2)
    for new, original in zip(_to_mm(loose), [zigzag_mm, straight_mm]):
        np.testing.assert_allclose(new[[0, -1]], original[[0, -1]], rtol=0,
                                   atol=atol_mm)


@pytest.mark.parametrize("function, value", [
    (resample_to_step_size, 0), (resample_to_step_size, -1.),
    (resample_to_nb_points, 1), (resample_to_nb_points, 0),
    (compress, 0.)])
def test_resampling_rejects_bad_values(function, value):
    streamlines = _to_vox([np.eye(3)])
    with pytest.raises(DwiMLUserError, match="expected"):
        function(streamlines, ANISOTROPIC_AFFINE, value)


# ---------------------------------------------------------------- splitting
def test_split_counts_pieces_and_short_streamlines():
    rng = np.random.default_rng(3)
    lengths = [2, 4, 5, 9, 30, 5, 3, 12, 1, 7, 6]
    originals = _random_streamlines(rng, lengths)
    packed = _scattered(originals)
    nb_eligible = sum(n >= 5 for n in lengths)  # 2 * 3 - 1 with min 3

    new, source_ids = split_streamlines(packed, 0.5, rng, min_nb_points=3)

    nb_split = count_from_ratio(0.5, nb_eligible)
    assert nb_split == 4  # 0.5 * 7 = 3.5, halves rounded up
    assert len(new) == len(lengths) + nb_split
    assert new._data is packed._data  # zero-copy
    assert np.array_equal(np.unique(source_ids), np.arange(len(lengths)))
    assert np.all(np.diff(source_ids) >= 0)
    for source_id, original in enumerate(originals):
        pieces = [new[i] for i in np.flatnonzero(source_ids == source_id)]
        # Views of the float32 data: no arithmetic.
        original = original.astype(np.float32)
        if len(pieces) == 1:
            np.testing.assert_array_equal(pieces[0], original)
            continue
        assert lengths[source_id] >= 5
        assert min(len(p) for p in pieces) >= 3
        np.testing.assert_array_equal(pieces[0][-1], pieces[1][0])  # shared point
        np.testing.assert_array_equal(
            np.concatenate([pieces[0], pieces[1][1:]]), original)


def test_split_ratio_bounds_and_cut_range():
    rng = np.random.default_rng(4)
    packed = _scattered(_random_streamlines(rng, [6] * 400 + [2] * 10))
    new, source_ids = split_streamlines(packed, 1., rng, min_nb_points=2)
    assert len(new) == 810  # every 6-point streamline split, 2-point ones kept
    first_piece_lengths = new._lengths[:-10][::2]
    # Cuts at point indices 1..4 inclusive: first pieces of 2..5 points.
    assert set(first_piece_lengths) == {2, 3, 4, 5}
    unchanged, ids = split_streamlines(packed, 0., rng)
    assert np.array_equal(unchanged._lengths, packed._lengths)
    assert np.array_equal(ids, np.arange(410))


def test_split_is_reproducible_and_validates():
    packed = _scattered(_random_streamlines(np.random.default_rng(5), [8] * 20))
    first = split_streamlines(packed, 0.3, np.random.default_rng(7))
    second = split_streamlines(packed, 0.3, np.random.default_rng(7))
    assert np.array_equal(first[0]._offsets, second[0]._offsets)
    assert np.array_equal(first[1], second[1])
    rng = np.random.default_rng(0)
    with pytest.raises(DwiMLUserError, match="split_ratio"):
        split_streamlines(packed, 1.5, rng)
    with pytest.raises(DwiMLUserError, match="min_nb_points"):
        split_streamlines(packed, 0.5, rng, min_nb_points=1)


# ---------------------------------------------------------------- reversal
def test_reverse_exact_count_and_content():
    rng = np.random.default_rng(6)
    originals = _random_streamlines(rng, [3, 1, 8, 5, 2, 6, 4])
    packed = _scattered(originals)
    new, is_reversed = reverse_streamlines(packed, 0.4, rng)
    assert is_reversed.sum() == 3  # 0.4 * 7 = 2.8
    assert np.array_equal(new._lengths, packed._lengths)
    for streamline, original, reversed_ in zip(new, originals, is_reversed):
        expected = original[::-1] if reversed_ else original
        # A reordering of the float32 data: no arithmetic.
        np.testing.assert_array_equal(streamline, expected.astype(np.float32))
    with pytest.raises(DwiMLUserError, match="reverse_ratio"):
        reverse_streamlines(packed, -0.1, rng)


def test_choose_and_uniform_integers_are_exact_and_uniform():
    rng = np.random.default_rng(11)
    nb_draws = 4000
    masks = np.array([choose(10, 3, rng) for _ in range(nb_draws)])
    assert np.all(masks.sum(axis=1) == 3)
    # Each item chosen with probability 0.3: 5 binomial standard errors.
    np.testing.assert_allclose(masks.mean(axis=0), 0.3,
                               atol=5 * np.sqrt(0.3 * 0.7 / nb_draws))
    values = uniform_integers(2, np.full(40_000, 5), rng)
    assert values.dtype == np.int64 and set(values.tolist()) == set(range(2, 7))
    np.testing.assert_allclose(np.bincount(values - 2) / len(values), 0.2,
                               atol=5 * np.sqrt(0.2 * 0.8 / len(values)))
    # Ranges of one value.
    assert np.all(uniform_integers(7, np.ones(100, dtype=np.int64), rng) == 7)


# ---------------------------------------------------------------- noise
def test_noise_is_truncated_in_mm_on_anisotropic_voxels():
    rng = np.random.default_rng(8)
    packed = _scattered(_random_streamlines(rng, [5000, 3000, 2000]))
    sigma_mm = 0.3
    noisy = add_noise_mm(packed, sigma_mm, ANISOTROPIC_AFFINE, rng)
    assert noisy._data.dtype == np.float32
    assert np.array_equal(noisy._offsets, packed._offsets)
    delta_vox = noisy._data.astype(np.float64) - packed._data
    voxel_sizes = np.array([1., 2., 4.])
    max_delta_vox = np.abs(delta_vox).max(axis=0)
    # The noisy points are rounded to float32 once; the float32 noise is
    # sigma / voxel size (one rounding) times a value within [-2, 2] (one).
    bound_vox = 2 * sigma_mm / voxel_sizes
    slack_vox = (rounding_atol(np.abs(packed._data).max(), 1)
                 + rounding_atol(bound_vox, 2))
    assert np.all(max_delta_vox <= bound_vox + slack_vox)
    assert np.all(max_delta_vox > 1.9 * sigma_mm / voxel_sizes)  # reaches ~2 sigma
    delta_mm = delta_vox * voxel_sizes
    assert np.all(np.abs(delta_mm.mean(axis=0)) < 0.01)  # ~4 standard errors
    # A Gaussian truncated at 2 sigma has a std of 0.8796 sigma; 5 standard
    # errors of a sample std (< 1 / sqrt(2 n) relatively).
    np.testing.assert_allclose(delta_mm.std(axis=0), 0.8796 * sigma_mm,
                               rtol=5 / np.sqrt(2 * len(delta_mm)))


def test_noise_bound_holds_in_mm_on_rotated_affine():
    rng = np.random.default_rng(9)
    affine = _rotated_affine()
    packed = _scattered(_random_streamlines(rng, [4000]))
    noisy = add_noise_mm(packed, 0.5, affine, rng)
    delta_mm = (points_vox_corner_to_rasmm(noisy._data, affine)
                - points_vox_corner_to_rasmm(packed._data, affine))
    # The noisy points are rounded to float32 once (float64 conversions);
    # the float32 noise in voxels is a product of 3 terms by the rounded
    # sigma times the inverse linear part (4 roundings), of values below
    # 2 sigma |A^-1|, then mapped to mm by A.
    linear = affine[:3, :3]
    noise_vox_max = 2 * 0.5 * np.abs(np.linalg.inv(linear)).sum(axis=1).max()
    noise_atol_mm = np.abs(linear).sum(axis=1).max() * rounding_atol(
        noise_vox_max, 4)
    assert np.abs(delta_mm).max() <= 1. + float32_mm_atol(
        affine, packed._data, 1) + noise_atol_mm


def test_noise_runs_draw_once_and_convert_each_run_to_its_voxels():
    # Runs of 1 mm, rotated and 1 x 2 x 4 mm voxels (scalar and matrix
    # scales): one standard normal draw over all rows, each run's rows
    # then in its own voxels.
    affines = [np.eye(4), _rotated_affine(), ANISOTROPIC_AFFINE,
               2 * np.eye(4)]
    bounds = np.array([0, 700, 700, 1500, 2000])
    sigma_mm = 0.5
    noise = draw_noise_vox_runs(bounds, sigma_mm, affines,
                                np.random.default_rng(4))
    assert noise.dtype == np.float32 and noise.shape == (2000, 3)
    standard = draw_noise_vox(2000, 1., np.eye(4), np.random.default_rng(4))
    for affine, start, stop in zip(affines, bounds[:-1], bounds[1:]):
        # noise_vox = A^-1 noise_mm, row by row.
        inverse = np.linalg.inv(affine[:3, :3])
        expected = sigma_mm * standard[start:stop] @ inverse.T
        # Float32 scale (one rounding), 3 products and 2 sums, on values of
        # at most 2 sigma |A^-1|.
        magnitude = 2 * sigma_mm * np.abs(inverse).sum(axis=1).max()
        np.testing.assert_allclose(noise[start:stop], expected, rtol=0,
                                   atol=rounding_atol(magnitude, 6))


def test_zero_noise_returns_input_and_negative_sigma_fails():
    packed = _scattered([np.eye(3)])
    rng = np.random.default_rng(0)
    assert add_noise_mm(packed, 0., ANISOTROPIC_AFFINE, rng) is packed
    with pytest.raises(DwiMLUserError, match="sigma_mm"):
        add_noise_mm(packed, -0.1, ANISOTROPIC_AFFINE, rng)


@pytest.mark.parametrize("transform", [
    lambda s, rng: split_streamlines(s, 1., rng)[0],
    lambda s, rng: reverse_streamlines(s, 1., rng)[0],
    lambda s, rng: add_noise_mm(s, 1., ANISOTROPIC_AFFINE, rng),
    lambda s, rng: resample_to_step_size(s, ANISOTROPIC_AFFINE, 0.5),
    lambda s, rng: resample_to_nb_points(s, ANISOTROPIC_AFFINE, 3),
    lambda s, rng: compress(s, ANISOTROPIC_AFFINE, 0.1),
])
def test_an_empty_array_sequence_gives_an_empty_one(transform):
    # nibabel's ArraySequence([]) holds a (0,) array, not (0, 3): noise and
    # resampling failed with a broadcasting ValueError.
    result = transform(nib.streamlines.ArraySequence([]),
                       np.random.default_rng(0))
    assert len(result) == 0 and result.get_data().shape == (0, 3)
