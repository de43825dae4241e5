"""Run dwiml_train_model.py's training and SIGKILL it in the middle of an epoch.

Usage: python kill_during_training.py KILL_EPOCH KILL_BATCH TRAIN_ARGS...
Used by test_training_resume.py: a real process, really killed.
"""
import os
import signal
import sys

from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.training.callbacks import Callback


class KillAt(Callback):
    """SIGKILL this process after a given batch of a given epoch."""

    def __init__(self, epoch, batch_index):
        self.epoch = epoch
        self.batch_index = batch_index

    def on_train_batch_end(self, trainer, batch, outputs):
        if (trainer.current_epoch, trainer.batch_index) == (self.epoch,
                                                            self.batch_index):
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kill_epoch, kill_batch = int(sys.argv[1]), int(sys.argv[2])
    train_from_args(build_parser().parse_args(sys.argv[3:]),
                    callbacks=[KillAt(kill_epoch, kill_batch)])
