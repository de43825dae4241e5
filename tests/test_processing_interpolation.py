"""Trilinear interpolation (voxel space, corner origin) and neighbourhoods."""
import numpy as np
import pytest
import torch

from dwi_ml.data.processing import interpolation
from dwi_ml.data.processing.interpolation import (
    INTERPOLATION_METHODS,
    interpolate_volume_at_coordinates,
    interpolate_volumes_at_runs,
    prepare_volume_for_interpolation,
)
from dwi_ml.data.processing.neighborhood import (
    get_neighborhood_offsets,
    interpolate_with_neighborhood,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.tolerances import EPS64, rounding_atol

SHAPE = (4, 5, 6, 3)
ANISOTROPIC_AFFINE = np.diag([1., 2., 4., 1.])
# grid_sample's round trip through normalised coordinates (2 c / dim - 1 and
# back, ~6 float32 roundings) moves a point by at most this, in voxels.
GRID_SAMPLE_COORDINATE_ATOL = rounding_atol(max(SHAPE[:3]) + 4, 6)
# Offsets: float64 affine maps of values < 10 (a few roundings each).
OFFSETS_ATOL = rounding_atol(10, 16, eps=EPS64)


def blend_atol(coordinate_atol_vox=0.):
    """Error bound of a float32 trilinear blend of values in [0, 1): 8
    weighted corners summed (within 8 roundings), plus, per voxel of
    coordinate error on each of 3 axes, the step between neighbours (< 1).
    """
    return rounding_atol(1, 8) + 3 * coordinate_atol_vox


@pytest.fixture
def volume():
    return np.random.default_rng(0).random(SHAPE).astype(np.float32)


def _interpolate(volume, coords, method):
    return interpolate_volume_at_coordinates(volume, coords, method=method).numpy()


@pytest.mark.parametrize("method", INTERPOLATION_METHODS)
def test_exact_value_at_every_voxel_centre(volume, method):
    indices = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE[:3]],
                                   indexing="ij"), axis=-1).reshape(-1, 3)
    values = _interpolate(torch.from_numpy(volume), indices + 0.5, method)
    assert values.dtype == np.float32
    if method == "gather":
        np.testing.assert_array_equal(values, volume.reshape(-1, SHAPE[3]))
    else:  # grid_sample normalises coordinates: exact up to float32 rounding
        np.testing.assert_allclose(values, volume.reshape(-1, SHAPE[3]), rtol=0,
                                   atol=blend_atol(GRID_SAMPLE_COORDINATE_ATOL))


