"""Checks of constructor arguments, raising one-line user errors.

Objects are built from user options (scripts) and from ``parameters.json``
(loading), so a bad value must name the argument, what was expected and
what was found. ``owner`` (e.g. 'BatchSampler') prefixes the argument name.
"""
import math
import numbers
import os

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError


class InvalidValue(DwiMLUserError):
    """A value refused by one of these checks.

    Keeps the argument's name, what was expected and the value, so that a
    caller which read the value from a file can name the file's key
    instead (see :mod:`dwi_ml.training.saved_parameters`).
    """

    def __init__(self, name, owner, expected, value):
        where = f"{owner} argument {name}" if owner else f"argument '{name}'"
        super().__init__(f"{where}: expected {expected}, got {value!r}.")
        self.name = name
        self.expected = expected
        self.value = value


def _fail(name, owner, expected, value):
    raise InvalidValue(name, owner, expected, value)


def check_int(name, value, min_value, owner=None):
    """Return ``value`` as int, refusing non-integers and values below min."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < min_value):
        _fail(name, owner, f"an integer >= {min_value}", value)
    return int(value)


def check_seed(name, value, owner=None):
    """Return a seed as int, refusing anything outside [0, 2 ** 64): torch
    takes no more, and 'prob' draws read a seed modulo 2 ** 64."""
    value = check_int(name, value, 0, owner)
    if value >= 2 ** 64:
        _fail(name, owner, "an integer < 2 ** 64", value)
    return value


def check_int_options(args, minimums):
    """Check a script's integer options against their minimum values.

    argparse's ``type=int`` already refuses '2.5'; this refuses values out
    of range before any work, naming the option as typed.

    Parameters
    ----------
    args : argparse.Namespace
    minimums : dict of str to int
        Option (attribute) name to its smallest valid value. None values
        (option not given) are skipped; lists (``nargs``) are checked item
        by item.
    """
    for name, min_value in minimums.items():
        value = getattr(args, name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                check_int(f"--{name}", item, min_value)


def check_at_most_one(values, owner=None):
    """Refuse more than one non-None value among mutually exclusive options.

    Parameters
    ----------
    values : dict of str to object
        Option name to value (None: not given).
    owner : str or None
        What the options belong to (e.g. a class name), named in the error.
    """
    given = [name for name, value in values.items() if value is not None]
    if len(given) > 1:
        where = f"{owner} arguments" if owner else "arguments"
        raise DwiMLUserError(
            f"{where} {', '.join(given)}: expected at most one of "
            f"{', '.join(values)}, found {len(given)}.")


def check_count_or_size(name, value, as_count, owner=None):
    """A batch size: an integer count, or a finite size > 0 (e.g. mm).

    Parameters
    ----------
    name : str
        The option, e.g. '--batch_size_training'.
    value : float
        As parsed (float, since sizes in mm may be fractional). A whole
        float (100.0) is a valid count.
    as_count : bool
        True when the unit is a number of streamlines: refuse non-integers.
    owner : str or None
        What the option belongs to, named in the error.

    Returns
    -------
    int or float
    """
    expected = ("a finite, positive integer number of streamlines"
                if as_count else "a finite, positive length in mm")
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0
            or (as_count and not float(value).is_integer())):
        # Parsed as a float: show '0' as typed, not '0.0'.
        shown = (int(value) if isinstance(value, float) and value.is_integer()
                 else value)
        _fail(name, owner, expected, shown)
    return int(value) if as_count else float(value)


def check_positive_float(name, value, owner=None):
    """Return ``value`` as float, refusing NaN, infinities and values <= 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        _fail(name, owner, "a finite number > 0", value)
    return float(value)


def check_non_negative_float(name, value, owner=None):
    """Return ``value`` as float, refusing NaN, infinities and values < 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        _fail(name, owner, "a finite number >= 0", value)
    return float(value)


def check_ratio(name, value, owner=None):
    """Return ``value`` as float, refusing anything outside [0, 1]."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 <= value <= 1):
        _fail(name, owner, "a number in [0, 1]", value)
    return float(value)


def check_fraction(name, value, owner=None):
    """Return ``value`` as float, refusing anything outside [0, 1)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 <= value < 1):
        _fail(name, owner, "a number in [0, 1)", value)
    return float(value)


def check_bool(name, value, owner=None):
    """Return ``value`` if it is a bool (numpy's included), as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, owner, "True or False", value)
    return bool(value)


def check_choice(name, value, choices, owner=None):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        _fail(name, owner, f"one of {list(choices)}", value)
    return value


def check_device(device, name="device"):
    """Return ``torch.device(device)``; refuse unknown or absent devices."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DwiMLUserError(
            f"argument {name}: expected a torch device such as 'cpu' or "
            f"'cuda[:N]', got {device!r}.") from None
    if parsed.type not in ("cpu", "cuda"):
        raise DwiMLUserError(
            f"argument {name}: expected 'cpu' or 'cuda[:N]', got {device!r}.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DwiMLUserError(
            f"argument {name}: '{device}' was asked for but CUDA is not "
            "available on this machine.")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise DwiMLUserError(
            f"argument {name}: expected a GPU index below "
            f"{torch.cuda.device_count()} (the GPUs of this machine), got "
            f"{device!r}.")
    return parsed


# Suffixes that compress a file: their extension is the one before too.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")


def extension_of(path):
    """The lower-case extension of ``path``, with the dot.

    A compressed file's extension includes the one before it ('.nii.gz',
    '.trk.gz'), so that a message names the file's kind; '' when none.
    """
    root, extension = os.path.splitext(os.path.basename(path).lower())
    if extension in _COMPRESSION_SUFFIXES:
        extension = os.path.splitext(root)[1] + extension
    return extension


def _one_of(extensions):
    """'.trk, .tck or .trx' for ('.trk', '.tck', '.trx')."""
    if len(extensions) == 1:
        return extensions[0]
    return f"{', '.join(extensions[:-1])} or {extensions[-1]}"


def check_extension(path, extensions, what="output"):
    """Refuse a path whose extension is not one of ``extensions``.

    Parameters
    ----------
    path : str
    extensions : tuple of str
        Lower-case, with the dot (e.g. ('.json',)).
    what : str
        Names the file in the message (e.g. 'output', 'tractogram').

    Returns
    -------
    str
        The path's lower-case extension (see :func:`extension_of`).

    Raises
    ------
    DwiMLUserError
        When the extension is not one of ``extensions``; the message says
        when ``path`` is an existing folder rather than naming its
        (missing) extension.
    """
    extension = extension_of(path)
    if extension not in extensions:
        if os.path.isdir(path):
            raise DwiMLUserError(
                f"{what} '{path}' is a folder; expected a "
                f"{_one_of(extensions)} file path.")
        expected = (f"the extension {extensions[0]}" if len(extensions) == 1
                    else f"one of the extensions {', '.join(extensions)}")
        raise DwiMLUserError(
            f"{what} '{path}': expected {expected}, found "
            f"'{extension or 'none'}'.")
    return extension
