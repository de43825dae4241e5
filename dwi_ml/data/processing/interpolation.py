"""Trilinear interpolation of a (X, Y, Z, F) volume at many points at once.

Coordinates are in voxel space with a CORNER origin (dipy ``Space.VOX`` +
``Origin.TRACKVIS``): the value of voxel ``(i, j, k)`` comes back exactly at
its centre ``(i + .5, j + .5, k + .5)``, and between centres values are
blended trilinearly.

Outside the volume, coordinates are clamped to the range of voxel centres
``[0.5, dim - 0.5]`` on each axis (border replication): a point half a voxel
beyond the edge, or anywhere further out, gets the value of the nearest edge
voxel (blended along the other axes). No point gets zeros.

Two implementations, equal up to float32 rounding:

- ``"gather"`` (default): the volume seen as a flat ``(X*Y*Z, F)`` table;
  the 8 corner rows and their weights of every point go into one fused
  ``torch.nn.functional.embedding_bag(mode="sum")`` call. On CPU, 3x faster
  than ``grid_sample`` per CPU second, 5x in wall time with 2 threads
  (``bench/bench_interpolation.py``: 5 M points/s for F = 45). For many
  points on the CPU, rows and weights are computed with numpy, one axis at
  a time (same bits as torch's code, faster).
- ``"grid_sample"``: ``torch.nn.functional.grid_sample`` with
  ``align_corners=False``, which maps corner coordinates directly
  (normalised = 2 c / dim - 1) and ``padding_mode="border"``. The round trip
  through normalised coordinates makes values at voxel centres exact only up
  to float32 rounding (~1e-7 relative); "gather" returns them bit for bit.

Points are processed in chunks so that temporaries stay small whatever the
number of points; the result is always one (P, F) float32 tensor.
"""
import math

import numpy as np
import torch
import torch.nn.functional as torch_functional

from dwi_ml.io_utils.errors import DwiMLUserError

INTERPOLATION_METHODS = ("gather", "grid_sample")
# Points per chunk: bounds the (chunk, 8) corner tables to a few MB.
_CHUNK_NB_POINTS = 2 ** 16
# Up to this many points, corner weights come from a broadcast product
# (fewer, larger operations; a tracking step), beyond it from 1D columns.
_BROADCAST_MAX_NB_POINTS = 1024
# The 8 corners of a voxel cell as (dx, dy, dz) in {0, 1}^3, z varying fastest.
_CORNERS = torch.tensor([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1)
                         for dz in (0, 1)])
# (shape, device, dtype) -> constants of _interpolate_gather; a few per run.
_GRID_CONSTANTS = {}
# Coordinates used as they come; any other dtype is converted to float32.
_COORDINATE_DTYPES = (torch.float32, torch.float64)
# Columns of the (P, 6) axis factors (lower_x, upper_x, lower_y, upper_y,
# lower_z, upper_z) that give each corner's x, y and z weights (_CORNERS).
_CORNER_FACTOR_COLUMNS = torch.cat([2 * axis + _CORNERS[:, axis]
                                    for axis in range(3)])


def prepare_volume_for_interpolation(volume, device=None):
    """Return ``volume`` as a contiguous float32 (X, Y, Z, F) tensor.

    Cache the result per subject and device: interpolation then needs no
    copy (the flat (X*Y*Z, F) table is a view of it).

    Parameters
    ----------
    volume : torch.Tensor or np.ndarray, shape (X, Y, Z, F)
        Any dtype, any device.
    device : torch.device or str, optional
        Where to put it. Default: where it already is (CPU for numpy).

    Returns
    -------
    torch.Tensor, shape (X, Y, Z, F), float32, contiguous.
    """
    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(volume)
    if not isinstance(volume, torch.Tensor):
        raise DwiMLUserError(
            f"volume: expected a torch tensor or numpy array of shape "
            f"(X, Y, Z, F), found {type(volume).__name__}.")
    if volume.dim() != 4 or min(volume.shape) < 1:
        raise DwiMLUserError(
            f"volume: expected a non-empty 4D (X, Y, Z, F) array, found shape "
            f"{tuple(volume.shape)}.")
    return volume.to(device=device if device is not None else volume.device,
                     dtype=torch.float32).contiguous()


