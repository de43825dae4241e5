"""NIfTI files: their extensions, and an atomic write."""
import os

import nibabel as nib

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
