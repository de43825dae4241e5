"""Neighbourhoods: extra points around each coordinate, spaced in mm.

A neighbourhood is a (K, 3) array of offsets in VOXEL units, centre first,
added to every point before interpolation. Offsets are defined in RAS mm along
the world axes and converted through the affine's linear part, so that on
anisotropic (or rotated) voxels the neighbours really are ``resolution_mm``
apart in mm.
"""
import itertools

import numpy as np
import torch

from dwi_ml.data.processing.interpolation import interpolate_volume_at_coordinates
from dwi_ml.data.processing.space import vectors_rasmm_to_vox
from dwi_ml.io_utils.errors import DwiMLUserError

NEIGHBORHOOD_TYPES = (None, "axes", "grid")


def get_neighborhood_offsets(neighborhood_type, radius=None, resolution_mm=None,
                             affine=None):
    """Offsets (voxel units) of the neighbours of a point, centre first.

    Parameters
    ----------
    neighborhood_type : None, "axes" or "grid"
        - None: only the centre, K = 1 (other arguments are ignored).
        - "axes": the centre, then for each layer ``l = 1..radius`` the six
          points at ``l * resolution_mm`` along +x, -x, +y, -y, +z, -z (RAS
          world axes), K = 6 * radius + 1.
        - "grid": every point of the cubic grid
          ``{-radius..radius}^3 * resolution_mm`` mm, the centre first then
          the others in lexicographic (x, y, z) order, K = (2 radius + 1)^3.
    radius : int
        Number of layers, >= 1. Required unless ``neighborhood_type`` is None.
    resolution_mm : float
        Distance in mm between two layers, > 0.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine; only its linear part is used.

    Returns
    -------
    np.ndarray, shape (K, 3), float64
        Offsets in voxel units (to add to voxel coordinates, either origin).
    """
    if neighborhood_type is None:
        return np.zeros((1, 3))
    if neighborhood_type not in NEIGHBORHOOD_TYPES:
        raise DwiMLUserError(
            f"neighborhood_type: expected one of {NEIGHBORHOOD_TYPES}, found "
            f"{neighborhood_type!r}.")
    if not _is_number(radius) or not float(radius).is_integer() or radius < 1:
        raise DwiMLUserError(
            f"radius: neighborhood_type '{neighborhood_type}' needs an integer number "
            f"of layers >= 1, found {radius!r}.")
    if not _is_number(resolution_mm) or not np.isfinite(resolution_mm) \
            or resolution_mm <= 0:
        raise DwiMLUserError(
            f"resolution_mm: neighborhood_type '{neighborhood_type}' needs a distance "
            f"between layers > 0 mm, found {resolution_mm!r}.")
    if affine is None:
        raise DwiMLUserError(
            f"affine: neighborhood_type '{neighborhood_type}' needs the subject's "
            f"4x4 voxel-to-RAS mm affine, found None.")
    radius = int(radius)
    if neighborhood_type == "axes":
        directions = np.concatenate((np.eye(3), -np.eye(3)), axis=1).reshape(6, 3)
        layers = np.arange(1, radius + 1, dtype=np.float64)
        steps = (layers[:, None, None] * directions[None]).reshape(-1, 3)
    else:
        steps = np.array(list(itertools.product(range(-radius, radius + 1),
                                                repeat=3)), dtype=np.float64)
        steps = steps[np.any(steps != 0, axis=1)]
    offsets_mm = np.concatenate((np.zeros((1, 3)), steps)) * float(resolution_mm)
    return vectors_rasmm_to_vox(offsets_mm, affine)


def _is_number(value):
    """True for real numbers (numpy ones included), False for bools and None."""
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, bool)


def interpolate_with_neighborhood(volume, coords_vox_corner, offsets_vox,
                                  method="gather"):
    """Interpolate a volume at every point and its neighbours, in one call.

    Parameters
    ----------
    volume : torch.Tensor or np.ndarray, shape (X, Y, Z, F)
        See ``interpolate_volume_at_coordinates``.
    coords_vox_corner : torch.Tensor or np.ndarray, shape (P, 3)
        Points in voxel space, corner origin.
    offsets_vox : np.ndarray or torch.Tensor, shape (K, 3)
        From ``get_neighborhood_offsets`` (voxel units, centre first).
    method : str
        Interpolation method, see ``interpolate_volume_at_coordinates``.

    Returns
    -------
    torch.Tensor, shape (P, K * F), float32, on the volume's device
        Row p holds the F features of neighbour 0 (the centre), then the F
        features of neighbour 1, etc. Neighbours outside the volume get
        border values, as in ``interpolate_volume_at_coordinates``.
    """
    if isinstance(coords_vox_corner, np.ndarray):
        coords_vox_corner = torch.from_numpy(coords_vox_corner)
    if isinstance(offsets_vox, np.ndarray):
        offsets_vox = torch.from_numpy(offsets_vox)
    if offsets_vox.dim() != 2 or offsets_vox.shape[1] != 3:
        raise DwiMLUserError(
            f"offsets_vox: expected a (K, 3) array of voxel offsets, found shape "
            f"{tuple(offsets_vox.shape)}.")
    dtype = (torch.float64 if coords_vox_corner.dtype == torch.float64
             else torch.float32)
    offsets_vox = offsets_vox.to(device=coords_vox_corner.device, dtype=dtype)
    # (P, K, 3) points, neighbour index varying fastest, so that the (P * K, F)
    # result reshapes to (P, K * F) without moving data.
    all_points = (coords_vox_corner.to(dtype)[:, None, :]
                  + offsets_vox[None]).reshape(-1, 3)
    values = interpolate_volume_at_coordinates(volume, all_points, method=method)
    return values.reshape(len(coords_vox_corner), -1)
