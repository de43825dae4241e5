"""The checks of a tracking step: a direction becomes a next point and a
stop code.

A mixin of :class:`~dwi_ml.tracking.propagation.BatchedTracker`: it reads
the tracker's ``step_size_mm``, ``max_angle_deg``, ``eos_threshold``,
``model``, ``tracking_mask``, ``linear_part``, ``_axis_scales`` and
``_inputs_and_mask``. The criteria are those of
:mod:`dwi_ml.tracking.stopping`.
"""
import torch

from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
)
from dwi_ml.tracking.stopping import StopReason, steps_too_sharp


class NextPointChecks:
    """Next points and stop codes of the active streamlines of a step."""

    def to_mm(self, vectors_vox):
        """Displacements (N, 3) from voxel units to mm."""
        if self._axis_scales is not None:
            return vectors_vox * self._axis_scales
        return vectors_vox @ self.linear_part.T

    def _eos_stops(self, outputs, eos_probs):
        """(n,) bool where EOS stops a streamline, or None without EOS."""
        if self.eos_threshold is None:
            return None
        if self.eos_threshold == "max":
            return self.model.eos_is_most_likely(outputs)
        return eos_probs > self.eos_threshold

    def _check_next_points(self, directions, eos_stops, recent, t, growing,
                           known_next_points=None):
        """Next point of each active streamline and its StopReason.

        ``directions`` (n, 3) are unit vectors in voxel space, ``eos_stops``
        (n,) bool or None, ``recent`` (n, m, 3) the streamlines' last
        points (at least 2 from t = 1) and ``growing`` (n,) bool, or None
        when all grow; the others go to their ``known_next_points`` (n, 3)
        (their prefix). Returns (codes (n,), next_points (n, 3),
        out_of_mask (n,) bool or None, next_inputs (n, F) or None); code 0
        means the point is added. ``next_inputs`` are the model's inputs at
        the next points, read with the mask (see
        the tracker's ``_join_inputs_and_mask``).
        ``out_of_mask`` marks growing streamlines whose next point is in
        the volume but out of the tracking mask (None without a mask); the
        caller counts them against ``max_invalid_nb_points`` and gives
        ``MASK`` to those past it, which wins over the codes here. Criteria
        are written from the lowest priority up, so that the highest (EOS,
        then angle, then leaving the volume) wins. Streamlines not
        ``growing`` (still replaying their prefix) get 0.
        """
        lengths_mm = torch.linalg.vector_norm(self.to_mm(directions), dim=1)
        # Method calls rather than Python indexing (x[:, None], x[:, -1]):
        # a step's fixed cost is mostly such calls.
        steps = directions * (self.step_size_mm
                              / lengths_mm.clamp(min=1e-12)).unsqueeze(1)
        current = recent.select(1, -1)
        next_points = current + steps
        if growing is not None:
            next_points = torch.where(growing.unsqueeze(1), next_points,
                                      known_next_points)
        next_inputs = None
        if self._inputs_and_mask is None:
            in_volume, out_of_mask = self.tracking_mask.check(next_points)
        else:
            values = interpolate_volume_at_coordinates(self._inputs_and_mask,
                                                       next_points)
            nb_features = values.shape[1] - 1
            next_inputs = values.narrow(1, 0, nb_features)
            in_volume, out_of_mask = self.tracking_mask.check(
                next_points, values.select(1, nb_features))
        codes = torch.where(in_volume, 0, int(StopReason.MASK))
        # At 180 degrees or more no turn stops (steps_too_sharp): skipped.
        if t >= 1 and self.max_angle_deg < 180:
            previous_steps = current - recent.select(1, -2)
            codes.masked_fill_(steps_too_sharp(self.to_mm(previous_steps),
                                               self.to_mm(steps),
                                               self.max_angle_deg),
                               int(StopReason.ANGLE))
        if eos_stops is not None:
            codes.masked_fill_(eos_stops, int(StopReason.EOS))
        if growing is not None:
            codes.masked_fill_(~growing, 0)
            if out_of_mask is not None:
                out_of_mask &= growing
        return codes, next_points, out_of_mask, next_inputs