def interpolate_volume_at_coordinates(volume, coords_vox_corner, method="gather"):
    """Trilinear interpolation of every feature at every point, in one call.

    Parameters
    ----------
    volume : torch.Tensor or np.ndarray, shape (X, Y, Z, F)
        Ideally the output of ``prepare_volume_for_interpolation`` (then no
        copy is made); anything else is prepared on the fly.
    coords_vox_corner : torch.Tensor or np.ndarray, shape (P, 3)
        Points in voxel space, corner origin (all points of all streamlines
        of one subject). Moved to the volume's device; float64 coordinates
        are kept in float64 to compute the weights.
    method : str
        ``"gather"`` (fastest on CPU) or ``"grid_sample"``.

    Returns
    -------
    torch.Tensor, shape (P, F), float32, on the volume's device.
        Exact voxel values at voxel centres; outside the volume, values of
        the clamped coordinates (border replication, see module docstring).
    """
    if method not in INTERPOLATION_METHODS:
        raise DwiMLUserError(
            f"method: expected one of {INTERPOLATION_METHODS}, found {method!r}.")
    if not _is_prepared(volume):
        volume = prepare_volume_for_interpolation(volume)
    coords = _as_coordinates(coords_vox_corner, volume.device)
    interpolate_chunk = (_interpolate_gather if method == "gather"
                         else _interpolate_grid_sample)
    if len(coords) <= _CHUNK_NB_POINTS:
        # One chunk (a tracking step): no output to fill.
        return interpolate_chunk(volume, coords).contiguous()
    output = torch.empty((len(coords), volume.shape[3]), dtype=torch.float32,
                         device=volume.device)
    for start in range(0, len(coords), _CHUNK_NB_POINTS):
        stop = start + _CHUNK_NB_POINTS
        output[start:stop] = interpolate_chunk(volume, coords[start:stop])
    return output


def _as_coordinates(coords, device):
    """(P, 3) floating tensor on ``device``; float64 stays float64."""
    if isinstance(coords, np.ndarray):
        coords = torch.from_numpy(coords)
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 \
            or coords.shape[1] != 3:
        shape = tuple(getattr(coords, "shape", ()))
        raise DwiMLUserError(
            f"coords_vox_corner: expected a (P, 3) array of voxel coordinates, "
            f"found shape {shape}.")
    # A tracking step's points are float32 on the volume's device already:
    # no call (each costs as much as a small operation).
    if coords.dtype in _COORDINATE_DTYPES and coords.device == device:
        return coords
    dtype = torch.float64 if coords.dtype == torch.float64 else torch.float32
    return coords.to(device=device, dtype=dtype)


def _is_prepared(volume):
    """True for what :func:`prepare_volume_for_interpolation` returns: a
    contiguous float32 4D tensor (checked without a torch call)."""
    return (isinstance(volume, torch.Tensor) and volume.dtype == torch.float32
            and volume.dim() == 4 and min(volume.shape) >= 1
            and volume.is_contiguous())


def _interpolate_gather(volume, coords):
    """Flat-table implementation: 8 weighted rows per point, one fused call.

    The rows and weights come from :func:`_cpu_rows_and_weights` for many
    points on the CPU (a batch), else from :func:`_torch_rows_and_weights`
    (a GPU, or the few points of a tracking step): the same values, bit for
    bit.
    """
    constants = _grid_constants(tuple(volume.shape[:3]), volume.device,
                                coords.dtype)
    if (volume.device.type == "cpu"
            and len(coords) > _BROADCAST_MAX_NB_POINTS):
        rows, weights = _cpu_rows_and_weights(coords, volume.shape,
                                              constants[4])
    else:
        rows, weights = _torch_rows_and_weights(coords, *constants)
    return _weighted_rows(volume, rows, weights)


