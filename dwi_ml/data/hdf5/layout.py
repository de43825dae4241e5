"""Names and parsers of the reference dwi_ml HDF5 layout.

Both the writer (``dwi_ml.data.hdf5.creation``) and the readers
(``dwi_ml.data.dataset``) use these, so the two can never drift apart. See
``docs/hdf5_layout.md`` for the full description.
"""
import ast
import json
import zlib

import numpy as np

from dwi_ml.data.splits import Split

# The root attr 'version'. Reference dwi_ml versions that wrote it wrote 2
# (its HDF_DATABASE_VERSION) and their readers warn below 2: ours is that
# layout, with additions those readers ignore.
FORMAT_VERSION = 2
NOT_DEFINED = "Not defined by user"
# The HDF5's split lists, in the order of the Split enum.
SPLITS = tuple(Split)
SPLIT_ATTRS = {split: f"{split}_subjs" for split in SPLITS}
VOLUME_TYPE = "volume"
STREAMLINES_TYPE = "streamlines"
STREAMLINE_SPACE = "Space.VOX"
STREAMLINE_ORIGIN = "Origin.TRACKVIS"
SPACE_ATTRS = ("affine", "dimensions", "voxel_sizes", "voxel_order")
# Ours: dataset NAME may have a sibling NAME_crc32 holding the CRC-32 of
# each block of rows_per_checksum rows (see writer.py).
CHECKSUM_SUFFIX = "_crc32"
ROWS_PER_CHECKSUM_ATTR = "rows_per_checksum"
# Ours: a volume group's attr holding the CRC-32 of its whole ``data`` (see
# volume_checksum). An attr, not a dataset: a volume is read whole, and the
# reference's readers ignore attrs they do not know.
VOLUME_CHECKSUM_ATTR = "data" + CHECKSUM_SUFFIX


def decode_str(value):
    """Return ``value`` as ``str`` whether h5py gave bytes or str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return decode_str(value.item())
    return str(value)


def read_subject_list(attrs, split):
    """Read one split's subject IDs from the root attrs.

    The reference stores an empty list as an empty float64 array, and old
    files may lack the attr: both give ``[]``.
    """
    key = SPLIT_ATTRS[split]
    if key not in attrs:
        return []
    values = np.atleast_1d(attrs[key])
    if values.size == 0:
        return []
    return [decode_str(v) for v in values]


def read_optional_number(attrs, key, cast):
    """Read ``step_size``, ``nb_points`` or ``compress``; None when unset.

    Raises
    ------
    ValueError
        A value that is neither one number nor ``NOT_DEFINED`` (text, an
        array of several values), or, with ``cast`` int, a number that is
        not an integer: the message says what was found.
    """
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, str, np.bytes_)):
        text = decode_str(value)
        if text == NOT_DEFINED or text in ("None", ""):
            return None
        try:
            # A number written as text ('1.0') is read as that number.
            value = float(text)
        except ValueError:
            raise ValueError(f"found text {text!r}") from None
    if isinstance(value, np.ndarray) or isinstance(value, (bool, np.bool_)) \
            or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"found {_describe_value(value)}")
    if cast is int and not (np.isfinite(value)
                            and float(value).is_integer()):
        raise ValueError(f"found {float(value)!r}, not an integer")
    return cast(value)


def _describe_value(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.tolist()})"
    return f"{value!r} ({type(value).__name__})"


STREAMLINE_FORMAT_KEYS = (("step_size", float), ("nb_points", int),
                          ("compress", float))


def read_streamline_format(attrs):
    """``{'step_size', 'nb_points', 'compress'}`` as an HDF5's root
    ``attrs`` (or a fingerprint's ``creation``) record them; None for each
    unset one. Raises ValueError on a value that is not a number (see
    :func:`read_optional_number`)."""
    return {key: read_optional_number(attrs, key, cast)
            for key, cast in STREAMLINE_FORMAT_KEYS}


def write_optional_number(value):
    """Value to store for an optional number: itself or ``NOT_DEFINED``."""
    return NOT_DEFINED if value is None else value


def parse_groups_config(text):
    """Parse ``groups_config``, written as JSON or as a Python dict repr.

    None when it is neither, or when it parses to something other than a
    dict (e.g. '5'): the reference writes ``str()`` of the config, which
    ``ast.literal_eval`` cannot read back when a value is NaN or infinite
    (``nan``, ``inf``). The config is informative only; the file is still
    read.
    """
    text = decode_str(text)
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        try:
            config = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError,
                RecursionError):
            return None
    return config if isinstance(config, dict) else None


def strip_enum_prefix(value):
    """'Space.VOX' -> 'VOX', 'Origin.TRACKVIS' -> 'TRACKVIS'."""
    return decode_str(value).split(".")[-1]


def row_block_checksums(data, rows_per_checksum):
    """CRC-32 of each block of ``rows_per_checksum`` rows of ``data``.

    Parameters
    ----------
    data : np.ndarray, shape (R, ...)
        C-contiguous rows, as stored in the file.
    rows_per_checksum : int

    Returns
    -------
    np.ndarray, shape (ceil(R / rows_per_checksum),), uint32
    """
    data = np.ascontiguousarray(data)
    row_bytes = data.itemsize * int(np.prod(data.shape[1:], dtype=np.int64))
    raw = data.reshape(-1).view(np.uint8)
    block_bytes = rows_per_checksum * row_bytes
    return np.array([zlib.crc32(raw[start:start + block_bytes])
                     for start in range(0, len(raw), block_bytes)],
                    dtype=np.uint32)


def volume_checksum(data):
    """CRC-32 of a volume's bytes as stored (C order, its stored dtype).

    Parameters
    ----------
    data : np.ndarray, shape (X, Y, Z, F) or (X, Y, Z)

    Returns
    -------
    int
        What the writer stores in the group's ``VOLUME_CHECKSUM_ATTR``.
    """
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
