"""Tractogram file formats: the one list of extensions dwi_ml reads and writes."""
import os

from dwi_ml.io_utils.arg_checks import check_extension, extension_of
from dwi_ml.io_utils.errors import DwiMLUserError

TRACTOGRAM_EXTENSIONS = (".trk", ".tck", ".trx")


def tractogram_extension(path):
    """The lower-case extension of a tractogram path ('.trk', ...; a
    compressed file's in full, e.g. '.nii.gz')."""
    return extension_of(path)


def check_tractogram_extension(path, what="output"):
    """Raise a one-line user error unless ``path`` is a .trk, .tck or .trx.

    Parameters
    ----------
    path : str
    what : str
        Names the file in the message (e.g. 'output', 'tractogram').

    Returns
    -------
    str
        The lower-case extension.
    """
    return check_extension(path, TRACTOGRAM_EXTENSIONS, what)


def refuse_upper_case_tractogram(path, what="output"):
    """Refuse ``OUT.TRK`` and the like: dipy's ``load_tractogram`` reads
    only lower-case extensions, so neither dwi_ml's scoring nor dipy-based
    tools could read it back.

    Raises
    ------
    DwiMLUserError
    """
    extension = os.path.splitext(path)[1]
    if extension.lower() in TRACTOGRAM_EXTENSIONS \
            and extension != extension.lower():
        raise DwiMLUserError(
            f"{what} '{path}': expected a lower-case extension "
            f"({', '.join(TRACTOGRAM_EXTENSIONS)}; dipy reads no other), "
            f"found '{extension}'.")
