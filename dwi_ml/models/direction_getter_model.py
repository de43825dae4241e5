"""What every one-input model with a direction getter shares.

Learn2track and the Transformers map each prediction point to a hidden
state, then through ``self.direction_getter``: the outputs, the loss, EOS
and the tracking directions follow from the getter and from the prediction
contract of :mod:`dwi_ml.models.directions`.
"""
import numpy as np
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import (
    compute_direction_targets,
    nb_predictions,
    prediction_rows,
    rows_with_targets,
    streamline_lengths,
)
from dwi_ml.models.main_models import MainModelOneInput, check_rows_of_width


class DirectionGetterModel(MainModelOneInput):
    """A :class:`MainModelOneInput` whose subclass sets ``direction_getter``."""

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        params.update(dg_key=self.dg_key, dg_args=self.direction_getter.params)
        return params

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

    def forward(self, inputs, streamlines):
        """Outputs at every prediction point of the batch.

        Parameters
        ----------
        inputs : list of torch.Tensor (n_i, input_size)
            Interpolated inputs at every point.
        streamlines : list of torch.Tensor (n_i, 3)
            Voxel space, corner origin.

        Returns
        -------
        torch.Tensor (M, output_size)
            Streamline after streamline; ``n_i - 1`` rows each, ``n_i`` with
            EOS.
        """
        lengths, counts = self.count_predictions(inputs, streamlines)
        point_inputs = torch.cat(list(inputs))[
            prediction_rows(lengths, self.add_eos)]
        return self.direction_getter(
            self.hidden_states(point_inputs, streamlines, counts))

    def hidden_states(self, point_inputs, streamlines, counts):
        """Hidden state at each prediction point, for the direction getter.

        Parameters
        ----------
        point_inputs : torch.Tensor (M, input_size)
            The inputs at the prediction points, streamline after streamline.
        streamlines : list of torch.Tensor (n_i, 3)
            Voxel space, corner origin.
        counts : torch.Tensor, int64 (N,)
            Prediction points per streamline.

        Returns
        -------
        torch.Tensor (M, hidden_size)
        """
        raise NotImplementedError(
            f"{type(self).__name__}.hidden_states: not implemented; "
            "a subclass must define it (docs/extending.md).")

    def compute_loss(self, outputs, streamlines, open_ends=None):
        """Mean loss over the batch's predictions, and their number.

        Parameters
        ----------
        outputs : torch.Tensor (M, output_size)
            From ``forward``.
        streamlines : list of torch.Tensor (n_i, 3)
            The same (target) streamlines, voxel space, corner origin.
        open_ends : torch.Tensor (N,) bool, optional
            The batch's ``open_ends``: with EOS and the getter's
            ``eos_only_at_fibre_ends``, the last point of a streamline that
            ends at a cut is left out of the loss
            (:func:`~dwi_ml.models.directions.rows_with_targets`). A NumPy
            array of N flags is taken too; anything else is refused.

        Returns
        -------
        losses : torch.Tensor, or dict
            The mean loss; with EOS, the named terms ``{'direction': ...,
            'eos': ...}`` whose sum is optimised (the trainer logs each).
        n_points : int
        """
        self._check_outputs(outputs, "compute_loss")
        open_ends = self._check_open_ends(open_ends, len(streamlines))
        target_dirs, eos_targets = compute_direction_targets(
            streamlines, self.add_eos)
        if len(outputs) != len(target_dirs):
            raise DwiMLUserError(
                f"{type(self).__name__}.compute_loss: expected one row of "
                f"outputs per prediction of the streamlines "
                f"({len(target_dirs)}: n{'' if self.add_eos else ' - 1'} "
                f"per streamline), found {len(outputs)}.")
        kept = None
        if self.direction_getter.eos_only_at_fibre_ends:
            kept = rows_with_targets(streamline_lengths(streamlines),
                                     open_ends, self.add_eos)
        if kept is not None:
            kept = kept.to(outputs.device)
            outputs, target_dirs, eos_targets = (
                outputs[kept], target_dirs[kept], eos_targets[kept])
        losses, n_points = self.direction_getter.compute_named_losses(
            outputs, target_dirs, eos_targets)
        if self.add_eos:
            return losses, n_points
        return losses["direction"], n_points

    def get_tracking_directions(self, outputs, algo="det", draws=None):
        """Unit directions (N, 3) and EOS probabilities (N,) or None.

        See
        :meth:`dwi_ml.models.direction_getters.base.AbstractDirectionGetter.get_tracking_directions`.
        """
        self._check_outputs(outputs, "get_tracking_directions")
        return self.direction_getter.get_tracking_directions(
            outputs, algo, draws)

    def _check_outputs(self, outputs, method):
        """Refuse outputs that are not (M, output_size) tensors: extra
        columns were ignored, and a wrong width read other values."""
        check_rows_of_width(
            outputs, "M", self.output_size,
            f"{type(self).__name__}.{method}: expected outputs",
            "the model's output_size")

    def _check_open_ends(self, open_ends, nb_streamlines):
        """``open_ends`` as a bool tensor (N,), or None; refuse anything
        else (integers would index streamlines, a wrong length failed in
        torch or was ignored)."""
        if open_ends is None:
            return None
        if isinstance(open_ends, np.ndarray) and open_ends.dtype == bool:
            open_ends = torch.from_numpy(open_ends)
        if (isinstance(open_ends, torch.Tensor)
                and open_ends.dtype == torch.bool
                and tuple(open_ends.shape) == (nb_streamlines,)):
            return open_ends
        found = (f"shape {tuple(open_ends.shape)} {open_ends.dtype}"
                 if isinstance(open_ends, torch.Tensor)
                 else type(open_ends).__name__)
        raise DwiMLUserError(
            f"{type(self).__name__}.compute_loss: expected open_ends of "
            f"shape ({nb_streamlines},), bool (one flag per streamline), "
            f"found {found}.")

    def eos_is_most_likely(self, outputs):
        """(N,) bool: EOS is the most likely class (``--eos_stop max``).

        See
        :meth:`dwi_ml.models.direction_getters.base.AbstractDirectionGetter.eos_is_most_likely`.
        """
        return self.direction_getter.eos_is_most_likely(outputs)