@pytest.mark.parametrize("method", INTERPOLATION_METHODS)
def test_trilinear_blend_between_centres_by_hand(volume, method):
    # Corner (1.0, 1.25, 2.7) is centre-origin (0.5, 0.75, 2.2): between
    # voxels 0-1, 0-1 and 2-3 with weights (0.5, 0.75, 0.2) on the upper ones.
    fx, fy, fz = 0.5, 0.75, 0.2
    expected = np.zeros(SHAPE[3])
    for dx, wx in ((0, 1 - fx), (1, fx)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dz, wz in ((0, 1 - fz), (1, fz)):
                expected += wx * wy * wz * volume[dx, dy, 2 + dz]
    values = _interpolate(volume, np.array([[1.0, 1.25, 2.7]]), method)
    coordinate_atol = GRID_SAMPLE_COORDINATE_ATOL if method == "grid_sample" else 0
    np.testing.assert_allclose(values[0], expected, rtol=0,
                               atol=blend_atol(coordinate_atol))


@pytest.mark.parametrize("method", INTERPOLATION_METHODS)
def test_outside_volume_replicates_the_border(volume, method):
    inside = np.array([[0.5, 1.7, 2.2],   # on the x = 0 centre plane
                       [3.5, 4.5, 5.5],   # last voxel's centre
                       [2.2, 0.5, 3.3]])
    outside = np.array([[0.0, 1.7, 2.2],    # half a voxel beyond x = 0
                        [100., 60., 9.],    # far beyond the last corner
                        [2.2, -7., 3.3]])
    # "gather" clamps to the very same coordinates; grid_sample clamps in its
    # own normalised space.
    np.testing.assert_allclose(_interpolate(volume, outside, method),
                               _interpolate(volume, inside, method), rtol=0,
                               atol=2 * blend_atol(GRID_SAMPLE_COORDINATE_ATOL))
    np.testing.assert_array_equal(_interpolate(volume, outside[1:2], method)[0],
                                  volume[3, 4, 5])


def test_float64_and_numpy_inputs_give_float32(volume):
    coords = np.random.default_rng(1).random((50, 3)) * np.array(SHAPE[:3])
    expected = _interpolate(torch.from_numpy(volume), coords.astype(np.float32),
                            "gather")
    for vol in (volume.astype(np.float64), torch.from_numpy(volume).double()):
        for points in (coords, torch.from_numpy(coords)):
            values = interpolate_volume_at_coordinates(vol, points)
            assert values.dtype == torch.float32 and values.shape == (50, 3)
            # Only the float32 coordinates of `expected` differ (one
            # rounding, < max(SHAPE) voxels).
            np.testing.assert_allclose(
                values.numpy(), expected, rtol=0,
                atol=2 * blend_atol(rounding_atol(max(SHAPE[:3]), 1)))


def test_both_methods_agree_and_chunks_are_seamless(volume, monkeypatch):
    coords = (np.random.default_rng(2).random((1000, 3)) * (np.array(SHAPE[:3]) + 4)
              - 2).astype(np.float32)
    gather = _interpolate(volume, coords, "gather")
    np.testing.assert_allclose(gather, _interpolate(volume, coords, "grid_sample"),
                               rtol=0,
                               atol=2 * blend_atol(GRID_SAMPLE_COORDINATE_ATOL))
    monkeypatch.setattr(interpolation, "_CHUNK_NB_POINTS", 7)
    np.testing.assert_array_equal(_interpolate(volume, coords, "gather"), gather)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_and_many_points_give_the_same_bits(volume, monkeypatch, dtype):
    """Up to _BROADCAST_MAX_NB_POINTS points (a tracking step), the corner
    weights come from a broadcast product, beyond from 1D columns: the same
    products in the same order, so every point's value is the same whether
    it is interpolated with few or many others."""
    coords = (np.random.default_rng(3).random((600, 3))
              * (np.array(SHAPE[:3]) + 4) - 2).astype(dtype)
    many = _interpolate(volume, coords, "gather")
    monkeypatch.setattr(interpolation, "_BROADCAST_MAX_NB_POINTS", 0)
    np.testing.assert_array_equal(_interpolate(volume, coords, "gather"), many)
    monkeypatch.setattr(interpolation, "_BROADCAST_MAX_NB_POINTS", 1024)
    monkeypatch.setattr(interpolation, "_CHUNK_NB_POINTS", 7)
    np.testing.assert_array_equal(_interpolate(volume, coords, "gather"), many)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [SHAPE[:3], (2, 1, 3)])
def test_cpu_and_torch_rows_and_weights_are_the_same_bits(dtype, shape):
    """Batches on the CPU take the rows and weights from numpy, GPUs and
    tracking steps from torch: the same integers and the same float bits,
    inside the volume, on its centres and borders and beyond them."""
    rng = np.random.default_rng(4)
    dims = np.array(shape)
    coords = np.concatenate([
        rng.random((3000, 3)) * (dims + 4) - 2,
        np.indices(shape).reshape(3, -1).T + 0.5,  # voxel centres
        np.zeros((1, 3)), dims[None] * 1., dims[None] + 0.5])
    coords = torch.from_numpy(coords).to(dtype)
    constants = interpolation._grid_constants(shape, torch.device("cpu"),
                                              dtype)
    rows, weights = interpolation._cpu_rows_and_weights(
        coords, shape + (1,), constants[4])
    torch_rows, torch_weights = interpolation._torch_rows_and_weights(
        coords, *constants)
    assert weights.dtype == torch_weights.dtype == torch.float32
    assert torch.equal(rows.long(), torch_rows)
    assert torch.equal(weights, torch_weights)


def test_axis_of_size_one():
    flat_volume = np.arange(6, dtype=np.float32).reshape(2, 1, 3, 1)
    values = _interpolate(flat_volume, np.array([[1.5, 0.9, 1.0], [0.5, 0.5, 2.5]]),
                          "gather")
    # Weights 0, 0.5 and 1 on small integers: exact.
    np.testing.assert_array_equal(values[:, 0], [3.5, 2.])


def test_prepared_volume_is_reused_and_bad_inputs_fail(volume):
    prepared = prepare_volume_for_interpolation(volume)
    assert prepared.dtype == torch.float32 and prepared.is_contiguous()
    assert prepare_volume_for_interpolation(prepared).data_ptr() == prepared.data_ptr()
    with pytest.raises(DwiMLUserError, match="volume"):
        interpolate_volume_at_coordinates(volume[..., 0], np.zeros((1, 3)))
    with pytest.raises(DwiMLUserError, match="coords_vox_corner"):
        interpolate_volume_at_coordinates(volume, np.zeros((4, 2)))
    with pytest.raises(DwiMLUserError, match="method"):
        interpolate_volume_at_coordinates(volume, np.zeros((1, 3)), method="cubic")


