"""What every one-input model with a direction getter shares.

Learn2track and the Transformers map each prediction point to a hidden
state, then through ``self.direction_getter``: the outputs, the loss, EOS
and the tracking directions follow from the getter and from the prediction
contract of :mod:`dwi_ml.models.directions`.
"""
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import (
    compute_direction_targets,
    nb_predictions,
    streamline_lengths,
)
from dwi_ml.models.main_models import MainModelOneInput


class DirectionGetterModel(MainModelOneInput):
    """A :class:`MainModelOneInput` whose subclass sets ``direction_getter``."""

    @property
    def add_eos(self):
        """bool: whether the model predicts at the last point (EOS)."""
        return self.direction_getter.add_eos

    # int: width of one output row. No docstring: Sphinx would then have two
    # targets for the "output_size" that direction getters' docstrings cite.
    @property
    def output_size(self):
        return self.direction_getter.output_size

    def count_predictions(self, inputs, streamlines):
        """Check a batch; return its lengths and predictions per streamline.

        Returns
        -------
        lengths, counts : torch.Tensor, int64 (N,)
            Points, and prediction points (``n_i - 1``, or ``n_i`` with EOS).
        """
        self.check_inputs(inputs, streamlines)
        lengths = streamline_lengths(streamlines)
        counts = nb_predictions(lengths, self.add_eos)
        if torch.any(counts < 1):
            raise DwiMLUserError(
                "streamlines: expected at least 2 points per streamline "
                "(a model without EOS predicts n - 1 directions), found "
                "a streamline of 1 point.")
        return lengths, counts

    def compute_loss(self, outputs, streamlines):
        """Mean loss over the batch's predictions, and their number.

        Parameters
        ----------
        outputs : torch.Tensor (M, output_size)
            From ``forward``.
        streamlines : list of torch.Tensor (n_i, 3)
            The same (target) streamlines, voxel space, corner origin.

        Returns
        -------
        losses : torch.Tensor, or dict
            The mean loss; with EOS, the named terms ``{'direction': ...,
            'eos': ...}`` whose sum is optimised (the trainer logs each).
        n_points : int
        """
        target_dirs, eos_targets = compute_direction_targets(
            streamlines, self.add_eos)
        losses, n_points = self.direction_getter.compute_named_losses(
            outputs, target_dirs, eos_targets)
        if self.add_eos:
            return losses, n_points
        return losses["direction"], n_points

    def get_tracking_directions(self, outputs, algo="det", generator=None):
        """Unit directions (N, 3) and EOS probabilities (N,) or None.

        See
        :meth:`dwi_ml.models.direction_getters.base.AbstractDirectionGetter.get_tracking_directions`.
        """
        return self.direction_getter.get_tracking_directions(
            outputs, algo, generator)

    def eos_is_most_likely(self, outputs):
        """(N,) bool: EOS is the most likely class (``--eos_stop max``).

        See
        :meth:`dwi_ml.models.direction_getters.base.AbstractDirectionGetter.eos_is_most_likely`.
        """
        return self.direction_getter.eos_is_most_likely(outputs)
