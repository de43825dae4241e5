"""Run dwiml_train_model.py's training (or a resume) and record each rank.

Usage (under torchrun or alone):
    python ddp_train.py OUT_DIR KILL_EPOCH KILL_BATCH train TRAIN_ARGS...
    python ddp_train.py OUT_DIR -1 -1 resume RESUME_ARGS...
Each rank writes OUT_DIR/rank{R}.pt with its final weights and epoch logs,
so the test can check that all ranks agree. KILL_EPOCH >= 0 makes rank 0
SIGKILL itself after that batch of that epoch. With DWIML_TEST_FLOAT64=1
in the environment, the model is built and trained in float64.
"""
import os
import signal
import sys

import torch

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.training.callbacks import Callback


class RecordRank(Callback):
    """Save this rank's weights and logs at the end; optionally die."""

    def __init__(self, out_dir, kill_epoch, kill_batch):
        self.out_dir = out_dir
        self.kill = (kill_epoch, kill_batch)

    def on_train_batch_end(self, trainer, batch, outputs):
        if (trainer.is_main_process
                and (trainer.current_epoch, trainer.batch_index) == self.kill):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer):
        torch.save({"weights": trainer.model.state_dict(),
                    "train_loss": torch.tensor(
                        trainer.monitors["train_loss"].epoch_history,
                        dtype=torch.float64),
                    "world_size": trainer.distributed.world_size,
                    "device": str(next(trainer.model.parameters()).device)},
                   os.path.join(self.out_dir,
                                f"rank{trainer.distributed.rank}.pt"))


if __name__ == "__main__":
    out_dir, kill_epoch, kill_batch, mode = sys.argv[1:5]
    if os.environ.get("DWIML_TEST_FLOAT64") == "1":
        torch.set_default_dtype(torch.float64)
    record = RecordRank(out_dir, int(kill_epoch), int(kill_batch))
    if mode == "train":
        train_from_args(build_parser().parse_args(sys.argv[5:]),
                        callbacks=[record])
    else:
        resume_cli.resume_from_args(resume_cli.build_parser().parse_args(
            sys.argv[5:]), callbacks=[record])