# ---------------------------------------------------------------- neighbourhoods
def test_neighborhood_counts_and_centre_first():
    assert np.array_equal(get_neighborhood_offsets(None), np.zeros((1, 3)))
    for radius in (1, 2, 3):
        axes = get_neighborhood_offsets("axes", radius, 1., ANISOTROPIC_AFFINE)
        grid = get_neighborhood_offsets("grid", radius, 1., ANISOTROPIC_AFFINE)
        assert axes.shape == (6 * radius + 1, 3)
        assert grid.shape == ((2 * radius + 1) ** 3, 3)
        for offsets in (axes, grid):
            assert np.array_equal(offsets[0], [0, 0, 0])
            assert len(np.unique(offsets, axis=0)) == len(offsets)


def test_neighborhood_offsets_are_in_mm_along_world_axes():
    axes = get_neighborhood_offsets("axes", 2, 1.5, ANISOTROPIC_AFFINE)
    # Voxels of 1 x 2 x 4 mm: 1.5 mm is 1.5, 0.75 and 0.375 voxels.
    np.testing.assert_allclose(axes[1:7], [[1.5, 0, 0], [-1.5, 0, 0],
                                           [0, .75, 0], [0, -.75, 0],
                                           [0, 0, .375], [0, 0, -.375]],
                               rtol=0, atol=OFFSETS_ATOL)
    np.testing.assert_allclose(axes[7:], 2 * axes[1:7], rtol=0,
                               atol=OFFSETS_ATOL)
    rotation = np.array([[0., -1, 0], [1, 0, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1., 2., 4.])
    grid = get_neighborhood_offsets("grid", 1, 2., affine)
    grid_mm = grid @ affine[:3, :3].T
    np.testing.assert_allclose(np.sort(np.abs(grid_mm).max(axis=1))[1:], 2.,
                               rtol=0, atol=OFFSETS_ATOL)
    np.testing.assert_allclose(grid_mm[1], [-2., -2., -2.], rtol=0,
                               atol=OFFSETS_ATOL)


def test_neighborhood_layout_equals_separate_interpolations(volume):
    coords = np.random.default_rng(3).random((20, 3)) * np.array(SHAPE[:3])
    offsets = get_neighborhood_offsets("axes", 1, 0.7, ANISOTROPIC_AFFINE)
    values = interpolate_with_neighborhood(volume, coords, offsets).numpy()
    assert values.shape == (20, 7 * SHAPE[3])
    expected = np.concatenate(
        [_interpolate(volume, coords + offset, "gather") for offset in offsets],
        axis=1)
    # The same float64 sums of coordinates and offsets: bit for bit.
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(values[:, :SHAPE[3]],
                                  _interpolate(volume, coords, "gather"))


@pytest.mark.parametrize("kwargs, argument", [
    ({"neighborhood_type": "sphere", "radius": 1}, "neighborhood_type"),
    ({"neighborhood_type": "axes", "radius": None}, "radius"),
    ({"neighborhood_type": "grid", "radius": 0}, "radius"),
    ({"neighborhood_type": "grid", "radius": 1, "resolution_mm": 0.}, "resolution_mm"),
])
def test_neighborhood_bad_arguments(kwargs, argument):
    kwargs = {"resolution_mm": 1., "affine": ANISOTROPIC_AFFINE, **kwargs}
    with pytest.raises(DwiMLUserError, match=argument):
        get_neighborhood_offsets(**kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runs_in_their_own_volumes_equal_one_call_per_run(dtype):
    # One pass over the corners of all runs (a batch of many subjects),
    # then one gather per run: the bits of a call per run, whichever path
    # (few points, many points, over one chunk) that call takes.
    rng = np.random.default_rng(0)
    shapes = [(5, 7, 3), (1, 4, 6), (9, 2, 1), (4, 4, 4), (6, 5, 8)]
    volumes = [prepare_volume_for_interpolation(
        rng.random(shape + (3,), dtype=np.float32)) for shape in shapes]
    counts = [3, 0, 2000, 1, interpolation._CHUNK_NB_POINTS + 5]
    points = [torch.from_numpy((rng.random((count, 3))
                                * (np.array(shape) + 2) - 1).astype(dtype))
              for count, shape in zip(counts, shapes)]
    bounds = np.concatenate(([0], np.cumsum(counts)))
    values = interpolate_volumes_at_runs(volumes, bounds, torch.cat(points))
    expected = torch.cat([interpolate_volume_at_coordinates(volume, run)
                          for volume, run in zip(volumes, points)])
    assert values.shape == (bounds[-1], 3)
    assert torch.equal(values, expected)
    with pytest.raises(DwiMLUserError, match="same F"):
        interpolate_volumes_at_runs(
            [volumes[0], prepare_volume_for_interpolation(
                np.zeros((2, 2, 2, 4), np.float32))], [0, 1, 2],
            torch.zeros((2, 3)))
