"""Stopping criteria of the tracker, each vectorised over all streamlines.

A streamline stops, at its last point ``p`` with the proposed next point
``q`` (voxel space, corner origin), on the first of:

- ``EOS``: the model's end-of-streamline probability at ``p`` is above the
  threshold, or (threshold ``"max"``) EOS is the most likely of the
  model's classes (models with EOS only);
- ``ANGLE``: the angle between the last step and ``q - p``, measured in mm
  (through the affine, so anisotropic voxels do not distort it), is above
  ``max_angle_deg``;
- ``MASK``: ``q`` is outside the volume, or the tracking mask at ``q``
  (trilinearly interpolated, or its voxel's value with ``interp="nearest"``)
  is below 0.5 for more than ``max_invalid_nb_points`` points of this
  half of the streamline (0 by default: the first such point stops it;
  tolerated points are added);
- ``MAX_LENGTH``: the streamline has ``max_nb_points`` points.

The point ``q`` that triggers a stop is not added, but for a ``MASK``
stop inside the volume with ``append_last_point`` (the point out of the
mask, as in the reference and dipy). A seed whose voxel
is outside the tracking mask (nearest voxel, not interpolated: seeds near
the mask's border would otherwise be lost) stops at once (``MASK``, one
point).
"""
import argparse
import enum
import math

import numpy as np
import torch

from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
    prepare_volume_for_interpolation,
)
from dwi_ml.io_utils.arg_checks import check_choice
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.seeding import MASK_THRESHOLD

# Defaults of dwiml_track_from_model.py, shared by tracking validation.
DEFAULT_MAX_ANGLE_DEG = 45.0
DEFAULT_MIN_LENGTH_MM = 10.0
DEFAULT_MAX_LENGTH_MM = 300.0
DEFAULT_EOS_THRESHOLD = 0.5


def default_eos_threshold(model, given=None):
    """``given``, else 0.5 for models with an EOS output, else None."""
    if given is None and getattr(model, "add_eos", False):
        return DEFAULT_EOS_THRESHOLD
    return given


def eos_stop_value(value):
    """argparse type of an EOS threshold option (``--eos_stop``): a float,
    or ``'max'``; its range is checked by :func:`eos_stop_is_valid`."""
    if value == "max":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a probability or 'max', found {value!r}") from None


def eos_stop_is_valid(value):
    """True for None (the model's default), 'max' or a float in [0, 1)."""
    return value in (None, "max") or (
        isinstance(value, (int, float)) and 0 <= value < 1)


class StopReason(enum.IntEnum):
    """Why a streamline end stopped growing."""
    MASK = 1
    ANGLE = 2
    MAX_LENGTH = 3
    EOS = 4


MASK_INTERPOLATIONS = ("nearest", "trilinear")


