"""Trainer events and the callbacks that react to them.

The training loop only fires events; progress bars, the NaN check, the
``.npy`` logs and the end-of-epoch log line are callbacks, so a model author
can add or replace one without touching the loop.
"""
import logging
import math

from tqdm import tqdm

from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import LOGS_DIR
from dwi_ml.io_utils.output_folders import record_written_entries
from dwi_ml.io_utils.script_args import progress_bars_disabled

logger = logging.getLogger(__name__)

class TrainingAbortedError(DwiMLUserError):
    """The run cannot go on (e.g. a NaN loss); the last checkpoint is kept."""


class Callback:
    """Base class: override any event; each receives the trainer first.

    Events: ``on_train_start(trainer)``, ``on_train_end(trainer)``,
    ``on_epoch_start(trainer, epoch)``, ``on_epoch_end(trainer, epoch,
    epoch_logs)``, ``on_train_batch_start(trainer, batch)``,
    ``on_train_batch_end(trainer, batch, outputs)``,
    ``on_validation_batch_end(trainer, batch, outputs)``,
    ``on_validation_end(trainer, epoch)``,
    ``on_checkpoint_save(trainer, checkpoint_state)`` and
    ``on_checkpoint_load(trainer, checkpoint_state)``. ``outputs`` is a
    dict with at least ``loss`` (float) and ``n_points``.

    ``on_validation_end`` comes after the epoch's training and validation,
    before its monitors are closed and its best epoch is chosen: a
    callback may add one value per epoch there, with
    ``trainer.monitors.get_or_create(name).set_epoch_value(value)`` (it
    must then do so at every epoch, so that each log has one value per
    epoch). It runs in the epoch's end phase, before its checkpoint: a run
    stopped before the checkpoint redoes it on resume.

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


class CallbackList:
    """Fires each event on a list of callbacks, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        # States of callbacks absent from this run (e.g. Comet not asked for
        # on one resume): kept and saved again, so a later run finds them.
        self._unclaimed_states = {}

    def append(self, callback):
        """Add a callback at the end of the list."""
        self.callbacks.append(callback)

    def state_dict(self):
        """States of the named callbacks that have one."""
        states = dict(self._unclaimed_states)
        for callback in self.callbacks:
            state = callback.state_dict()
            if state is not None and callback.name:
                states[callback.name] = state
        return states

    def load_state_dict(self, states):
        """Give each named callback its saved state."""
        names = {callback.name for callback in self.callbacks}
        self._unclaimed_states = {name: state for name, state in states.items()
                                  if name not in names}
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])

    def _fire(self, event_name, trainer, *args):
        """Call ``event_name`` on every callback that has it, in order."""
        for callback in self.callbacks:
            method = getattr(callback, event_name, None)
            if method is not None:
                method(trainer, *args)

    # One method per event (see :class:`Callback`), so that a search for an
    # event name finds where it is fired.
    def on_train_start(self, trainer):
        """Fire ``on_train_start``."""
        self._fire("on_train_start", trainer)

    def on_train_end(self, trainer):
        """Fire ``on_train_end``."""
        self._fire("on_train_end", trainer)

    def on_epoch_start(self, trainer, epoch):
        """Fire ``on_epoch_start``."""
        self._fire("on_epoch_start", trainer, epoch)

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        """Fire ``on_epoch_end``."""
        self._fire("on_epoch_end", trainer, epoch, epoch_logs)

    def on_train_batch_start(self, trainer, batch):
        """Fire ``on_train_batch_start``."""
        self._fire("on_train_batch_start", trainer, batch)

    def on_train_batch_end(self, trainer, batch, outputs):
        """Fire ``on_train_batch_end``."""
        self._fire("on_train_batch_end", trainer, batch, outputs)

    def on_validation_batch_end(self, trainer, batch, outputs):
        """Fire ``on_validation_batch_end``."""
        self._fire("on_validation_batch_end", trainer, batch, outputs)

    def on_validation_end(self, trainer, epoch):
        """Fire ``on_validation_end``."""
        self._fire("on_validation_end", trainer, epoch)

    def on_checkpoint_save(self, trainer, checkpoint_state):
        """Fire ``on_checkpoint_save``."""
        self._fire("on_checkpoint_save", trainer, checkpoint_state)

    def on_checkpoint_load(self, trainer, checkpoint_state):
        """Fire ``on_checkpoint_load``."""
        self._fire("on_checkpoint_load", trainer, checkpoint_state)


_GO_ON_WITH_OTHER_SETTINGS = (
    "To go on with a lower --learning_rate or with --clip_grad, start a new "
    "experiment from it: --pretrained EXPERIMENT [--pretrained_use_latest_"
    "epoch].")


class NanCheckCallback(Callback):
    """Stop the run on a NaN or infinite loss, gradient norm or weight,
    before anything is saved from it."""

    def on_train_batch_end(self, trainer, batch, outputs):
        where = f"at epoch {trainer.current_epoch}, batch {trainer.batch_index}"
        for key, what in (("loss", "loss ({})"), ("grad_norm", "grad_norm ({})"),
                          ("weight_sum", "weights after the update")):
            value = outputs.get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingAbortedError(
                    f"non-finite {what.format(value)} {where}; the last "
                    "checkpoint and best model are kept. "
                    + _GO_ON_WITH_OTHER_SETTINGS)

    def on_validation_batch_end(self, trainer, batch, outputs):
        if not math.isfinite(outputs["loss"]):
            raise TrainingAbortedError(
                f"non-finite validation loss at epoch {trainer.current_epoch}; "
                "the last checkpoint and best model are kept. "
                + _GO_ON_WITH_OTHER_SETTINGS)