def _torch_rows_and_weights(coords, lowest_centre, upper_centre, lower_max,
                            strides, corner_steps, corner_factor_columns):
    """The (P, 8) rows of the corners in the flat table and their weights.

    For many points the weights are built with a dozen passes over 1D
    columns: torch's broadcasting over tiny trailing dimensions ((P, 2, 1)
    x (P, 1, 2)) or fancy indexing of columns is several times slower than
    the gather itself. For a few points (a tracking step) the number of
    calls counts more than their size: :func:`_few_point_weights` takes a
    handful instead of 16.
    """
    centred = torch.clamp(coords - 0.5, min=lowest_centre, max=upper_centre)
    # Lower corner at most dim - 2, so that lower + 1 is always a voxel (when
    # dim >= 2; at the last centre the upper weight is exactly 1). The 8
    # corners are then the lower one plus the same 8 row steps for every
    # point (a step is 0 along an axis of size 1).
    # In the coordinates' dtype (integers, exact) until the rows need them:
    # fewer conversions than with an integer lower corner, the same values.
    lower_corner = torch.minimum(centred.floor(), lower_max)
    fraction = centred - lower_corner
    if fraction.dtype != torch.float32:
        fraction = fraction.float()
    lower = lower_corner.long()
    # Row of the lower corner in the flat (X*Y*Z, F) table of a C-contiguous
    # volume (integer matrix products exist on the CPU only).
    base = (lower @ strides if lower.device.type == "cpu"
            else (lower * strides).sum(dim=1))
    rows = base.unsqueeze(1) + corner_steps
    weights = (_few_point_weights(fraction, corner_factor_columns)
               if len(fraction) <= _BROADCAST_MAX_NB_POINTS
               else _weights(fraction))
    return rows, weights


def _cpu_rows_and_weights(coords, shape, corner_steps):
    """:func:`_torch_rows_and_weights` for many points on the CPU, computed
    with numpy one axis at a time (rows as int32 when they fit).

    The same float operations in the same order as the torch code (the same
    bits), in 60 % of its time for a batch of 7 000 points: in torch and
    numpy alike, broadcasting (P, 3) against (3,) or (P, 1) against (8,)
    runs a slow loop per row, while one column with scalar bounds does not.
    """
    row_dtype = np.int32 if math.prod(shape[:3]) < 2 ** 31 else np.int64
    return _numpy_rows_and_weights(coords.numpy(), shape, corner_steps.tolist(),
                                   row_dtype)


def _numpy_rows_and_weights(points, dims, corner_steps, row_dtype):
    """Rows and weights of :func:`_cpu_rows_and_weights`.

    ``dims`` is the grid's shape, 3 ints, or 3 (P,) int arrays (a grid per
    point); ``corner_steps`` the 8 row steps, ints or (P,) arrays. Whole
    columns against scalars or columns: no per-row loop either way.
    """
    base = np.zeros(len(points), dtype=row_dtype)
    upper, lower = [], []
    strides = (dims[1] * dims[2], dims[2], 1)
    for axis, stride in enumerate(strides):
        centred = points[:, axis] - 0.5
        # Bounds in the points' dtype: exact small integers either way.
        np.clip(centred, 0, _as_float(dims[axis] - 1, centred.dtype),
                out=centred)
        corner = np.floor(centred)
        np.minimum(corner, _as_float(np.maximum(dims[axis] - 2, 0),
                                     centred.dtype), out=corner)
        fraction = (centred - corner).astype(np.float32, copy=False)
        upper.append(fraction)
        lower.append(1 - fraction)
        corner = corner.astype(row_dtype)
        if not isinstance(stride, int) or stride != 1:
            corner *= np.asarray(stride, dtype=row_dtype)
        base += corner
    rows = np.empty((len(points), 8), dtype=row_dtype)
    weights = np.empty((len(points), 8), dtype=np.float32)
    for corner, step in enumerate(corner_steps):
        np.add(base, step, out=rows[:, corner], dtype=row_dtype)
    # As _weights: w_x * w_y, then times w_z; x slowest, z fastest.
    corner = 0
    for weight_x in (lower[0], upper[0]):
        for weight_y in (lower[1], upper[1]):
            weight_xy = weight_x * weight_y
            np.multiply(weight_xy, lower[2], out=weights[:, corner])
            np.multiply(weight_xy, upper[2], out=weights[:, corner + 1])
            corner += 2
    return torch.from_numpy(rows), torch.from_numpy(weights)


