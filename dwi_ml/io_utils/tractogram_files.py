"""Tractogram file formats: the one list of extensions dwi_ml reads and writes."""
import os

from dwi_ml.io_utils.errors import DwiMLUserError

TRACTOGRAM_EXTENSIONS = (".trk", ".tck", ".trx")


def tractogram_extension(path):
    """The lower-case extension of a tractogram path ('.trk', ...)."""
    return os.path.splitext(path)[1].lower()


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
    extension = tractogram_extension(path)
    if extension not in TRACTOGRAM_EXTENSIONS:
        raise DwiMLUserError(
            f"{what} '{path}': expected one of the extensions "
            f"{', '.join(TRACTOGRAM_EXTENSIONS)}, found "
            f"'{extension or 'none'}'.")
    return extension
