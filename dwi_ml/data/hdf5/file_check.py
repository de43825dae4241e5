"""Is this a readable dwi_ml HDF5 file? One check for every reader.

Every script and the dataset open a user's HDF5 file through
:func:`check_dwiml_hdf5` first, so that a missing, truncated or foreign file
gets the same one-line error everywhere, naming why the file is not a
dwi_ml file. :func:`hdf5_read_errors` turns a failed data read (corrupt
bytes caught by a checksum, a truncated file) into a one-line error naming
the file, subject and group; :func:`checksum_mismatch` is that error for
data that no longer matches a CRC-32 our writer stored.
"""
import contextlib
import errno
import os

import h5py
import numpy as np

from dwi_ml.data.hdf5.layout import (
    NOT_DEFINED,
    SPLIT_ATTRS,
    SPLITS,
    STREAMLINE_FORMAT_KEYS,
    read_optional_number,
    read_subject_list,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import refuse_wrong_path_kind

# What h5py raises on unreadable metadata or data (corrupt, truncated).
READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def _one_line(error):
    return " ".join(str(error).split())[:200]


def _refuse_locked(path, error):
    """HDF5's file lock refused (it is not corrupt): say why and what to do."""
    if "unable to lock file" not in str(error):
        return
    raise DwiMLUserError(
        f"HDF5 file '{path}': cannot lock it to read it ({_one_line(error)})"
        ": another process has it open for writing, or its file system "
        "(NFS, Lustre) has no file locks; for the latter, set "
        "HDF5_USE_FILE_LOCKING=FALSE in the environment.") from None


def _refuse_stale(path, error):
    """NFS's 'stale file handle' (the file was removed or replaced on
    another host while open here): it is not corrupt."""
    if not (isinstance(error, OSError) and error.errno == errno.ESTALE):
        return
    raise DwiMLUserError(
        f"HDF5 file '{path}': it was removed or replaced from another host "
        f"while this run read it ({_one_line(error)}); a run reads its HDF5 "
        "file until its end: restart the run, or resume it from its "
        "checkpoint.") from None


def check_dwiml_hdf5(path):
    """Check that ``path`` is a dwi_ml HDF5 file; return its splits.

    A dwi_ml file (ours or the reference package's) has root attrs listing
    the subjects of each split, and one root group per listed subject. Only
    metadata is read.

    Parameters
    ----------
    path : str

    Returns
    -------
    dict of str to list of str
        Split name ('training', ...) to its subject IDs, sorted.

    Raises
    ------
    DwiMLUserError
        A missing file, a file that is not HDF5, truncated or corrupt
        metadata, no split attrs, no subject at all, or a listed subject
        without its group.
    """
    refuse_wrong_path_kind(path, "HDF5 file")
    if not os.path.isfile(path):
        found = ("not found" if not os.path.exists(path)
                 else "is not a regular file (a device, pipe or socket)")
        raise DwiMLUserError(f"HDF5 file '{path}' {found}.")
    not_dwiml = f"'{path}' is not a dwi_ml HDF5 file"
    if not h5py.is_hdf5(path):
        raise DwiMLUserError(
            f"{not_dwiml}: it is not an HDF5 file (no HDF5 signature).")
    try:
        with h5py.File(path, "r") as hdf_file:
            attrs = hdf_file.attrs
            attr_names = sorted(attrs.keys())
            if not any(SPLIT_ATTRS[split] in attrs for split in SPLITS):
                raise DwiMLUserError(
                    f"{not_dwiml}: it is HDF5 but lacks the dwi_ml layout: "
                    f"expected root attrs {list(SPLIT_ATTRS.values())}, "
                    f"found attrs [{', '.join(attr_names) or 'none'}].")
            splits = {split: sorted(read_subject_list(attrs, split))
                      for split in SPLITS}
            groups = {name for name, item in hdf_file.items()
                      if isinstance(item, h5py.Group)}
    except DwiMLUserError:
        raise
    except READ_ERRORS as error:
        _refuse_locked(path, error)
        raise DwiMLUserError(
            f"HDF5 file '{path}': cannot read its metadata; the file is "
            f"truncated or corrupt ({type(error).__name__}: "
            f"{_one_line(error)}).") from None
    listed = [subject for split in SPLITS for subject in splits[split]]
    if not listed:
        raise DwiMLUserError(
            f"{not_dwiml}: its split attrs list no subject, found subject "
            f"groups [{', '.join(sorted(groups)) or 'none'}].")
    missing = [subject for subject in listed if subject not in groups]
    if missing:
        raise DwiMLUserError(
            f"HDF5 file '{path}': subject '{missing[0]}' is listed in the "
            "splits but there is no group of that name at the root.")
    return splits


def read_hdf5_streamline_format(path, attrs):
    """The root attrs ``step_size``, ``nb_points`` and ``compress`` of an
    HDF5 file, checked; None for each unset one.

    Parameters
    ----------
    path : str
        The HDF5 file, named in errors.
    attrs : h5py.AttributeManager
        Its root attrs.

    Returns
    -------
    dict of str to number or None

    Raises
    ------
    DwiMLUserError
        A value that is not a number nor '{NOT_DEFINED}', a step or
        tolerance not positive and finite, fewer than 2 points, or more
        than one of them set: one line naming the file and the attr.
    """
    values = {}
    for key, cast in STREAMLINE_FORMAT_KEYS:
        expected = ("an integer >= 2" if cast is int
                    else "a positive finite number")
        try:
            value = read_optional_number(attrs, key, cast)
        except (ValueError, TypeError, OverflowError) as error:
            raise DwiMLUserError(
                f"HDF5 file '{path}': root attr '{key}': expected {expected} "
                f"or '{NOT_DEFINED}', {_one_line(error)}.") from None
        low = 2 if cast is int else 0
        if value is not None and not (np.isfinite(value) and value >= low
                                      and (cast is int or value > 0)):
            raise DwiMLUserError(
                f"HDF5 file '{path}': root attr '{key}': expected {expected} "
                f"or '{NOT_DEFINED}', found {value!r}.")
        values[key] = value
    set_keys = [f"'{key}' ({value})" for key, value in values.items()
                if value is not None]
    if len(set_keys) > 1:
        raise DwiMLUserError(
            f"HDF5 file '{path}': root attrs {' and '.join(set_keys)} are "
            "all set; expected at most one (streamlines are resampled one "
            "way).")
    return values


@contextlib.contextmanager
def hdf5_read_errors(path, key=None):
    """Turn an HDF5 read error inside the block into a one-line user error.

    Parameters
    ----------
    path : str
        The HDF5 file.
    key : str, optional
        The dataset or group read, 'subject/group/...': the error names the
        subject and the group. None for reads anywhere in the file.
    """
    try:
        yield
    except READ_ERRORS as error:
        _refuse_locked(path, error)
        _refuse_stale(path, error)
        where = f"HDF5 file '{path}': cannot read it"
        if key is not None:
            where = f"{_where(path, key)}: cannot read '{key}'"
        raise DwiMLUserError(
            f"{where}; the file is corrupt or truncated "
            f"({type(error).__name__}: {_one_line(error)}).") from None


def checksum_mismatch(path, key, what):
    """The error for data whose CRC-32 differs from the one stored at
    creation (our writer's streamline ``data_crc32`` and volume
    ``data_crc32``): one line naming the file, subject and group.

    HDF5's fletcher32 cannot tell this: it is recomputed on every write, so
    a dataset edited in place with h5py reads as valid.

    Parameters
    ----------
    path : str
        The HDF5 file.
    key : str
        The dataset, 'subject/group/...'.
    what : str
        The data that differs, e.g. ``"rows 0 to 4095 of dataset 'KEY'"``.

    Returns
    -------
    DwiMLUserError
        To raise.
    """
    return DwiMLUserError(
        f"{_where(path, key)}: {what} changed since the file was created: "
        "the CRC-32 stored then differs (the file is corrupt, or was edited "
        "in place); create the file again.")


def _where(path, key):
    """'HDF5 file PATH, subject S, group G' for ``key`` 'S/G/...'."""
    parts = key.strip("/").split("/")
    where = f"HDF5 file '{path}', subject '{parts[0]}'"
    if len(parts) > 1:
        where += f", group '{parts[1]}'"
    return where