def _as_float(bound, dtype):
    """An int bound, or a (P,) int array of them, in ``dtype``."""
    return (dtype.type(bound) if np.ndim(bound) == 0
            else np.asarray(bound).astype(dtype))


def interpolate_volumes_at_runs(volumes, run_bounds, coords_vox_corner):
    """:func:`interpolate_volume_at_coordinates` of consecutive runs of
    points, each in its own volume, with one computation of the corners.

    A batch mixing many subjects interpolated subject by subject paid the
    fixed cost of a call (~20 operations) per subject; here the corner rows
    and weights of all points come from one pass, and each run costs one
    gather in its volume. Row for row the same bits as one call per run.

    Parameters
    ----------
    volumes : list of torch.Tensor, each (X_r, Y_r, Z_r, F)
        As returned by :func:`prepare_volume_for_interpolation`, on the
        CPU, with the same F.
    run_bounds : sequence of int, (R + 1,)
        Run r is ``coords_vox_corner[run_bounds[r]:run_bounds[r + 1]]``.
    coords_vox_corner : torch.Tensor, shape (P, 3), float32 or float64
        Voxel space, corner origin, on the CPU.

    Returns
    -------
    torch.Tensor, shape (P, F), float32.
    """
    bounds = np.asarray(run_bounds, dtype=np.int64)
    shapes = np.array([volume.shape[:3] for volume in volumes],
                      dtype=np.int64)
    if len(volumes) != len(bounds) - 1 or len(volumes) == 0 or not all(
            _is_prepared(volume) and volume.device.type == "cpu"
            and volume.shape[3] == volumes[0].shape[3] for volume in volumes):
        raise DwiMLUserError(
            "volumes: expected one prepared CPU (X, Y, Z, F) float32 volume "
            "per run, all of the same F.")
    counts = np.diff(bounds)
    dims = [np.repeat(shapes[:, axis], counts) for axis in range(3)]
    steps = [np.repeat(column, counts) for column in
             _corner_steps_of_shapes(shapes).T]
    row_dtype = (np.int32 if int(shapes.prod(axis=1).max()) < 2 ** 31
                 else np.int64)
    coords = _as_coordinates(coords_vox_corner, torch.device("cpu"))
    output = torch.empty((len(coords), volumes[0].shape[3]),
                         dtype=torch.float32)
    # In chunks of runs, as interpolate_volume_at_coordinates in chunks of
    # points: the corner tables stay small.
    # Per run, only slices and the gather: ~20 us where the tensors built
    # per run cost as much again.
    nb_features = volumes[0].shape[3]
    points_bounds = bounds.tolist()
    first = 0
    while first < len(volumes):
        last = int(np.searchsorted(bounds, bounds[first] + _CHUNK_NB_POINTS,
                                   side="right")) - 1
        last = min(max(last, first + 1), len(volumes))
        start, stop = points_bounds[first], points_bounds[last]
        rows, weights = _numpy_rows_and_weights(
            coords[start:stop].numpy(),
            [column[start:stop] for column in dims],
            [column[start:stop] for column in steps], row_dtype)
        rows, weights = rows.reshape(-1), weights.reshape(-1)
        bag_offsets = torch.arange(0, rows.numel(), 8, dtype=rows.dtype)
        for run in range(first, last):
            lo, hi = points_bounds[run], points_bounds[run + 1]
            if hi > lo:
                output[lo:hi] = _bag_sums(
                    volumes[run].view(-1, nb_features),
                    rows[8 * (lo - start):8 * (hi - start)],
                    bag_offsets[:hi - lo],
                    weights[8 * (lo - start):8 * (hi - start)])
        first = last
    return output


def _corner_steps_of_shapes(shapes):
    """(R, 8) row steps from the lower corner to each corner, per grid."""
    strides = np.stack((shapes[:, 1] * shapes[:, 2], shapes[:, 2],
                        np.ones(len(shapes), dtype=np.int64)), axis=1)
    corners = _CORNERS.numpy()
    return ((corners[None] * (strides * (shapes > 1))[:, None, :])
            .sum(axis=2))


