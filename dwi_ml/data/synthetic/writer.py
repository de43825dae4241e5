"""Files of a synthetic dataset: NIfTI, .trk, gradients, config, subject lists.

Every file is byte-identical for identical arrays: nibabel writes .nii.gz
with a zero gzip mtime and no file name, .trk and text files hold no date.
"""
import json
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import Space, StatefulTractogram
from dipy.io.streamline import save_tractogram

from dwi_ml.data.hdf5.layout import SPLITS, STREAMLINES_TYPE, VOLUME_TYPE

SUBJECTS_FOLDER = "dwi_ml_ready"
DWI_FILE = "dwi.nii.gz"
BVAL_FILE = "dwi.bval"
BVEC_FILE = "dwi.bvec"
WM_MASK_FILE = "wm_mask.nii.gz"
BUNDLES_FOLDER = "bundles"
CONFIG_FILE = "config.json"

HDF5_CONFIG = {
    "input": {"type": VOLUME_TYPE, "files": [DWI_FILE],
              "standardization": "independent", "std_mask": [WM_MASK_FILE]},
    "wm_mask": {"type": VOLUME_TYPE, "files": [WM_MASK_FILE],
                "standardization": "none"},
    "streamlines": {"type": STREAMLINES_TYPE,
                    "files": [f"{BUNDLES_FOLDER}/*.trk"]},
}


@dataclass(frozen=True)
class SubjectPaths:
    """Files of one subject (absolute paths, final location)."""
    folder: str
    dwi: str
    bval: str
    bvec: str
    wm_mask: str
    bundles: tuple


def subject_paths(subject_folder, nb_bundles):
    """Paths that :func:`write_subject` fills in ``subject_folder``."""
    width = max(2, len(str(nb_bundles)))
    bundles = tuple(
        os.path.join(subject_folder, BUNDLES_FOLDER,
                     f"bundle_{idx + 1:0{width}d}.trk")
        for idx in range(nb_bundles))
    return SubjectPaths(
        folder=subject_folder,
        dwi=os.path.join(subject_folder, DWI_FILE),
        bval=os.path.join(subject_folder, BVAL_FILE),
        bvec=os.path.join(subject_folder, BVEC_FILE),
        wm_mask=os.path.join(subject_folder, WM_MASK_FILE),
        bundles=bundles)


def _nifti(data, affine):
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_subject(paths, subject, gtab):
    """Write one :class:`SyntheticSubject` at ``paths`` (a SubjectPaths).

    The gradient files follow the FSL text layout. Since the affine is
    axis-aligned with positive voxel sizes, the bvecs are unit vectors both
    along the voxel axes and in world RAS space (dipy's convention; no
    flip of x is applied).
    """
    os.makedirs(os.path.join(paths.folder, BUNDLES_FOLDER))
    dwi_image = _nifti(subject.dwi, subject.affine)
    nib.save(dwi_image, paths.dwi)
    nib.save(_nifti(subject.wm_mask, subject.affine), paths.wm_mask)
    np.savetxt(paths.bval, gtab.bvals[None, :], fmt="%g")
    np.savetxt(paths.bvec, gtab.bvecs.T, fmt="%.8f")
    for path, streamlines in zip(paths.bundles, subject.bundles):
        sft = StatefulTractogram(streamlines, dwi_image, Space.RASMM)
        # Points lie a voxel inside the volume by construction (see
        # subject.centreline_margin_mm); dipy's check would copy them twice.
        save_tractogram(sft, path, bbox_valid_check=False)


def split_subjects(subject_ids):
    """Training, validation and testing IDs.

    The last subject is for testing and the one before for validation, as
    long as one training subject remains: 1 subject gives (1, 0, 0), 2 give
    (1, 1, 0), N >= 3 give (N - 2, 1, 1).

    Returns
    -------
    dict
        split name (``dwi_ml.data.hdf5.layout.SPLITS``) -> list of IDs.
    """
    subject_ids = list(subject_ids)
    nb_held_out = min(2, len(subject_ids) - 1)
    nb_training = len(subject_ids) - nb_held_out
    held_out = subject_ids[nb_training:]
    return {"training": subject_ids[:nb_training],
            "validation": held_out[:1],
            "testing": held_out[1:2]}


def subject_list_path(out_folder, split):
    """``OUT_FOLDER/<split>_subjs.txt``."""
    return os.path.join(out_folder, f"{split}_subjs.txt")


def write_subject_lists(out_folder, splits):
    """One ``<split>_subjs.txt`` per split, one ID per line (empty if none)."""
    for split in SPLITS:
        with open(subject_list_path(out_folder, split), "w") as f:
            f.writelines(f"{subject_id}\n" for subject_id in splits[split])


def write_config(out_folder):
    """The HDF5 creation config naming the files of each subject."""
    with open(os.path.join(out_folder, CONFIG_FILE), "w") as f:
        json.dump(HDF5_CONFIG, f, indent=4)
        f.write("\n")
