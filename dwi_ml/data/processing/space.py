"""Conversions between voxel space (corner origin) and RAS mm.

Batches carry streamlines in voxel space with a corner origin (dipy
``Space.VOX`` + ``Origin.TRACKVIS``): the centre of voxel ``(i, j, k)`` is at
``(i + .5, j + .5, k + .5)``. The 4x4 affine is nibabel's voxel-to-RAS mm
affine, which maps voxel CENTRES (``(i, j, k)``) to mm, so a corner-origin
point ``p`` goes to mm as ``affine @ (p - 0.5)``. These are the same
conversions as dipy's ``StatefulTractogram.to_corner`` / ``to_rasmm`` /
``to_vox``, done on packed arrays without building a tractogram.
"""
import numpy as np

from dwi_ml.data.packed import make_array_sequence, packed_arrays
from dwi_ml.io_utils.errors import DwiMLUserError

# Shift from the corner origin to nibabel's centre origin, in voxels.
CORNER_TO_CENTER_SHIFT = 0.5


def check_affine(affine):
    """Return ``affine`` as a float64 (4, 4) array, or raise a user error."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise DwiMLUserError(
            f"affine: expected a (4, 4) voxel-to-RAS mm matrix, found shape "
            f"{affine.shape}.")
    return affine


def check_grid_affine(affine, owner):
    """Return a grid's affine as a float64 (4, 4) array, or refuse it.

    Parameters
    ----------
    affine : array-like
        The voxel-to-RAS mm affine of a grid.
    owner : str
        Who takes it (e.g. 'BatchedTracker'), named in the error.

    Returns
    -------
    np.ndarray, shape (4, 4)

    Raises
    ------
    DwiMLUserError
        One line naming ``owner``'s argument affine, when it is not a
        finite (4, 4) matrix whose linear part is invertible.
    """
    try:
        matrix = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.ndim == 0:
        # Type and shape: a repr may span lines (an array of strings).
        shape = getattr(affine, "shape", None)
        found = "None" if affine is None else type(affine).__name__ + (
            "" if shape is None else f" of shape {tuple(shape)}, not numbers")
    elif matrix.shape != (4, 4):
        found = f"shape {matrix.shape}"
    elif not np.all(np.isfinite(matrix)):
        found = "NaN or infinite values"
    else:
        singular_values = np.linalg.svd(matrix[:3, :3], compute_uv=False)
        if singular_values.min() > 1e-12 * singular_values.max():
            return matrix
        found = (f"a singular one (singular values "
                 f"{np.round(singular_values, 6).tolist()})")
    raise DwiMLUserError(
        f"{owner} argument affine: expected a finite (4, 4) voxel-to-RAS mm "
        f"matrix with an invertible linear part, found {found}.")


def points_vox_corner_to_rasmm(points_vox, affine):
    """Convert points from voxel space (corner origin) to RAS mm.

    Parameters
    ----------
    points_vox : np.ndarray, shape (P, 3)
        Points in voxel units, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel(centre)-to-RAS mm affine.

    Returns
    -------
    np.ndarray, shape (P, 3)
        Points in RAS mm, float64.
    """
    affine = check_affine(affine)
    centred = np.asarray(points_vox, dtype=np.float64) - CORNER_TO_CENTER_SHIFT
    return centred @ affine[:3, :3].T + affine[:3, 3]


def points_rasmm_to_vox_corner(points_mm, affine):
    """Convert points from RAS mm to voxel space (corner origin).

    Parameters
    ----------
    points_mm : np.ndarray, shape (P, 3)
        Points in RAS mm.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel(centre)-to-RAS mm affine.

    Returns
    -------
    np.ndarray, shape (P, 3)
        Points in voxel units, corner origin, float64.
    """
    inverse = np.linalg.inv(check_affine(affine))
    points_mm = np.asarray(points_mm, dtype=np.float64)
    return points_mm @ inverse[:3, :3].T + inverse[:3, 3] + CORNER_TO_CENTER_SHIFT


def vectors_rasmm_to_vox(vectors_mm, affine):
    """Convert displacement vectors from RAS mm to voxel units.

    Displacements ignore the translation and the origin: only the inverse of
    the affine's linear part applies, so anisotropic or rotated voxels give the
    right number of voxels per mm along each axis.

    Parameters
    ----------
    vectors_mm : np.ndarray, shape (P, 3)
        Displacements in RAS mm.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine.

    Returns
    -------
    np.ndarray, shape (P, 3)
        Displacements in voxel units, float64.
    """
    linear_inverse = np.linalg.inv(check_affine(affine)[:3, :3])
    return np.asarray(vectors_mm, dtype=np.float64) @ linear_inverse.T


def streamlines_vox_corner_to_rasmm(streamlines_vox, affine):
    """Convert packed streamlines from voxel space (corner origin) to RAS mm.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Packed streamlines in voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
        nibabel voxel-to-RAS mm affine.

    Returns
    -------
    nibabel ArraySequence
        Same offsets and lengths; a new float64 data array in RAS mm (rows not
        covered by any streamline are converted too).
    """
    data, offsets, lengths = packed_arrays(streamlines_vox)
    return make_array_sequence(points_vox_corner_to_rasmm(data, affine),
                               offsets, lengths)