def _weighted_rows(volume, rows, weights):
    """Sum of each point's 8 weighted rows of the flat table of ``volume``:
    the kernel of ``embedding_bag(rows, table, mode="sum",
    per_sample_weights=weights)`` without its Python checks (bags of 8
    rows; mode 0 is "sum")."""
    table = volume.reshape(-1, volume.shape[3])
    offsets = torch.arange(0, rows.numel(), 8, dtype=rows.dtype,
                           device=rows.device)
    return _bag_sums(table, rows.reshape(-1), offsets, weights.reshape(-1))


def _bag_sums(table, flat_rows, bag_offsets, flat_weights):
    """``embedding_bag``'s sums of bags of 8 weighted rows of ``table``."""
    return torch.embedding_bag(table, flat_rows, bag_offsets, False, 0,
                               False, flat_weights, False, None)[0]


def _weights(fraction):
    """(P, 8) corner weights, ``w_x * w_y`` then times ``w_z``, from 1D
    columns: fastest for many points."""
    upper_x, upper_y, upper_z = fraction.unbind(1)
    lower_x, lower_y, lower_z = (1 - fraction).unbind(1)
    weights_xy = [weight_x * weight_y for weight_x in (lower_x, upper_x)
                  for weight_y in (lower_y, upper_y)]
    # Same corner order as _CORNERS: x slowest, z fastest.
    weights = torch.empty((len(fraction), 8), dtype=fraction.dtype,
                          device=fraction.device)
    for corner, weight_xy in enumerate(weights_xy):
        torch.mul(weight_xy, lower_z, out=weights[:, 2 * corner])
        torch.mul(weight_xy, upper_z, out=weights[:, 2 * corner + 1])
    return weights


def _few_point_weights(fraction, corner_factor_columns):
    """:func:`_weights` (the same products, bit for bit) in a few
    operations on (P, 8) tables instead of 16 on columns: fewer calls for
    the few points of a tracking step, slower for many points. One gather
    gives each corner its x, y and z factors (no Python indexing, which
    costs more than the products at a step's size)."""
    factors = torch.stack((1 - fraction, fraction), dim=2).view(-1, 6)
    weight_x, weight_y, weight_z = factors.index_select(
        1, corner_factor_columns).view(-1, 3, 8).unbind(1)
    return weight_x * weight_y * weight_z


def _grid_constants(shape, device, dtype):
    """Per-grid constants of the gather, cached by (shape, device, dtype).

    Returns, on ``device``: the first and the last voxel centre ``0`` and
    ``dims - 1`` (shifted by half a voxel) in the coordinates' ``dtype``,
    the largest lower corner ``max(dims - 2, 0)`` (also in ``dtype``), the
    row strides of the flat table, the row steps from the lower corner to
    each of the 8 corners and the columns of each corner's factors
    (:func:`_few_point_weights`).
    """
    key = (shape, str(device), dtype)
    constants = _GRID_CONSTANTS.get(key)
    if constants is None:
        # Plain tensors even when first asked under torch.inference_mode.
        with torch.inference_mode(False):
            dims = torch.tensor(shape, device=device)
            strides = torch.tensor((shape[1] * shape[2], shape[2], 1),
                                   device=device)
            corner_steps = (_CORNERS.to(device) * strides * (dims > 1)).sum(
                dim=1)
            constants = (torch.zeros(3, dtype=dtype, device=device),
                         (dims - 1).to(dtype), (dims - 2).clamp(min=0).to(dtype),
                         strides, corner_steps,
                         _CORNER_FACTOR_COLUMNS.to(device))
        _GRID_CONSTANTS[key] = constants
    return constants


def _interpolate_grid_sample(volume, coords):
    """``grid_sample`` implementation (input D, H, W = X, Y, Z)."""
    dims = torch.tensor(volume.shape[:3], device=volume.device, dtype=coords.dtype)
    # Channel-last strides (a permuted view) are faster here than a copy.
    channels_first = volume.permute(3, 0, 1, 2)[None]
    # The grid's last axis is (W, H, D) = (z, y, x).
    grid = (2 * coords / dims - 1).flip(-1).to(torch.float32)
    sampled = torch_functional.grid_sample(
        channels_first, grid.reshape(1, 1, 1, -1, 3), mode="bilinear",
        padding_mode="border", align_corners=False)
    return sampled.reshape(volume.shape[3], -1).T
