"""Tiny subjects for the HDF5 creation tests, built with nibabel and dipy.

Each subject folder holds, on one anisotropic grid (2 x 2.5 x 3 mm voxels,
translated):

- dwi/fa.nii.gz (3-D) and dwi/peaks.nii.gz (4-D, 3 features), non-zero
  only inside a box, with different means and scales;
- masks/wm.nii.gz and masks/gm.nii.gz, two overlapping boxes;
- tractograms/bundle_1.trk and bundle_2.trk (data_per_streamline 'weight'
  and 'label'), bundle_3.tck and bundle_4.trx.

Streamlines are polylines through 3 random points of the volume, so they
stay inside it; they are known in voxel space with a corner origin.
"""
import os

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import save_tractogram

SHAPE = (10, 12, 8)
VOXEL_SIZES = (2.0, 2.5, 3.0)
TRANSLATION = (-10.0, 7.5, 3.0)
TRACTOGRAMS = ("bundle_1.trk", "bundle_2.trk", "bundle_3.tck",
               "bundle_4.trx")
NB_STREAMLINES = {"bundle_1.trk": 6, "bundle_2.trk": 4, "bundle_3.tck": 5,
                  "bundle_4.trx": 3}
DATA_BOX = (slice(1, 9), slice(1, 11), slice(1, 7))
WM_BOX = (slice(2, 7), slice(2, 9), slice(1, 6))
GM_BOX = (slice(5, 9), slice(6, 11), slice(2, 7))

CONFIG = {
    "input": {"type": "volume",
              "files": ["dwi/fa.nii.gz", "dwi/peaks.nii.gz"],
              "standardization": "none"},
    "wm_mask": {"type": "volume", "files": ["masks/wm.nii.gz"]},
    "streamlines": {"type": "streamlines",
                    "files": ["tractograms/*.trk"],
                    "dps_keys": ["weight"]},
}


def grid_affine(voxel_sizes=VOXEL_SIZES, translation=TRANSLATION):
    """Voxel (centre origin) to RAS mm affine of the test grid."""
    affine = np.diag(list(voxel_sizes) + [1.0])
    affine[:3, 3] = translation
    return affine


def random_streamlines(rng, nb_streamlines, shape=SHAPE):
    """Polylines through 3 random points, in voxel space, corner origin."""
    streamlines = []
    for _ in range(nb_streamlines):
        corners = rng.uniform(0.2, np.asarray(shape) - 0.2, size=(3, 3))
        nb_per_segment = rng.integers(4, 9)
        t = np.linspace(0, 1, nb_per_segment, endpoint=False)[:, None]
        points = np.concatenate([
            corners[0] + t * (corners[1] - corners[0]),
            corners[1] + t * (corners[2] - corners[1]),
            corners[2:]])
        streamlines.append(points.astype(np.float32))
    return streamlines


def save_nifti(path, data, affine=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    affine = grid_affine() if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)


def save_streamlines(path, streamlines_vox, reference=None, dps=None):
    """Save streamlines given in voxel space (corner) to .trk/.tck/.trx."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if reference is None:
        reference = nib.Nifti1Image(np.zeros(SHAPE, np.float32),
                                    grid_affine())
    sft = StatefulTractogram(streamlines_vox, reference, Space.VOX,
                             origin=Origin.TRACKVIS, data_per_streamline=dps)
    save_tractogram(sft, path, bbox_valid_check=False)


def write_subject(root, subject, seed=0, shape=SHAPE):
    """Write one subject; return what was written, for comparisons.

    Returns
    -------
    dict
        'fa' (X, Y, Z), 'peaks' (X, Y, Z, 3), 'wm' and 'gm' (bool masks),
        'streamlines' {file name: list of (n, 3) arrays in VOX corner},
        'dps' {file name: {key: (N, 1) array}}.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, subject)
    inside = np.zeros(shape, bool)
    inside[DATA_BOX] = True
    fa = np.where(inside, rng.uniform(0.1, 1.0, shape), 0)
    peaks = np.where(inside[..., None],
                     rng.normal([5.0, -2.0, 40.0], [3.0, 1.0, 10.0],
                                shape + (3,)), 0)
    wm = np.zeros(shape, bool)
    wm[WM_BOX] = True
    gm = np.zeros(shape, bool)
    gm[GM_BOX] = True
    save_nifti(os.path.join(folder, "dwi", "fa.nii.gz"), fa)
    save_nifti(os.path.join(folder, "dwi", "peaks.nii.gz"), peaks)
    save_nifti(os.path.join(folder, "masks", "wm.nii.gz"), wm)
    save_nifti(os.path.join(folder, "masks", "gm.nii.gz"), gm)

    reference = nib.Nifti1Image(np.zeros(shape, np.float32), grid_affine())
    written = {"fa": fa.astype(np.float32),
               "peaks": peaks.astype(np.float32), "wm": wm, "gm": gm,
               "streamlines": {}, "dps": {}}
    for name in TRACTOGRAMS:
        streamlines = random_streamlines(rng, NB_STREAMLINES[name], shape)
        dps = None
        if name.endswith(".trk"):
            nb = len(streamlines)
            dps = {"weight": rng.uniform(0, 1, (nb, 1)).astype(np.float32),
                   "label": np.arange(nb, dtype=np.float32)[:, None]}
        save_streamlines(os.path.join(folder, "tractograms", name),
                         streamlines, reference, dps)
        written["streamlines"][name] = streamlines
        written["dps"][name] = dps
    return written


def write_dataset(root, subjects, seed=0):
    """Write several subjects; return {subject: write_subject's dict}."""
    return {subject: write_subject(root, subject, seed + index)
            for index, subject in enumerate(subjects)}


def write_subject_lists(folder, training, validation=(), testing=()):
    """Write the three subject list files; return their paths."""
    paths = []
    for name, subjects in (("training", training),
                           ("validation", validation),
                           ("testing", testing)):
        path = os.path.join(folder, f"{name}_subjs.txt")
        with open(path, "w") as file:
            file.write("\n".join(subjects) + "\n")
        paths.append(path)
    return paths


def vox_to_mm_lengths(streamlines_vox, voxel_sizes=VOXEL_SIZES):
    """Length in mm of voxel-space polylines on the axis-aligned test grid."""
    return np.array([
        np.linalg.norm(np.diff(s, axis=0) * voxel_sizes, axis=1).sum()
        for s in streamlines_vox])
