"""Train (or resume) and send this process real signals at chosen batches.

Usage:
    python signal_during_training.py SIGNALS train TRAIN_ARGS...
    python signal_during_training.py SIGNALS resume RESUME_ARGS...
SIGNALS is a comma-separated list of EPOCH:PHASE:BATCH:SIGNAL, or '-' for
none. PHASE 'train' or 'valid' fires after batch BATCH of that phase;
'save' fires while a checkpoint is being written (before its files), where
EPOCH:BATCH is the position saved: the next epoch and 0 at an epoch's end;
'start' (BATCH 0) fires when the epoch starts; 'end' (BATCH 0) fires
between the epoch's best-model save and its checkpoint. SIGNAL is a signal name, or
two names joined by '+' to send both (a second signal during the stop).
'SIGTERM@group' sends SIGTERM to the whole process group, as SLURM does,
and returns once the DataLoader workers have died of it. 'WAIT' writes
the file $DWIML_TEST_READY_DIR/PID, then waits until this process receives
a stop signal: the test sends it, and the run cannot end meanwhile.
DWIML_TEST_SLEEP_PER_BATCH=S makes each training batch S seconds longer (for
--max_time). Used by test_preemption.py: the process exits through the
scripts' own entry points, with their exit status.
"""
import multiprocessing
import os
import signal
import sys
import time

from dwi_ml.cli import dwiml_train_model as train_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.training.callbacks import Callback


class SignalAt(Callback):
    """os.kill(getpid(), SIGNAL) after given batches."""

    def __init__(self, spec):
        self.targets = {}
        if spec != "-":
            for item in spec.split(","):
                epoch, phase, batch, names = item.split(":")
                self.targets[(int(epoch), phase, int(batch))] = names.split("+")

    def _fire(self, trainer, phase, batch_index=None, epoch=None):
        if batch_index is None:
            batch_index = trainer.batch_index
        if epoch is None:
            epoch = trainer.current_epoch
        key = (epoch, phase, batch_index)
        for name in self.targets.pop(key, []):
            if name == "WAIT":
                ready = os.path.join(os.environ["DWIML_TEST_READY_DIR"],
                                     str(os.getpid()))
                with open(ready, "w"):
                    pass
                while trainer.interruptions.received_signal is None:
                    time.sleep(0.01)
            elif name == "SIGTERM@group":
                os.killpg(os.getpgid(0), signal.SIGTERM)
                while any(child.is_alive()
                          for child in multiprocessing.active_children()):
                    time.sleep(0.01)
            else:
                os.kill(os.getpid(), getattr(signal, name))

    def on_epoch_start(self, trainer, epoch):
        self._fire(trainer, "start", 0)

    def on_epoch_end(self, trainer, epoch, logs):
        self._fire(trainer, "end", 0, epoch)

    def on_train_batch_end(self, trainer, batch, outputs):
        time.sleep(float(os.environ.get("DWIML_TEST_SLEEP_PER_BATCH", "0")))
        self._fire(trainer, "train")

    def on_validation_batch_end(self, trainer, batch, outputs):
        self._fire(trainer, "valid")

    def on_checkpoint_save(self, trainer, state):
        self._fire(trainer, "save", trainer.position.nb_batches_done)


if __name__ == "__main__":
    spec, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    callbacks = [SignalAt(spec)]
    if mode == "train":
        entry = script_entry_point(
            lambda argv: train_cli.train_from_args(
                train_cli.build_parser().parse_args(argv), callbacks))
    else:
        entry = script_entry_point(
            lambda argv: resume_cli.resume_from_args(
                resume_cli.build_parser().parse_args(argv), callbacks))
    entry(args)
