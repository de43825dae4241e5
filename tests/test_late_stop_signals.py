"""A second stop signal while a training run exits keeps its status.

A run stopped by a signal saves its checkpoint, says how to resume and
exits with status 3; a finished one exits with 0. Torch's teardown takes a
second or more after that line, and a second SIGTERM, SIGUSR1 or Ctrl-C in
that window killed the process (status -15, -10 or -2): a SLURM requeue
loop reading status 3 then stopped, and a finished run looked killed.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from training_data import TINY_TRAINING, make_training_hdf5

# Trains with a callback that sends the first signal to the process at the
# first training batch (a stop; "none": the run finishes), then sends the
# second one from the interpreter's exit, after main.
LATE_SIGNAL = """\
import os, signal, sys, time
from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.training.callbacks import Callback
first, second = sys.argv[1], sys.argv[2]


class StopAtFirstBatch(Callback):
    def on_train_batch_end(self, trainer, batch, outputs):
        if first != "none":
            os.kill(os.getpid(), getattr(signal, first))


main = script_entry_point(lambda argv: train_from_args(
    build_parser().parse_args(argv), callbacks=[StopAtFirstBatch()]))
try:
    main(sys.argv[3:])
finally:
    os.kill(os.getpid(), getattr(signal, second))
    time.sleep(2)
"""


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("late")),
                              nb_streamlines=40)


@pytest.mark.parametrize("first, second, status", [
    ("SIGTERM", "SIGTERM", 3), ("SIGTERM", "SIGUSR1", 3),
    ("SIGUSR1", "SIGINT", 3), ("none", "SIGUSR1", 0)])
def test_a_late_signal_keeps_the_exit_status(tmp_path, hdf5_file, first,
                                             second, status):
    # Named as the script: only a process that runs it ignores late
    # signals (a program calling its main keeps its handlers).
    script = tmp_path / "dwiml_train_model.py"
    script.write_text(LATE_SIGNAL)
    (tmp_path / "exps").mkdir()
    process = subprocess.run(
        [sys.executable, str(script), first, second,
         str(tmp_path / "exps"), "run", hdf5_file, "input", "streamlines",
         *TINY_TRAINING, "--max_epochs", "2"],
        capture_output=True, text=True, timeout=600)
    assert process.returncode == status, process.stderr
    if first == "none":
        logs = os.path.join(tmp_path, "exps", "run", "logs",
                            "train_loss.npy")
        assert len(np.load(logs)) == 2
    else:
        assert f"stopped by {first} in epoch 0" in process.stderr
        assert os.path.isfile(os.path.join(tmp_path, "exps", "run",
                                           "checkpoint", "position.json"))


CALLER = """\
import os, signal, sys
from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.training.callbacks import Callback


class StopAtFirstBatch(Callback):
    def on_train_batch_end(self, trainer, batch, outputs):
        os.kill(os.getpid(), signal.SIGTERM)


main = script_entry_point(lambda argv: train_from_args(
    build_parser().parse_args(argv), callbacks=[StopAtFirstBatch()]))
try:
    main(sys.argv[1:])
except SystemExit as stop:
    print(stop.code, [signal.getsignal(s) is signal.SIG_IGN
                      for s in (signal.SIGTERM, signal.SIGINT,
                                signal.SIGUSR1)])
"""


def test_a_program_calling_the_training_keeps_its_signal_handlers(
        tmp_path, hdf5_file):
    """A notebook or a test that calls the training's main: after a stop
    its Ctrl-C still interrupts it (nothing is left ignored)."""
    process = subprocess.run(
        [sys.executable, "-c", CALLER, str(tmp_path), "run", hdf5_file,
         "input", "streamlines", *TINY_TRAINING],
        capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines()[-1] == "3 [False, False, False]"
