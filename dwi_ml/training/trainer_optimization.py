"""The optimisation steps of the trainer, one overridable method each.

A mixin of :class:`~dwi_ml.training.trainer.DWIMLAbstractTrainer`: it reads
the trainer's ``distributed``, ``grad_scaler``, ``optimizer``, ``scheduler``,
``clip_grad``, ``grad_accumulation_steps``, ``batch_index`` and
``mixed_precision``, ``monitors``, ``best_tracker`` and
``use_validation``.
"""
import math

import torch

from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.training.distributed import all_reduce_sum
from dwi_ml.training.epoch_position import TRAIN_PHASE, VALID_PHASE
from dwi_ml.training.optimizers import step_scheduler


def compute_batch_loss(model, outputs, batch):
    """``model.compute_loss`` on a prepared batch's target streamlines.

    The batch's ``open_ends`` (split pieces that end at a cut) are passed
    when there are some, so a model whose ``compute_loss`` does not take
    them still trains on unsplit batches.
    """
    targets = batch.target_streamlines()
    if batch.open_ends is None:
        return model.compute_loss(outputs, targets)
    return model.compute_loss(outputs, targets, open_ends=batch.open_ends)


def combine_losses(losses):
    """``(total, named)`` from a loss tensor or a dict of named losses.

    The total of a dict is the sum of its values; ``named`` maps each name
    to its tensor (empty for a single tensor).
    """
    if isinstance(losses, dict):
        return sum(losses.values()), dict(losses)
    return losses, {}


def loss_log_values(loss, named):
    """Floats to log: ``loss`` and ``loss_NAME`` for each named loss."""
    return {"loss": loss.item(),
            **{f"loss_{name}": value.item() for name, value in named.items()}}


class TrainerOptimization:
    """Loss reduction, back-propagation, optimizer and scheduler steps."""

    def reduce_losses(self, losses, n_points):
        """The total loss tensor, and the batch's outputs for the logs.

        Outputs hold ``loss``, ``loss_NAME`` per named loss and
        ``n_points``. Alone they are this batch's values; under torchrun,
        the points-weighted means over all ranks, so that logs and stopping
        decisions are the same on every rank.
        """
        loss, named = combine_losses(losses)
        values = loss_log_values(loss, named)
        n_points = int(n_points)
        if self.distributed.is_distributed:
            sums = all_reduce_sum([v * n_points for v in values.values()]
                                  + [n_points], self.device)
            n_points = int(sums[-1])
            values = {key: total / n_points for key, total in zip(values, sums)}
        return loss, {**values, "n_points": n_points}

    def weight_loss_for_ranks(self, loss, n_points, total_points):
        """Scale a rank's mean loss so DDP's gradient average is the global one.

        DDP averages gradients over ranks; weighting rank r's loss by
        ``world_size * n_r / n_total`` makes that average the gradient of
        the mean loss over all points of the global batch.
        """
        if not self.distributed.is_distributed:
            return loss
        return loss * (self.distributed.world_size * int(n_points)
                       / total_points)

    def accumulation_group_size(self, nb_batches):
        """Batches in the current accumulation group (fewer at epoch end)."""
        steps = self.grad_accumulation_steps
        group_start = self.batch_index - self.batch_index % steps
        return min(steps, nb_batches - group_start)

    def _updates_per_epoch(self):
        """Optimizer updates in a training epoch (for per-batch schedulers)."""
        return max(1, math.ceil(self.nb_batches(Split.TRAINING)
                                / self.grad_accumulation_steps))

    def is_update_step(self, nb_batches):
        """True on the last batch of an accumulation group."""
        return ((self.batch_index + 1) % self.grad_accumulation_steps == 0
                or self.batch_index + 1 == nb_batches)

    def back_propagation(self, loss):
        """Accumulate the gradients of ``loss``."""
        self.grad_scaler.scale(loss).backward()

    def optimizer_step(self):
        """Clip, update the weights, zero the gradients, step per-batch LR.

        Returns
        -------
        dict
            ``grad_norm`` (before clipping), ``grad_norm_after_clip`` and
            the ``weight_sum`` after the update (finite when every weight
            is); empty when the fp16 gradient scaler skipped the update.

        Notes
        -----
        With fp16 the scaled gradients overflow now and then (often in
        the first steps, at the scaler's initial scale of 2**16): their
        norm is then infinite, the scaler skips the update and lowers its
        scale. That is its normal working, not a diverging run: no
        gradient norm is reported, so the NaN check and the logs see none.
        """
        self.grad_scaler.unscale_(self.optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.clip_grad if self.clip_grad is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        clipped_norm = grad_norm if self.clip_grad is None else float(
            torch.nn.utils.get_total_norm([p.grad for p in parameters]))
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler_factory.step_every == "batch":
            step_scheduler(self.scheduler)
        if self.grad_scaler.is_enabled() and not math.isfinite(grad_norm):
            return {}
        # A finite gradient times a huge learning rate can still overflow
        # the weights: the NaN check refuses them before any save. A sum is
        # finite when every weight is (50 us for an LSTM [64, 64] on one
        # CPU thread, against 400 for an inf-norm or isfinite per tensor).
        with torch.no_grad():
            weight_sum = float(torch.stack(
                [weights.sum() for weights in self.model.parameters()]).sum())
        return {"grad_norm": grad_norm, "grad_norm_after_clip": clipped_norm,
                "weight_sum": weight_sum}

    def autocast(self):
        """Mixed-precision context: bf16 on any device, fp16 on CUDA only."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.mixed_precision)
        if dtype == torch.float16 and self.device.type != "cuda":
            dtype = None
        return torch.autocast(device_type=self.device.type, dtype=dtype,
                              enabled=dtype is not None)

    def end_epoch(self, epoch):
        """Close the monitors, step the scheduler, update the best epoch.

        The scheduler steps on the validation loss (the training loss
        without validation); the best epoch follows ``best_model_metric``.

        Returns
        -------
        epoch_logs : dict
            This epoch's value of every monitor.
        is_best : bool
        """
        self.monitors.end_phase(TRAIN_PHASE)
        if self.use_validation:
            self.monitors.end_phase(VALID_PHASE)
        else:
            self.monitors.skip_phase(VALID_PHASE)
            self.monitors["valid_time"].set_epoch_value(0.0)
        # Callbacks add their per-epoch values (e.g. tracking validation)
        # before the epoch is closed and its best metric is read.
        self.callbacks.on_validation_end(self, epoch)
        epoch_logs = self.monitors.end_epoch()
        loss = epoch_logs["valid_loss" if self.use_validation else "train_loss"]
        if self.scheduler_factory.step_every == "epoch":
            step_scheduler(self.scheduler, loss)
        is_best = self.best_tracker.update(self.best_metric_value(epoch_logs),
                                           epoch)
        return epoch_logs, is_best

    @property
    def best_metric_name(self):
        """The log the best epoch follows: ``best_model_metric``, but
        'train_loss' for 'valid_loss' when there is no validation set."""
        metric = self.best_tracker.metric
        if metric == "valid_loss" and not self.use_validation:
            return "train_loss"
        return metric

    def best_metric_value(self, epoch_logs):
        """This epoch's value of :attr:`best_metric_name`.

        Raises
        ------
        DwiMLUserError
            No monitor of that name this epoch (no callback writes it).
        """
        metric = self.best_metric_name
        if metric not in epoch_logs:
            raise DwiMLUserError(
                f"best_model_metric: no monitor '{metric}' at epoch end "
                f"(found: {', '.join(sorted(epoch_logs))}); tracking metrics "
                "need tracking validation (--tracking_validation_every).")
        return epoch_logs[metric]
