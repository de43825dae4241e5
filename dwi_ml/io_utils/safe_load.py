"""Read torch, JSON and .npy files that a user gave us, with one-line errors.

Every torch file (model weights, checkpoint state) goes through
:func:`load_torch_file`: ``torch.load(weights_only=True)``, so that a file
holding pickled code is refused before any of it runs, and every way a file
can be bad (missing, empty, truncated, random bytes, pickled code) becomes a
:class:`DwiMLUserError` naming the file.
"""
import json
import os
import pickle
import stat

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError


def _one_line(error):
    return " ".join(str(error).split())[:200]


def load_torch_file(path, what, map_location="cpu"):
    """``torch.load(path, weights_only=True)``, with one-line user errors.

    Parameters
    ----------
    path : str
        The file to read.
    what : str
        What the file should be, named in errors (e.g. 'dwi_ml model
        weights').
    map_location : str or torch.device
        Where tensors go.

    Returns
    -------
    object
        Tensors, dicts, lists and plain Python values only.

    Raises
    ------
    DwiMLUserError
        Missing file, pickled code (not loaded), or a truncated or corrupt
        file.
    """
    import torch

    if not os.path.isfile(path):
        raise DwiMLUserError(f"{what} '{path}': expected a file, found none.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a class or a function: never retry without it.
        raise DwiMLUserError(
            f"{what} '{path}': expected tensors and plain values only, found "
            "pickled code; it is not a dwi_ml file and was not loaded."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        size = os.path.getsize(path)
        raise DwiMLUserError(
            f"{what} '{path}': expected a complete torch file, found a "
            f"truncated or corrupt one ({size} bytes; "
            f"{type(error).__name__}: {_one_line(error) or 'no data'})."
        ) from None


def _refuse_duplicate_keys(path, what):
    def object_from_pairs(pairs):
        keys = [key for key, _ in pairs]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:
            # json keeps the last value: a group written twice was lost.
            raise DwiMLUserError(
                f"{what} '{path}': expected each key once in an object, found "
                f"'{repeated}' {keys.count(repeated)} times.")
        return dict(pairs)
    return object_from_pairs


_BOM_ENCODINGS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"),
                  (b"\xfe\xff", "utf-16"))


def read_text(path, what="file"):
    """A text file's content: UTF-8, or UTF-8 / UTF-16 with a byte-order mark.

    Editors on Windows write a byte-order mark (PowerShell's ``>`` writes
    UTF-16); it is not part of the text. Pipes and devices (``<(...)``,
    ``/dev/null``) read as files do.

    Raises
    ------
    DwiMLUserError
        A device other than ``/dev/null`` (``/dev/zero`` never ends).
    UnicodeDecodeError
        Bytes that are not text in the encoding found.
    """
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)
            or os.path.samefile(path, os.devnull)):
        raise DwiMLUserError(
            f"{what} '{path}': expected a file or a pipe, found a device "
            "or socket.")
    with open(path, "rb") as f:
        data = f.read()
    encoding = next((name for bom, name in _BOM_ENCODINGS
                     if data.startswith(bom)), "utf-8")
    return data.decode(encoding)


def load_json_file(path, what):
    """Parse a JSON file, with one-line user errors naming it.

    Raises
    ------
    DwiMLUserError
        Missing file, bytes that are not UTF-8, invalid (e.g. truncated)
        JSON, or a key twice in one object.
    """
    if not os.path.exists(path) or os.path.isdir(path):
        raise DwiMLUserError(f"{what} '{path}': expected a file, found none.")
    try:
        return json.loads(read_text(path, what), object_pairs_hook=(
            _refuse_duplicate_keys(path, what)))
    except UnicodeDecodeError:
        raise DwiMLUserError(
            f"{what} '{path}': expected UTF-8 JSON text, found binary bytes "
            "(the file is corrupt).") from None
    except json.JSONDecodeError as error:
        raise DwiMLUserError(
            f"{what} '{path}': expected valid JSON, found an error at line "
            f"{error.lineno} column {error.colno}: {error.msg} (the file is "
            "truncated or corrupt).") from None


_NPY_MAGIC = b"\x93NUMPY"


def load_npy_file(path, what):
    """``np.load(path, allow_pickle=False)``, with one-line user errors.

    numpy's own message for a file that is not a .npy (a text file, random
    bytes) says that it holds pickled data and suggests loading it
    unsafely; here it is called a file without the .npy header.

    Raises
    ------
    DwiMLUserError
        Missing file, no .npy header, an array of Python objects (not
        loaded), or a truncated file.
    """
    if not os.path.isfile(path):
        raise DwiMLUserError(f"{what} '{path}': expected a file, found none.")
    with open(path, "rb") as f:
        header = f.read(len(_NPY_MAGIC))
    size = os.path.getsize(path)
    if header != _NPY_MAGIC:
        raise DwiMLUserError(
            f"{what} '{path}': expected a .npy array, found a file without "
            f"the .npy header ({size} bytes: empty, truncated or not a .npy "
            "file).")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DwiMLUserError(
                f"{what} '{path}': expected an array of numbers, found "
                "Python objects (pickled); not loaded.") from None
        raise DwiMLUserError(
            f"{what} '{path}': expected a .npy array, found a truncated or "
            f"corrupt one ({size} bytes; {_one_line(error)}).") from None
    except (OSError, EOFError) as error:
        raise DwiMLUserError(
            f"{what} '{path}': expected a .npy array, found a truncated or "
            f"corrupt one ({size} bytes; {type(error).__name__}: "
            f"{_one_line(error) or 'no data'}).") from None
