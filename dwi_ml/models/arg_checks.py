"""Checks of model constructor arguments, raising one-line user errors.

Models are built from user options (scripts) and from ``parameters.json``
(loading), so a bad value must name the argument, what was expected and
what was found.
"""
import math
import numbers

from dwi_ml.io_utils.errors import DwiMLUserError


def check_int(name, value, min_value):
    """Return ``value`` as int, refusing non-integers and values below min."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < min_value):
        raise DwiMLUserError(
            f"argument '{name}': expected an integer >= {min_value}, "
            f"found {value!r}.")
    return int(value)


def check_positive_float(name, value):
    """Return ``value`` as float, refusing NaN, infinities and values <= 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise DwiMLUserError(
            f"argument '{name}': expected a finite number > 0, "
            f"found {value!r}.")
    return float(value)


def check_fraction(name, value):
    """Return ``value`` as float, refusing anything outside [0, 1)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 <= value < 1):
        raise DwiMLUserError(
            f"argument '{name}': expected a number in [0, 1), "
            f"found {value!r}.")
    return float(value)


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise DwiMLUserError(
            f"argument '{name}': expected one of {list(choices)}, "
            f"found {value!r}.")
    return value
