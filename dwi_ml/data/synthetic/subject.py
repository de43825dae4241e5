"""One synthetic subject, in memory: grid, bundles, DWI and white-matter mask."""
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation

from dwi_ml.data.packed import make_array_sequence, packed_arrays
from dwi_ml.data.processing.space import points_vox_corner_to_rasmm
from dwi_ml.data.synthetic.bundles import (
    make_bundle_streamlines,
    make_centrelines,
)
from dwi_ml.data.synthetic.dwi_signal import (
    accumulate_segment_directions,
    simulate_dwi,
)


@dataclass(frozen=True)
class SyntheticSubject:
    """Arrays of one subject, all on the same grid.

    Attributes
    ----------
    affine : np.ndarray, shape (4, 4)
        Voxel (centre origin) to RAS mm; float32-exact so that the NIfTI and
        .trk headers store it without rounding.
    dwi : np.ndarray, shape (X, Y, Z, 1 + nb_directions), float32
    wm_mask : np.ndarray, shape (X, Y, Z), uint8
    bundles : list of nibabel.streamlines.ArraySequence
        One per bundle, RASMM space.
    """
    affine: np.ndarray
    dwi: np.ndarray
    wm_mask: np.ndarray
    bundles: list


def make_affine(shape, voxel_size_mm, rng):
    """Axis-aligned affine, centred near the RAS origin with a random shift.

    Returns a (4, 4) float64 array whose values are exact in float32.
    """
    voxel_size_mm = np.asarray(voxel_size_mm, dtype=np.float64)
    extent_mm = np.asarray(shape) * voxel_size_mm
    affine = np.diag(np.append(voxel_size_mm, 1.))
    affine[:3, 3] = -extent_mm / 2. + rng.uniform(-5., 5., 3)
    return affine.astype(np.float32).astype(np.float64)


def bundle_radius_mm(shape, voxel_size_mm):
    """Half-width of a bundle, mm: a few voxels, growing with the volume."""
    extent_mm = np.asarray(shape) * np.asarray(voxel_size_mm)
    return max(float(np.max(voxel_size_mm)), 0.07 * float(extent_mm.min()))


def centreline_margin_mm(shape, voxel_size_mm):
    """Distance (3,) in mm that centrelines keep from the volume's faces.

    Offsets reach ``sqrt(2) * radius``; 1.25 voxels more keep every point
    at least one voxel inside, so the dilated mask stays in the volume.
    """
    voxel_size_mm = np.asarray(voxel_size_mm, dtype=np.float64)
    return (np.sqrt(2.) * bundle_radius_mm(shape, voxel_size_mm)
            + 1.25 * voxel_size_mm)


def make_subject(shape, voxel_size_mm, nb_streamlines, nb_bundles, gtab, rng):
    """Draw one subject's geometry and simulate its images.

    Parameters
    ----------
    shape : tuple of 3 int
        Volume size, voxels.
    voxel_size_mm : tuple of 3 float
    nb_streamlines : int
        Total over all bundles; the first bundles get the remainder.
    nb_bundles : int
    gtab : dipy GradientTable
        Directions in world RAS mm space.
    rng : np.random.Generator
        The subject's own generator: geometry jitter, offsets and noise.

    Returns
    -------
    SyntheticSubject
    """
    shape = tuple(int(s) for s in shape)
    voxel_size_mm = np.asarray(voxel_size_mm, dtype=np.float64)
    affine = make_affine(shape, voxel_size_mm, rng)
    extent_mm = np.asarray(shape) * voxel_size_mm
    step_mm = 0.5 * float(voxel_size_mm.min())
    radius_mm = bundle_radius_mm(shape, voxel_size_mm)

    centrelines = make_centrelines(
        nb_bundles, extent_mm, centreline_margin_mm(shape, voxel_size_mm), rng)
    per_bundle = np.full(nb_bundles, nb_streamlines // nb_bundles)
    per_bundle[:nb_streamlines % nb_bundles] += 1

    nb_voxels = int(np.prod(shape))
    crossed = np.zeros(nb_voxels, dtype=bool)
    bundles, tangent_sums, counts = [], [], []
    for centreline, nb_in_bundle in zip(centrelines, per_bundle):
        voxmm = make_bundle_streamlines(centreline, int(nb_in_bundle),
                                        step_mm, radius_mm, rng)
        points_vox = voxmm.get_data() / voxel_size_mm  # corner origin
        point_voxels = np.floor(points_vox).astype(np.int64)
        # Raises if a point left the volume, which the margins forbid.
        crossed[np.ravel_multi_index(point_voxels.T, shape)] = True

        rasmm = make_array_sequence(
            points_vox_corner_to_rasmm(points_vox, affine),
            *packed_arrays(voxmm)[1:])
        bundle_sums, bundle_counts = accumulate_segment_directions(
            rasmm, affine, shape)
        bundles.append(rasmm)
        tangent_sums.append(bundle_sums)
        counts.append(bundle_counts)

    crossed = crossed.reshape(shape)
    wm_mask = binary_dilation(crossed, structure=np.ones((3, 3, 3), bool))
    dwi = simulate_dwi(np.stack(tangent_sums), np.stack(counts), shape,
                       gtab, rng)
    return SyntheticSubject(affine=affine, dwi=dwi,
                            wm_mask=wm_mask.astype(np.uint8), bundles=bundles)
