"""Tractograms for the scoring and connectivity tests.

All streamlines here are in voxel space with a corner origin: the centre of
voxel (i, j, k) is at (i + .5, j + .5, k + .5).
"""
import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import save_tractogram
from nibabel.streamlines import ArraySequence

from dwi_ml.data.synthetic.bundles import (
    make_bundle_streamlines,
    make_centrelines,
)
from dwi_ml.data.synthetic.subject import (
    bundle_radius_mm,
    centreline_margin_mm,
)

GRID = (10, 10, 10)
# 2 mm voxels and a shift: files go through RAS mm, the scores must not.
GRID_AFFINE = np.array([[2., 0., 0., -10.], [0., 2., 0., -7.],
                        [0., 0., 2., 3.], [0., 0., 0., 1.]])
VOXEL_CENTRES = np.arange(10) + 0.5


def line_along_x(y, z, xs=VOXEL_CENTRES):
    """Points (x, y, z) for each x: a straight streamline along x."""
    return np.column_stack([xs, np.full(len(xs), y), np.full(len(xs), z)])


def hand_reference():
    """Two bundles of one straight streamline each, labels 1 and 2.

    Bundle 1 runs along x through the voxels (x, 2, 2), bundle 2 through
    (x, 7, 7). End regions: x in {0, 1} (head) or {8, 9} (tail), with
    y, z in {1, 2, 3} (bundle 1) or {6, 7, 8} (bundle 2).
    """
    return (ArraySequence([line_along_x(2.5, 2.5), line_along_x(7.5, 7.5)]),
            np.array([1, 2]))


def hand_tracked():
    """Five tracked streamlines, one of each case (see test_scoring)."""
    steps = np.arange(6)
    return ArraySequence([
        line_along_x(2.5, 2.5),                 # copy of bundle 1: VC
        line_along_x(8.7, 7.5),                 # bundle 2 moved 1.2: IC
        np.column_stack([np.full(6, .5), 2.5 + steps, 2.5 + steps]),  # IC
        line_along_x(5.5, 5.5),                 # between the bundles: NC
        line_along_x(2.5, 2.5, VOXEL_CENTRES[:5]),  # half of bundle 1: NC
    ])


def synthetic_reference(nb_bundles=3, nb_per_bundle=60, shape=(30, 30, 30),
                        seed=0):
    """Curved bundles of the synthetic generator, in 1 mm voxels.

    With 1 mm voxels and a corner origin, the generator's VOXMM points are
    voxel coordinates.

    Returns
    -------
    streamlines : ArraySequence, labels : np.ndarray (1..nb_bundles)
    """
    rng = np.random.default_rng(seed)
    voxel_size = np.ones(3)
    centrelines = make_centrelines(
        nb_bundles, np.asarray(shape, dtype=float),
        centreline_margin_mm(shape, voxel_size), rng)
    bundles = [make_bundle_streamlines(
        centreline, nb_per_bundle, 0.5, bundle_radius_mm(shape, voxel_size),
        rng) for centreline in centrelines]
    streamlines = ArraySequence([s for bundle in bundles for s in bundle])
    labels = np.repeat(np.arange(1, nb_bundles + 1), nb_per_bundle)
    return streamlines, labels


def random_lines(nb_lines, shape, rng, nb_points=40):
    """Straight lines between two uniform random points of the volume."""
    starts = rng.uniform(0, 1, (nb_lines, 3)) * shape
    ends = rng.uniform(0, 1, (nb_lines, 3)) * shape
    t = np.linspace(0., 1., nb_points)[None, :, None]
    points = starts[:, None, :] + t * (ends - starts)[:, None, :]
    return ArraySequence(list(points))


def save_nifti(path, shape=GRID, affine=GRID_AFFINE, data=None):
    """Save a NIfTI (ones, or ``data``) on the grid; return its path."""
    if data is None:
        data = np.ones(shape, dtype=np.uint8)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def save_trx_with_groups(path, streamlines_vox, nifti_path, groups):
    """Save voxel-space (corner) streamlines as .trx with named groups
    (name -> streamline indices), the TRX way of storing bundles."""
    from trx.trx_file_memmap import TrxFile
    from trx.trx_file_memmap import save as save_trx
    sft = StatefulTractogram(streamlines_vox, nifti_path, Space.VOX,
                             origin=Origin.TRACKVIS)
    trx = TrxFile.from_sft(sft)
    trx.groups = {name: np.asarray(ids, dtype=np.uint32)
                  for name, ids in groups.items()}
    save_trx(trx, str(path))
    trx.close()
    return str(path)


def save_trk(path, streamlines_vox, nifti_path, labels=None, key="bundle"):
    """Save voxel-space (corner) streamlines as .trk on a NIfTI's grid."""
    dps = {} if labels is None else {key: np.asarray(labels, float)[:, None]}
    sft = StatefulTractogram(streamlines_vox, nifti_path, Space.VOX,
                             origin=Origin.TRACKVIS,
                             data_per_streamline=dps)
    save_tractogram(sft, str(path), bbox_valid_check=False)
    return str(path)
