"""Tractogram file formats: the one list of extensions dwi_ml reads and writes."""
from dwi_ml.io_utils.arg_checks import check_extension, extension_of

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
