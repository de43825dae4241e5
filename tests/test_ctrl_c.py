"""Ctrl-C or SIGTERM while a script writes its output: one line, nothing
half-written.

A real SIGINT (or SIGTERM: ``scancel``, a time limit) reaches a real script
while its output's temporary file exists (it is being written); the final
name must not exist afterwards, nor the temporary file, and the script says
so in one line with exit status 130 (143), as a shell reports for a command
stopped by that signal.
"""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from file_tree import snapshot
from training_data import make_trained_experiment, make_training_hdf5

from dwi_ml.io_utils.errors import EXIT_STATUS_CTRL_C, EXIT_STATUS_SIGTERM

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "scripts_python")
# A fast machine may finish writing before the signal arrives: try again.
NB_ATTEMPTS = 5
# Each signal, its exit status and what the script says.
STOPS = [(signal.SIGINT, EXIT_STATUS_CTRL_C, "interrupted (Ctrl-C)"),
         (signal.SIGTERM, EXIT_STATUS_SIGTERM, "terminated (SIGTERM)")]
STOP_IDS = ["SIGINT", "SIGTERM"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_trained_experiment(tmp_path_factory.mktemp("ctrl_c_data"),
                                   nb_streamlines=120)


def _interrupt_while_writing(script, args, out_path, signum):
    """Run SCRIPT; send ``signum`` once its output's temporary file exists.

    Returns the exit status and stderr of the interrupted run, or None when
    every attempt finished its output before the signal (the output then
    exists: such a run, whatever it said, is tried again).
    """
    temporaries = os.path.join(os.path.dirname(out_path),
                               f".{os.path.basename(out_path)}.*")
    for _ in range(NB_ATTEMPTS):
        process = subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while process.poll() is None and not glob.glob(temporaries):
            time.sleep(0.0005)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        if not os.path.lexists(out_path):
            return process.returncode, stderr
        os.remove(out_path)
    return None


def _assert_stopped_cleanly(stopped, stop, script, out_path, folder,
                            before):
    assert stopped is not None, "each run finished before the signal"
    returncode, stderr = stopped
    _, status, what = stop
    assert returncode == status, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        f"{script}: {what}; an output it had not finished is not written."]
    assert not os.path.lexists(out_path)
    assert snapshot(folder) == before


@pytest.mark.parametrize("stop", STOPS, ids=STOP_IDS)
def test_stop_during_hdf5_creation(data, tmp_path, stop):
    synthetic = data["folder"] / "synthetic"
    out_path = str(tmp_path / "out.hdf5")
    before = snapshot(tmp_path)
    script = "dwiml_create_hdf5_dataset.py"
    stopped = _interrupt_while_writing(script, [
        str(synthetic / "dwi_ml_ready"), out_path,
        str(synthetic / "config.json"),
        *(str(synthetic / f"{split}_subjs.txt")
          for split in ("training", "validation", "testing"))], out_path,
        stop[0])
    _assert_stopped_cleanly(stopped, stop, script, out_path, tmp_path, before)


@pytest.mark.parametrize("stop", STOPS, ids=STOP_IDS)
@pytest.mark.parametrize("extension", [".trk", ".trx"])
def test_stop_during_tractogram_writing(data, tmp_path, extension, stop):
    out_path = str(tmp_path / f"tracks{extension}")
    before = snapshot(tmp_path)
    script = "dwiml_track_from_model.py"
    stopped = _interrupt_while_writing(script, [
        data["experiment"], data["hdf5"], "subj-03", "input", out_path,
        "--seeding_mask_group", "wm_mask", "--npv", "2",
        "--step_size", "1.5"], out_path, stop[0])
    _assert_stopped_cleanly(stopped, stop, script, out_path, tmp_path, before)


def test_sigterm_after_a_finished_training_says_it_is_complete(tmp_path):
    # A SIGTERM while the interpreter exits, after 'Experiment saved' (a
    # time limit, scancel): the script died of it (143) without a word,
    # so that the run looked killed with its experiment unfinished. This
    # one comes in Python's last steps (registered first, atexit runs it
    # last): ignored, a finished run (test_launcher: the line before).
    hdf5_file = make_training_hdf5(str(tmp_path))
    script = os.path.join(SCRIPTS, "dwiml_train_model.py")
    code = ("import atexit, os, runpy, signal, sys\n"
            "atexit.register(os.kill, os.getpid(), signal.SIGTERM)\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    process = subprocess.run(
        [sys.executable, "-c", code, script, str(tmp_path), "exp", hdf5_file,
         "input", "streamlines", "--max_epochs", "1", "--step_size", "1.5",
         "--rnn_layer_sizes", "8", "-v", "WARNING"],
        capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.startswith(f"Experiment saved in {tmp_path}/exp (")
    assert process.stderr == ""
    # The whole run: its one epoch logged, and a checkpoint after it.
    experiment = tmp_path / "exp"
    assert len(np.load(experiment / "logs" / "train_loss.npy")) == 1
    state = torch.load(experiment / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert state["current_epoch"] == 1
    assert (state["position"]["phase"],
            state["position"]["nb_batches_done"]) == ("train", 0)


@pytest.mark.parametrize("stop", STOPS, ids=STOP_IDS)
def test_a_signal_wrapped_by_python_is_still_one_line(capsys, stop):
    # A signal during a lazy import of torch's came wrapped in Python's
    # "Error calling __set_name__" RuntimeError: a traceback, exit status 1.
    from dwi_ml.io_utils.errors import Terminated, script_entry_point
    raised = KeyboardInterrupt if stop[0] == signal.SIGINT else Terminated

    class Descriptor:
        def __set_name__(self, owner, name):
            raise raised()

    @script_entry_point
    def main(argv=None):
        type("Owner", (), {"field": Descriptor()})

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == stop[1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f": {stop[2]}; an output it had not" in err[0]
