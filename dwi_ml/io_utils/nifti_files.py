"""NIfTI files: their extensions, a scanner-space image, an atomic write."""

import nibabel as nib
import numpy as np

from dwi_ml.io_utils.arg_checks import check_extension
from dwi_ml.io_utils.atomic import atomic_output_file_with_extension

NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def check_nifti_extension(path, what="output"):
    """Raise a one-line user error unless ``path`` ends in .nii or .nii.gz;
    ``what`` names the file in the message."""
    check_extension(path, NIFTI_EXTENSIONS, what)


def scanner_image(data, affine):
    """A NIfTI image of ``data`` whose affine is the scanner space's in mm:
    sform and qform codes 1 ('scanner'), units mm. (A bare
    ``Nifti1Image(data, affine)`` writes sform code 2, qform code 0 and no
    units: tools that read the qform see no orientation.)"""
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def save_nifti_atomic(image, out_path):
    """Save ``image`` to ``out_path`` (.nii or .nii.gz) atomically."""
    with atomic_output_file_with_extension(out_path) as tmp_path:
        nib.save(image, tmp_path)
