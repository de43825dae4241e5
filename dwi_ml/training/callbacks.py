"""Trainer events and the callbacks that react to them.

The training loop only fires events; progress bars, the NaN check, the
``.npy`` logs and the end-of-epoch log line are callbacks, so a model author
can add or replace one without touching the loop.
"""
import logging
import math

from tqdm import tqdm

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import progress_bars_disabled

logger = logging.getLogger(__name__)

CALLBACK_EVENTS = (
    "on_train_start", "on_train_end", "on_epoch_start", "on_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_batch_end", "on_checkpoint_save", "on_checkpoint_load")


class TrainingAbortedError(DwiMLUserError):
    """The run cannot go on (e.g. a NaN loss); the last checkpoint is kept."""


class Callback:
    """Base class: override any event; each receives the trainer first.

    Events: ``on_train_start(trainer)``, ``on_train_end(trainer)``,
    ``on_epoch_start(trainer, epoch)``, ``on_epoch_end(trainer, epoch,
    epoch_logs)``, ``on_train_batch_start(trainer, batch)``,
    ``on_train_batch_end(trainer, batch, outputs)``,
    ``on_validation_batch_end(trainer, batch, outputs)``,
    ``on_checkpoint_save(trainer, checkpoint_state)`` and
    ``on_checkpoint_load(trainer, checkpoint_state)``. ``outputs`` is a
    dict with at least ``loss`` (float) and ``n_points``.

    A callback with state returns it from :meth:`state_dict` (plain
    Python or tensors); it is saved in the checkpoint under the callback's
    ``name`` and given back to :meth:`load_state_dict` on resume.
    """

    name = None

    def state_dict(self):
        """State saved in checkpoints; None when stateless."""
        return None

    def load_state_dict(self, state):
        """Restore the state returned by :meth:`state_dict`."""


def _make_event(event_name):
    def fire(self, trainer, *args):
        for callback in self.callbacks:
            method = getattr(callback, event_name, None)
            if method is not None:
                method(trainer, *args)
    fire.__name__ = event_name
    fire.__doc__ = f"Call ``{event_name}`` on every callback, in order."
    return fire


class CallbackList:
    """Fires each event on a list of callbacks, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def append(self, callback):
        """Add a callback at the end of the list."""
        self.callbacks.append(callback)

    def state_dict(self):
        """States of the named callbacks that have one."""
        states = {}
        for callback in self.callbacks:
            state = callback.state_dict()
            if state is not None and callback.name:
                states[callback.name] = state
        return states

    def load_state_dict(self, states):
        """Give each named callback its saved state."""
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])


for _event in CALLBACK_EVENTS:
    setattr(CallbackList, _event, _make_event(_event))


class NanCheckCallback(Callback):
    """Stop the run on a NaN or infinite loss or gradient norm."""

    def on_train_batch_end(self, trainer, batch, outputs):
        for key in ("loss", "grad_norm"):
            value = outputs.get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingAbortedError(
                    f"non-finite {key} ({value}) at epoch {trainer.current_epoch}"
                    f", batch {trainer.batch_index}; the last checkpoint and "
                    "best model are kept. Try a lower learning rate or "
                    "--clip_grad.")

    def on_validation_batch_end(self, trainer, batch, outputs):
        if not math.isfinite(outputs["loss"]):
            raise TrainingAbortedError(
                f"non-finite validation loss at epoch {trainer.current_epoch}; "
                "the last checkpoint and best model are kept.")


class ProgressBarCallback(Callback):
    """One tqdm bar per epoch and phase, showing the running loss."""

    def __init__(self):
        self._bar = None
        self._phase = None

    def _open(self, trainer, phase):
        self._phase = phase
        total = trainer.nb_batches(phase)
        # A resumed epoch starts its bar at the batch it resumes from.
        self._bar = tqdm(total=total, initial=trainer.batch_index,
                         desc=f"epoch {trainer.current_epoch} {phase}",
                         leave=False,
                         disable=(progress_bars_disabled()
                                  or not trainer.is_main_process))

    def _advance(self, trainer, phase):
        if self._bar is None or self._phase != phase:
            self._close()
            self._open(trainer, phase)
        self._bar.update(1)
        monitor = trainer.monitors[f"{phase}_loss"]
        self._bar.set_postfix(loss=f"{monitor.running_mean:.4f}")

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_batch_end(self, trainer, batch, outputs):
        self._advance(trainer, "train")

    def on_validation_batch_end(self, trainer, batch, outputs):
        self._advance(trainer, "valid")

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        self._close()

    def on_train_end(self, trainer):
        self._close()


class NpyLoggerCallback(Callback):
    """Write one ``logs/NAME.npy`` per monitor at each epoch end."""

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if not trainer.is_main_process:
            return
        for monitor in trainer.monitors.values():
            monitor.save(trainer.logs_dir)


class EpochSummaryCallback(Callback):
    """Log one line per epoch: losses, learning rate, time and best epoch."""

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if not trainer.is_main_process:
            return
        parts = [f"epoch {epoch}"]
        for key in ("train_loss", "valid_loss"):
            if key in epoch_logs and math.isfinite(epoch_logs[key]):
                parts.append(f"{key} {epoch_logs[key]:.5f}")
        parts.append(f"lr {epoch_logs['learning_rate']:.3g}")
        parts.append(f"time {epoch_logs['train_time'] + epoch_logs['valid_time']:.1f}s")
        parts.append(f"best epoch {trainer.best_tracker.best_epoch} "
                     f"({trainer.best_tracker.best_loss:.5f})")
        logger.info(", ".join(parts))