class ProgressBarCallback(Callback):
    """One tqdm bar per epoch and phase, showing the running loss."""

    def __init__(self):
        self._bar = None
        self._split = None

    def _open(self, trainer, split):
        self._split = split
        total = trainer.nb_batches(split)
        # A resumed epoch starts its bar at the batch it resumes from.
        self._bar = tqdm(total=total, initial=trainer.batch_index,
                         desc=f"epoch {trainer.current_epoch} "
                              f"{split.log_prefix}",
                         leave=False,
                         disable=(progress_bars_disabled()
                                  or not trainer.is_main_process))

    def _advance(self, trainer, split):
        if self._bar is None or self._split != split:
            self._close()
            self._open(trainer, split)
        self._bar.update(1)
        monitor = trainer.monitors[f"{split.log_prefix}_loss"]
        self._bar.set_postfix(loss=f"{monitor.running_mean:.4f}")

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_batch_end(self, trainer, batch, outputs):
        self._advance(trainer, Split.TRAINING)

    def on_validation_batch_end(self, trainer, batch, outputs):
        self._advance(trainer, Split.VALIDATION)

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        self._close()

    def on_train_end(self, trainer):
        self._close()


class NpyLoggerCallback(Callback):
    """Write one ``logs/NAME.npy`` per monitor at each epoch end.

    Their names are recorded in the experiment's output marker, so that
    ``-f`` replaces these logs and refuses any other file of ``logs/`` (a
    user's own ``.npy``).
    """

    def __init__(self):
        self._recorded = set()

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if not trainer.is_main_process:
            return
        with trainer.named_write_failures("the logs", trainer.logs_dir):
            # Recorded before they are written: a kill in between leaves
            # no log of ours that -f would take for a user's.
            names = {f"{LOGS_DIR}/{name}"
                     for monitor in trainer.monitors.values()
                     for name in monitor.file_names}
            if not names <= self._recorded:
                record_written_entries(trainer.experiment_dir, names)
                self._recorded |= names
            for monitor in trainer.monitors.values():
                monitor.save(trainer.logs_dir)


# A GPU that waits for data this share of the training time or more gets
# the --nb_workers hint (once per run).
DATA_WAIT_HINT_SHARE = 0.2


def data_wait_share(wait_s, train_time):
    """The share of ``train_time`` spent waiting for batches, in [0, 1];
    None without a wait (no training batch asked for in this process: a
    run resumed in its validation) or without a training time."""
    if wait_s is None or not train_time > 0:
        return None
    return min(max(wait_s / train_time, 0.0), 1.0)


def data_wait_hint(device_type, nb_workers, share, epoch):
    """The warning for a GPU left waiting for data, or None.

    On CUDA the DataLoader's workers read and augment the next batches
    while the GPU computes; with too few, the GPU waits. On CPU, workers
    take the cores of the training step, so no hint is given there.
    """
    if device_type != "cuda" or share is None or share < DATA_WAIT_HINT_SHARE:
        return None
    return (f"The GPU waited for data during {share:.0%} of epoch {epoch}'s "
            f"training (--nb_workers {nb_workers}): DataLoader workers "
            f"prepare the next batches while it computes; a higher "
            f"--nb_workers (within the free CPU cores) should shorten the "
            f"epochs.")


class EpochSummaryCallback(Callback):
    """Log one line per epoch: losses, learning rate, time, the share of
    the training time spent waiting for data, and the best epoch.

    On CUDA, a training that waited for data for at least
    ``DATA_WAIT_HINT_SHARE`` of its time is told, once, to raise
    ``--nb_workers``.
    """

    def __init__(self):
        self._hinted = False

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if not trainer.is_main_process:
            return
        parts = [f"epoch {epoch}"]
        for key in ("train_loss", "valid_loss"):
            if key in epoch_logs and math.isfinite(epoch_logs[key]):
                parts.append(f"{key} {epoch_logs[key]:.5f}")
        parts.append(f"lr {epoch_logs['learning_rate']:.3g}")
        parts.append(f"time {epoch_logs['train_time'] + epoch_logs['valid_time']:.1f}s")
        share = data_wait_share(trainer.data_wait_s.get(Split.TRAINING),
                                epoch_logs["train_time"])
        if share is not None:
            parts.append(f"data wait {share:.0%}")
        best = trainer.best_tracker
        # train_loss, not valid_loss, in a run without validation.
        parts.append(f"best epoch {best.best_epoch} "
                     f"({trainer.best_metric_name} {best.best_loss:.5f})")
        logger.info(", ".join(parts))
        hint = data_wait_hint(trainer.device.type, trainer.nb_workers, share,
                              epoch)
        if hint and not self._hinted:
            self._hinted = True
            logger.warning(hint)
