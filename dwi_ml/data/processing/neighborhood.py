"""Neighbourhoods: extra points around each coordinate, spaced in mm.

A neighbourhood is a (K, 3) array of offsets in VOXEL units, centre first,
added to every point before interpolation. Offsets are defined in RAS mm along
the world axes and converted through the affine's linear part, so that on
anisotropic (or rotated) voxels the neighbours really are ``resolution_mm``
apart in mm.
"""
import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dwi_ml.data.processing.interpolation import interpolate_volume_at_coordinates
from dwi_ml.data.processing.space import vectors_rasmm_to_vox
from dwi_ml.io_utils.arg_checks import check_choice, check_int, check_positive_float
from dwi_ml.io_utils.errors import DwiMLUserError

NEIGHBORHOOD_TYPES = (None, "axes", "grid")


@dataclass(frozen=True)
class Neighborhood:
    """Extra interpolation points around each streamline point.

    Validated once, here; models, the loader and the tracker share it.

    Attributes
    ----------
    type : None, "axes" or "grid"
        - None: only the centre, K = 1.
        - "axes": the centre, then for each layer ``l = 1..radius`` the six
          points at ``l * resolution_mm`` along +x, -x, +y, -y, +z, -z (RAS
          world axes), K = 6 * radius + 1.
        - "grid": every point of the cubic grid
          ``{-radius..radius}^3 * resolution_mm`` mm, the centre first then
          the others in lexicographic (x, y, z) order, K = (2 radius + 1)^3.
    radius : int or None
        Number of layers, >= 1. Required iff ``type`` is set.
    resolution_mm : float or None
        Distance in mm between two layers, > 0. Required iff ``type`` is set.
    """

    type: Optional[str] = None
    radius: Optional[int] = None
    resolution_mm: Optional[float] = None

    def __post_init__(self):
        check_choice("neighborhood_type", self.type, NEIGHBORHOOD_TYPES)
        if self.type is None:
            if self.radius is not None or self.resolution_mm is not None:
                raise DwiMLUserError(
                    "neighborhood_radius and neighborhood_resolution(_mm) "
                    "(scripts: --neighborhood_radius, "
                    "--neighborhood_resolution): expected none without a "
                    "neighborhood_type (--neighborhood_type), found "
                    f"radius {self.radius!r}, resolution "
                    f"{self.resolution_mm!r}.")
            return
        radius = self.radius
        if radius is None:
            raise DwiMLUserError(
                f"neighborhood_type '{self.type}' needs neighborhood_radius "
                "(scripts: --neighborhood_radius), an integer >= 1 of "
                "layers; found None.")
        if isinstance(radius, float) and radius.is_integer():
            radius = int(radius)
        object.__setattr__(self, "radius", check_int(
            "neighborhood_radius", radius, 1))
        object.__setattr__(self, "resolution_mm", check_positive_float(
            "neighborhood_resolution_mm", self.resolution_mm))

    @property
    def nb_neighbours(self):
        """K, the number of points per streamline point, centre included."""
        if self.type is None:
            return 1
        if self.type == "axes":
            return 1 + 6 * self.radius
        return (2 * self.radius + 1) ** 3

    def offsets_mm(self):
        """(K, 3) offsets in RAS mm along the world axes, centre first.

        Returns
        -------
        np.ndarray, shape (K, 3), float64
            Neighbour ``k`` is ``offsets_mm()[k]`` mm from its point; in the
            interpolated inputs it holds columns ``k * F`` to ``(k + 1) * F``
            (see :func:`interpolate_with_neighborhood`).
        """
        if self.type is None:
            return np.zeros((1, 3))
        if self.type == "axes":
            directions = np.concatenate((np.eye(3), -np.eye(3)),
                                        axis=1).reshape(6, 3)
            layers = np.arange(1, self.radius + 1, dtype=np.float64)
            steps = (layers[:, None, None] * directions[None]).reshape(-1, 3)
        else:
            steps = np.array(list(itertools.product(
                range(-self.radius, self.radius + 1), repeat=3)),
                dtype=np.float64)
            steps = steps[np.any(steps != 0, axis=1)]
        return np.concatenate((np.zeros((1, 3)), steps)) * self.resolution_mm

    def offsets_vox(self, affine):
        """(K, 3) offsets in voxel units, centre first.

        Parameters
        ----------
        affine : np.ndarray, shape (4, 4)
            nibabel voxel-to-RAS mm affine; only its linear part is used, so
            that on anisotropic (or rotated) voxels neighbours really are
            ``resolution_mm`` apart in mm.

        Returns
        -------
        np.ndarray, shape (K, 3), float64
            :meth:`offsets_mm` in voxel units, to add to voxel coordinates
            (either origin).
        """
        if self.type is None:
            return np.zeros((1, 3))
        if affine is None:
            raise DwiMLUserError(
                f"affine: neighborhood_type '{self.type}' needs the subject's "
                "4x4 voxel-to-RAS mm affine, found None.")
        return vectors_rasmm_to_vox(self.offsets_mm(), affine)


def get_neighborhood_offsets(neighborhood_type, radius=None, resolution_mm=None,
                             affine=None):
    """Offsets (voxel units) of the neighbours of a point, centre first.

    A shortcut for ``Neighborhood(type, radius, resolution_mm).offsets_vox``
    (see :class:`Neighborhood`); other arguments are ignored when
    ``neighborhood_type`` is None.
    """
    if neighborhood_type is None:
        return np.zeros((1, 3))
    return Neighborhood(neighborhood_type, radius,
                        resolution_mm).offsets_vox(affine)


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
