"""Simulated diffusion-weighted signal that encodes the local fibre direction.

Each voxel crossed by streamlines holds, per bundle, the mean direction of
that bundle's streamline segments (in world RAS mm space). Its signal is the
volume-weighted mean of one tensor per bundle,
``S = S0 exp(-b (l2 + (l1 - l2) (g . e1)^2))``; voxels without fibres get an
isotropic signal. Everything is vectorised over segments and voxels.
"""
import functools

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.core.sphere import HemiSphere, disperse_charges

from dwi_ml.data.packed import offsets_from_lengths, packed_arrays
from dwi_ml.data.processing.space import points_rasmm_to_vox_corner

S0 = 1000.
B_VALUE = 1000.               # s/mm^2
AXIAL_DIFFUSIVITY = 1.7e-3    # mm^2/s, along the fibre
RADIAL_DIFFUSIVITY = 0.3e-3   # mm^2/s, across the fibre
ISOTROPIC_DIFFUSIVITY = 0.9e-3
NOISE_STD = 0.01 * S0


@functools.lru_cache(maxsize=8)
def make_gradient_table(nb_directions):
    """One b=0 image then ``nb_directions`` directions spread on a hemisphere.

    The scheme depends only on ``nb_directions`` (a fixed protocol shared by
    every subject and every seed). Directions are unit vectors in world RAS
    mm space.

    Returns
    -------
    dipy.core.gradients.GradientTable
    """
    start = np.random.default_rng(0).normal(size=(nb_directions, 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    hemisphere, _ = disperse_charges(HemiSphere(xyz=start), 1000)
    bvecs = np.vstack([np.zeros((1, 3)), hemisphere.vertices])
    bvals = np.concatenate([[0.], np.full(nb_directions, B_VALUE)])
    return gradient_table(bvals, bvecs=bvecs)


def accumulate_segment_directions(streamlines_rasmm, affine, shape):
    """Sum of unit segment tangents, and segment counts, per voxel.

    Parameters
    ----------
    streamlines_rasmm : ArraySequence
        One bundle, compact (offsets == cumsum of lengths), RASMM space.
        All streamlines run the same way, so tangents need no sign flip.
    affine : np.ndarray, shape (4, 4)
        Voxel (centre origin) to RAS mm.
    shape : tuple of 3 int

    Returns
    -------
    tangent_sums : np.ndarray, shape (prod(shape), 3)
        Sum of unit tangents (RAS mm space) of the segments whose midpoint
        lies in each voxel (C-order flat index).
    counts : np.ndarray, shape (prod(shape),)
    """
    points = streamlines_rasmm.get_data()
    segments = np.diff(points, axis=0)
    midpoints = points[:-1] + segments / 2.
    voxels = np.floor(points_rasmm_to_vox_corner(midpoints, affine))
    flat = np.ravel_multi_index(voxels.astype(np.int64).T, shape)
    # Segments joining two streamlines go to an extra bin, dropped below;
    # this is cheaper than copying every other segment.
    nb_voxels = int(np.prod(shape))
    junctions = offsets_from_lengths(packed_arrays(streamlines_rasmm)[2])[1:] - 1
    flat[junctions] = nb_voxels
    tangents = segments / np.sqrt(
        np.einsum("ij,ij->i", segments, segments))[:, None]

    tangent_sums = np.stack(
        [np.bincount(flat, weights=tangents[:, axis],
                     minlength=nb_voxels + 1)[:nb_voxels]
         for axis in range(3)], axis=1)
    counts = np.bincount(flat, minlength=nb_voxels + 1)[:nb_voxels]
    return tangent_sums, counts


def simulate_dwi(tangent_sums, counts, shape, gtab, rng):
    """Simulate the DWI volume from per-bundle fibre directions.

    Parameters
    ----------
    tangent_sums : np.ndarray, shape (nb_bundles, prod(shape), 3)
        From :func:`accumulate_segment_directions`, one row per bundle.
    counts : np.ndarray, shape (nb_bundles, prod(shape))
        Segments per bundle and voxel: the volume fraction of each bundle.
    shape : tuple of 3 int
    gtab : dipy GradientTable
        Directions in the same world RAS mm space as the tangents.
    rng : np.random.Generator
        Draws the Gaussian noise.

    Returns
    -------
    np.ndarray, shape (X, Y, Z, len(gtab.bvals)), float32
        With ``shape == (X, Y, Z)``.
    """
    bvals = gtab.bvals.astype(np.float64)
    bvecs = gtab.bvecs.astype(np.float64)
    nb_volumes = len(bvals)
    isotropic = S0 * np.exp(-bvals * ISOTROPIC_DIFFUSIVITY)
    signal = np.tile(isotropic.astype(np.float32), (int(np.prod(shape)), 1))

    total_counts = counts.sum(axis=0)
    fibre_voxels = np.flatnonzero(total_counts)
    fractions = counts[:, fibre_voxels] / total_counts[fibre_voxels]
    sums = tangent_sums[:, fibre_voxels]
    norms = np.linalg.norm(sums, axis=2, keepdims=True)
    directions = np.divide(sums, norms, out=np.zeros_like(sums),
                           where=norms > 0)

    cos2 = np.einsum("bvk,dk->bvd", directions, bvecs) ** 2
    diffusivity = RADIAL_DIFFUSIVITY + \
        (AXIAL_DIFFUSIVITY - RADIAL_DIFFUSIVITY) * cos2
    per_bundle = np.exp(-bvals * diffusivity)
    signal[fibre_voxels] = S0 * np.einsum("bv,bvd->vd", fractions, per_bundle)

    signal += NOISE_STD * rng.standard_normal(signal.shape, dtype=np.float32)
    return signal.reshape(*shape, nb_volumes)
