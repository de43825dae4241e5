"""Voxel masks of streamlines, as sorted arrays of flat voxel indices.

Scoring and connectivity compare tractograms voxel by voxel. A mask here is
a sorted array of unique flat voxel indices (C order over the grid's
``shape``), not a boolean volume: a bundle crosses a few thousand voxels of
millions, and a sorted index array is tested with one ``np.isin`` whatever
the size of the volume.

Every function takes points in voxel space with a corner origin (dipy
``Space.VOX``, ``Origin.TRACKVIS``): point ``p`` lies in voxel
``floor(p)``, and the voxel ``(i, j, k)`` spans ``[i, i + 1)`` on the first
axis, and so on.
"""
import numpy as np
from nibabel.streamlines import ArraySequence

from dwi_ml.data.packed import packed_arrays

OUTSIDE = -1  # flat index of a point outside the grid


def point_voxel_indices(points_vox, shape):
    """Flat index of the voxel holding each point.

    Parameters
    ----------
    points_vox : np.ndarray, shape (P, 3)
        Points in voxel space, corner origin.
    shape : tuple of 3 int
        Grid size in voxels.

    Returns
    -------
    np.ndarray, shape (P,), int64
        C-order flat voxel index, or ``OUTSIDE`` (-1) for points outside the
        grid.
    """
    shape = np.asarray(shape, dtype=np.int64)
    voxels = np.floor(np.asarray(points_vox, dtype=np.float64).reshape(-1, 3))
    # NaN points (empty streamlines) compare False, so they are outside.
    inside = np.all((voxels >= 0) & (voxels < shape), axis=1)
    flat = np.full(len(voxels), OUTSIDE, dtype=np.int64)
    flat[inside] = np.ravel_multi_index(
        voxels[inside].astype(np.int64).T, tuple(shape))
    return flat


def voxel_set(flat_indices):
    """The mask of the given flat indices: sorted, unique, without OUTSIDE."""
    flat_indices = np.asarray(flat_indices, dtype=np.int64)
    return np.unique(flat_indices[flat_indices != OUTSIDE])


def in_voxel_set(flat_indices, mask):
    """Whether each flat index lies in ``mask`` (OUTSIDE never does)."""
    return np.isin(flat_indices, mask)


def dilate_voxel_set(mask, shape, radius=1):
    """Dilate a mask by ``radius`` voxels along each axis (a cube).

    With ``radius=1`` each voxel adds its 26 neighbours: a streamline that
    ends one voxel beside the reference, even diagonally, is still in the
    region.

    Parameters
    ----------
    mask : np.ndarray, shape (M,), int64
        Sorted unique flat voxel indices.
    shape : tuple of 3 int
    radius : int

    Returns
    -------
    np.ndarray, int64
        Sorted unique flat indices of the dilated mask, inside the grid.
    """
    shape = np.asarray(shape, dtype=np.int64)
    voxels = np.stack(np.unravel_index(np.asarray(mask, dtype=np.int64),
                                       tuple(shape)), axis=1)
    steps = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"),
                       axis=-1).reshape(-1, 3)
    neighbours = (voxels[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    inside = np.all((neighbours >= 0) & (neighbours < shape), axis=1)
    return np.unique(np.ravel_multi_index(neighbours[inside].T, tuple(shape)))


def streamline_endpoints(streamlines):
    """First and last point of every streamline.

    Parameters
    ----------
    streamlines : nibabel ArraySequence, or list of (n, 3) arrays
        Packed streamlines (any space; the points are returned as they are).

    Returns
    -------
    heads, tails : np.ndarray, shape (N, 3), float64
        An empty streamline gets NaN points, which lie in no voxel.
    """
    if not isinstance(streamlines, ArraySequence):
        streamlines = ArraySequence(streamlines)
    data, offsets, lengths = packed_arrays(streamlines)
    data = data.astype(np.float64, copy=False)
    heads = np.full((len(lengths), 3), np.nan)
    tails = np.full((len(lengths), 3), np.nan)
    kept = lengths > 0
    heads[kept] = data[offsets[kept]]
    tails[kept] = data[offsets[kept] + lengths[kept] - 1]
    return heads, tails
