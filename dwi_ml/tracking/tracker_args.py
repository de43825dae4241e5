"""Checks of :class:`~dwi_ml.tracking.propagation.BatchedTracker`'s
arguments, for a tracker built in Python (the tracking script checks its
options first, with their option names)."""
import numbers

import numpy as np

from dwi_ml.data.processing.space import check_grid_affine
from dwi_ml.io_utils.arg_checks import (
    InvalidValue,
    check_choice,
    check_device,
    check_positive_float,
)
from dwi_ml.io_utils.errors import DwiMLUserError

OWNER = "BatchedTracker"
ALGOS = ("det", "prob")


# What the tracker calls (docs/extending.md, "model (tracking)").
TRACKING_METHODS = ("forward_step", "select_hidden_states",
                    "get_tracking_directions")


def check_tracking_model(model, where):
    """Refuse, in one line starting with ``where``, a model without the
    methods the tracker calls (:data:`TRACKING_METHODS`)."""
    missing = [name for name in TRACKING_METHODS
               if not callable(getattr(model, name, None))]
    if missing:
        raise DwiMLUserError(
            f"{where}: expected a model that can track (methods "
            f"{', '.join(TRACKING_METHODS)}: docs/extending.md), found a "
            f"{type(model).__name__} without {', '.join(missing)}.")


def check_tracker_args(model, input_volume, affine, tracking_mask,
                       step_size_mm, max_angle_deg, algo, device):
    """Raise a one-line user error naming the first invalid argument.

    Returns
    -------
    torch.device
        ``device``, parsed.
    """
    check_tracking_model(model, f"{OWNER}: model")
    device = check_device(device)
    shape = tuple(getattr(input_volume, "shape", ()))
    if len(shape) != 4:
        raise InvalidValue("input_volume", OWNER, "an (X, Y, Z, F) volume "
                           "(its shape)", shape)
    nb_features = getattr(model, "nb_features", None)
    if nb_features is not None and shape[3] != nb_features:
        raise InvalidValue("input_volume", OWNER, f"{nb_features} features "
                           "per voxel (the model's nb_features)", shape[3])
    check_grid_affine(affine, OWNER)
    mask_shape = tuple(getattr(tracking_mask, "shape", ()))
    if mask_shape != shape[:3]:
        raise InvalidValue("tracking_mask", OWNER, "a TrackingMask of the "
                           f"input volume's grid {shape[:3]} (its shape)",
                           mask_shape)
    check_positive_float("step_size_mm", step_size_mm, OWNER)
    if (isinstance(max_angle_deg, bool)
            or not isinstance(max_angle_deg, numbers.Real)
            or not 0 < max_angle_deg <= 180):
        raise InvalidValue("max_angle_deg", OWNER, "a number in (0, 180]",
                           max_angle_deg)
    check_choice("algo", algo, ALGOS, OWNER)
    return device


def check_points(name, points, owner, prefixes=False):
    """Seeds (N, 3) or prefixes (N, K, 3) with K >= 1, as a finite array.

    Parameters
    ----------
    name : str
        The argument, named in the error.
    points : array-like
        A list of 3-element points (or of (K, 3) prefixes) is accepted.
    owner : str
        E.g. 'BatchedTracker.track'.
    prefixes : bool
        Expect (N, K, 3) instead of (N, 3).

    Returns
    -------
    np.ndarray
        ``points`` as an array (its dtype kept when numeric).
    """
    expected = ("an (N, K, 3) array of prefixes, K >= 1" if prefixes
                else "an (N, 3) array of points")

    def refuse(found):
        raise DwiMLUserError(
            f"{owner} argument {name}: expected {expected}, found {found}.")

    try:
        array = np.asarray(points)
    except ValueError:    # numpy: "inhomogeneous shape"
        refuse("a ragged sequence (rows of different lengths)")
    if array.dtype.kind not in "iuf":
        refuse(f"dtype {array.dtype}")
    # (0,) is what np.asarray([]) gives: no seed at all.
    if array.shape == (0,) and not prefixes:
        array = array.reshape(0, 3)
    if (array.ndim != (3 if prefixes else 2) or array.shape[-1] != 3
            or (prefixes and array.shape[1] < 1)):
        refuse(f"shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(
        axis=tuple(range(1, array.ndim))))
    if len(bad):
        noun = "prefix" if prefixes else "seed"
        plural = "prefixes" if prefixes else "seeds"
        refuse(f"NaN or infinite coordinates in {len(bad)} of {len(array)} "
               f"{plural} ({noun} {bad[0]} first)")
    return array
