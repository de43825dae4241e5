"""NIfTI files: their extensions, a scanner-space image, an atomic write."""
import os

import nibabel as nib
import numpy as np

from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError

NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def extension_of(path):
    """The lower-case extension of ``path``, '.nii.gz' counted as one."""
    lower = path.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def check_nifti_extension(path, what="output"):
    """Raise a one-line user error unless ``path`` ends in .nii or .nii.gz;
    ``what`` names the file in the message."""
    if extension_of(path) not in NIFTI_EXTENSIONS:
        raise DwiMLUserError(
            f"{what} '{path}': expected one of the extensions "
            f"{', '.join(NIFTI_EXTENSIONS)}, found "
            f"'{extension_of(path) or 'none'}'.")


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
    with atomic_output_file(out_path) as tmp_path:
        # nibabel picks the format from the extension, which the
        # temporary name lacks.
        tmp_with_extension = tmp_path + extension_of(out_path)
        try:
            nib.save(image, tmp_with_extension)
            os.replace(tmp_with_extension, tmp_path)
        finally:
            if os.path.exists(tmp_with_extension):
                os.remove(tmp_with_extension)