class TrackingMask:
    """Where streamlines may go: inside the volume and the mask.

    Parameters
    ----------
    shape : tuple of 3 int
        Volume shape (X, Y, Z), voxels.
    mask : np.ndarray or torch.Tensor, shape (X, Y, Z) or (X, Y, Z, 1), optional
        Tracking mask; None allows the whole volume.
    device : str or torch.device
    interp : "trilinear" or "nearest"
        How :meth:`contains` reads the mask at a point: interpolated
        trilinearly, or the value of the voxel holding the point.
    """

    def __init__(self, shape, mask=None, device="cpu", interp="trilinear"):
        self.interp = check_choice("mask_interp", interp,
                                   MASK_INTERPOLATIONS)
        self.shape = tuple(int(s) for s in shape[:3])
        self.device = torch.device(device)
        self._upper = torch.tensor(self.shape, dtype=torch.float32,
                                   device=self.device)
        self._volume = None
        self._voxels = None
        if mask is not None:
            if tuple(mask.shape[:3]) != self.shape or (
                    len(mask.shape) == 4 and mask.shape[3] != 1):
                raise DwiMLUserError(
                    f"tracking mask: expected shape {self.shape} (one "
                    f"feature), found {tuple(mask.shape)}.")
            mask = mask.reshape(self.shape + (1,))
            self._volume = prepare_volume_for_interpolation(mask, self.device)
            self._voxels = self._volume[..., 0] >= MASK_THRESHOLD

    def contains(self, points_vox_corner):
        """(P,) bool: True where a point may be part of a streamline.

        Parameters
        ----------
        points_vox_corner : torch.Tensor, shape (P, 3)
            Voxel space, corner origin, on the mask's device. Points must
            lie in ``[0, dim)`` on each axis.
        """
        inside, out_of_mask = self.check(points_vox_corner)
        return inside if out_of_mask is None else inside & ~out_of_mask

    def check(self, points_vox_corner, mask_values=None):
        """Which points are in the volume, and which of those are out of
        the mask: a tracking step's two tests at once.

        Parameters
        ----------
        points_vox_corner : torch.Tensor, shape (P, 3)
        mask_values : torch.Tensor, shape (P,), optional
            :attr:`trilinear_volume` already interpolated at the points.

        Returns
        -------
        inside : torch.Tensor, bool (P,)
            :meth:`inside_volume`.
        out_of_mask : torch.Tensor, bool (P,), or None
            Inside the volume but not :meth:`contains`; None without a mask
            (no point is then out of it).
        """
        inside = self.inside_volume(points_vox_corner)
        if self._volume is None:
            return inside, None
        if self.interp == "nearest":
            return inside, inside & ~self._voxel_values(points_vox_corner)
        if mask_values is None:
            mask_values = interpolate_volume_at_coordinates(
                self._volume, points_vox_corner)[:, 0]
        return inside, inside & ~(mask_values >= MASK_THRESHOLD)

    @property
    def trilinear_volume(self):
        """The (X, Y, Z, 1) float32 mask that :meth:`contains` interpolates,
        or None (no mask, or ``interp="nearest"``)."""
        return self._volume if self.interp == "trilinear" else None

    def contains_voxel(self, points_vox_corner):
        """(P,) bool: True where the voxel holding a point is in the mask.

        For seeds: no interpolation, so that a seed anywhere in a mask
        voxel counts as inside.
        """
        inside = self.inside_volume(points_vox_corner)
        if self._voxels is None:
            return inside
        return inside & self._voxel_values(points_vox_corner)

    def _voxel_values(self, points_vox_corner):
        """(P,) bool: the mask voxel holding each point (clamped to the
        volume)."""
        voxels = torch.floor(points_vox_corner).long()
        for axis, size in enumerate(self.shape):
            voxels[:, axis].clamp_(0, size - 1)
        return self._voxels[voxels[:, 0], voxels[:, 1], voxels[:, 2]]

    def inside_volume(self, points_vox_corner):
        """(P,) bool: True where a point lies in the volume, ``[0, dim)``.
        """
        return torch.all((points_vox_corner >= 0)
                         & (points_vox_corner < self._upper), dim=1)


def steps_too_sharp(previous_steps_mm, next_steps_mm, max_angle_deg):
    """(N,) bool: True where the turn between two steps exceeds the angle.

    Parameters
    ----------
    previous_steps_mm, next_steps_mm : torch.Tensor, shape (N, 3)
        Displacements in mm (any origin).
    max_angle_deg : float
        Largest allowed angle, in degrees; 180 or more never stops.
    """
    if max_angle_deg >= 180:
        return torch.zeros(len(next_steps_mm), dtype=torch.bool,
                           device=next_steps_mm.device)
    cosines = torch.nn.functional.cosine_similarity(previous_steps_mm,
                                                    next_steps_mm, dim=1)
    return cosines < math.cos(math.radians(max_angle_deg))


def max_nb_points(max_length_mm, step_size_mm):
    """Most points a streamline of steps ``step_size_mm`` may hold.

    ``floor(max_length / step) + 1``: its length never exceeds
    ``max_length_mm``.
    """
    return int(math.floor(max_length_mm / step_size_mm + 1e-6)) + 1


def keep_by_length(lengths, step_size_mm, min_length_mm, max_length_mm):
    """(N,) bool: streamlines of at least 2 points with a length in range.

    Parameters
    ----------
    lengths : np.ndarray, shape (N,)
        Points per streamline. Every step is ``step_size_mm`` long, so a
        streamline of ``n`` points is ``(n - 1) * step_size_mm`` mm long.
    step_size_mm, min_length_mm, max_length_mm : float
    """
    lengths_mm = (np.asarray(lengths) - 1) * step_size_mm
    tolerance = 1e-6 * step_size_mm
    return ((np.asarray(lengths) >= 2)
            & (lengths_mm >= min_length_mm - tolerance)
            & (lengths_mm <= max_length_mm + tolerance))
