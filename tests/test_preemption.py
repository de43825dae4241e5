"""Pre-emption: real signals stop a run with a checkpoint; resume is exact.

Every interrupted run here is compared with one uninterrupted run: logs
(except times) and weights must be bitwise equal, at 2 torch threads. The
loader draws each batch from (seed, context, epoch, batch index), so 0 or 2
workers and eager or lazy reading give the same batches: one reference run
serves all of them.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from training_data import make_training_hdf5

from dwi_ml.training.cpu_threads import available_cores
from dwi_ml.training.preemption import resume_command

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "signal_during_training.py")
TIME_LOGS = ("train_time.npy", "valid_time.npy")
EXIT_INTERRUPTED = 3
NB_EPOCHS = 3


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("preempt_data")))


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "2", **extra}


def _train_args(experiments, name, hdf5_file, extra=()):
    # 120 streamlines: 4 training batches of 30 and 3 validation batches
    # of 40 per epoch. Dropout, augmentation and noise use every stream.
    return [str(experiments), name, hdf5_file, "input", "streamlines",
            "--max_epochs", str(NB_EPOCHS), "--batch_size_training", "30",
            "--batch_size_validation", "40", "--step_size", "1.5",
            "--nb_previous_dirs", "1", "--rnn_layer_sizes", "16", "16",
            "--dropout", "0.2", "--split_ratio", "0.3", "--reverse_ratio",
            "0.5", "--noise_gaussian_size_forward", "0.1",
            "--noise_gaussian_size_loss", "0.05", "--lr_scheduler", "step",
            "--lr_step_size", "1", "--seed", "7", "--nb_cpu_threads", "2",
            "-v", "WARNING", *extra]


def _run(spec, mode, args, env=None, expected=0):
    process = subprocess.run([sys.executable, HELPER, spec, mode, *args],
                             capture_output=True, text=True, timeout=600,
                             env=env or _env())
    assert process.returncode == expected, process.stderr[-3000:]
    return process


def _resume(spec, experiments, name, expected=0, extra=()):
    return _run(spec, "resume", [str(experiments), name, "-v", "WARNING",
                                 *extra], expected=expected)


def _state(experiment_dir):
    return torch.load(os.path.join(experiment_dir, "checkpoint",
                                   "checkpoint_state.pt"), weights_only=True)


def _position(experiment_dir):
    state = _state(experiment_dir)
    position = state["position"]
    return (state["current_epoch"], position["phase"],
            position["nb_batches_done"])


def _logs(experiment_dir):
    logs_dir = os.path.join(experiment_dir, "logs")
    return {name: np.load(os.path.join(logs_dir, name))
            for name in sorted(os.listdir(logs_dir)) if name not in TIME_LOGS}


def _weights(experiment_dir, folder):
    return torch.load(os.path.join(experiment_dir, folder, "model_state.pt"),
                      weights_only=True)


def assert_same_run(dir_a, dir_b):
    """Bitwise equal logs (but times), weights and checkpoint states of two
    experiments."""
    logs_a, logs_b = _logs(dir_a), _logs(dir_b)
    assert sorted(logs_a) == sorted(logs_b)
    for name in logs_a:
        assert logs_a[name].tobytes() == logs_b[name].tobytes(), name
    assert len(logs_a["train_loss.npy"]) == NB_EPOCHS
    for folder in ("checkpoint/model", "best_model"):
        weights_a, weights_b = _weights(dir_a, folder), _weights(dir_b, folder)
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (folder, key)
        # The files too: a checksum tells two runs' models apart or not.
        assert _state_bytes(dir_a, folder) == _state_bytes(dir_b, folder)
    assert_same_states(dir_a, dir_b)


def _state_bytes(experiment_dir, folder):
    with open(os.path.join(experiment_dir, folder, "model_state.pt"),
              "rb") as f:
        return f.read()


def assert_same_states(dir_a, dir_b):
    """Bitwise equal checkpoint states, but for times."""
    _assert_same_state(_untimed_state(dir_a), _untimed_state(dir_b), "state")


def _untimed_state(folder):
    """checkpoint_state.pt without what measures the machine (times)."""
    state = torch.load(os.path.join(folder, "checkpoint",
                                    "checkpoint_state.pt"), weights_only=True)
    del state["position"]["elapsed_s"]
    for name in ("train_time", "valid_time"):
        state["monitors"].pop(name, None)
    return state


def _assert_same_state(a, b, where):
    # The DataLoaders' generator moved with each process that created
    # iterators: a resumed run's differed (with workers) from a straight one.
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (item_a, item_b) in enumerate(zip(a, b)):
            _assert_same_state(item_a, item_b, f"{where}[{index}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where   # NaN equals NaN


# A guard against a hang only (the suite has no timeout of its own): a run
# gets ready in seconds, however slow the machine.
HANG_GUARD_S = 600


def _wait_until_ready(folder, nb_processes, process):
    """Until ``nb_processes`` wait for a signal (their files in folder); a
    run that ends first, or hangs, fails here."""
    guard = time.monotonic() + HANG_GUARD_S
    while len(os.listdir(folder)) < nb_processes:
        assert process.poll() is None, "the run ended before its signal"
        assert time.monotonic() < guard, \
            f"not ready after {HANG_GUARD_S} s: a hang"
        time.sleep(0.05)


def _stop_line(process):
    lines = process.stderr.strip().splitlines()
    return lines[-1]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, hdf5_file):
    experiments = tmp_path_factory.mktemp("straight")
    _run("-", "train", _train_args(experiments, "straight", hdf5_file))
    return experiments / "straight"


def test_signals_at_many_positions_then_resume_equal_straight_run(
        tmp_path, hdf5_file, straight_run):
    name = "chain"
    folder = tmp_path / name
    # First training batch.
    process = _run("0:train:0:SIGTERM", "train",
                   _train_args(tmp_path, name, hdf5_file),
                   expected=EXIT_INTERRUPTED)
    assert _stop_line(process) == (
        f"stopped by SIGTERM in epoch 0 after 1 training batch; checkpoint saved; "
        f"resume with: resume_training_from_checkpoint.py {tmp_path} {name}")
    assert _position(folder) == (0, "train", 1)
    # During validation.
    _resume("0:valid:0:SIGUSR1", tmp_path, name, EXIT_INTERRUPTED)
    assert _position(folder) == (0, "valid", 1)
    # Last training batch: the position is the start of validation.
    process = _resume("1:train:3:SIGINT", tmp_path, name, EXIT_INTERRUPTED)
    assert ("stopped by SIGINT in epoch 1 after 4 training batches"
            in _stop_line(process))
    assert _position(folder) == (1, "valid", 0)
    # A second signal while stopping changes nothing.
    _resume("2:train:1:SIGTERM+SIGINT", tmp_path, name, EXIT_INTERRUPTED)
    assert _position(folder) == (2, "train", 2)
    process = _resume("-", tmp_path, name)
    assert "resumed and saved" in process.stdout
    assert_same_run(straight_run, folder)


def test_resume_in_the_first_validation_warns_nothing(tmp_path, hdf5_file):
    # The resumed process steps the scheduler at the end of epoch 0 without
    # an update of its own: torch warned "Detected call of
    # `lr_scheduler.step()` before `optimizer.step()`", wrongly.
    args = _train_args(tmp_path, "warn", hdf5_file, extra=("--max_epochs", "1"))
    _run("0:valid:0:SIGTERM", "train", args, expected=EXIT_INTERRUPTED)
    assert _position(tmp_path / "warn") == (0, "valid", 1)
    process = _resume("-", tmp_path, "warn")
    assert "Warning" not in process.stderr, process.stderr[-2000:]
    assert len(np.load(tmp_path / "warn" / "logs" / "train_loss.npy")) == 1


def test_two_workers_lazy_signals_then_resume_equal_straight_run(
        tmp_path, hdf5_file, straight_run):
    name = "workers"
    folder = tmp_path / name
    _run("0:train:2:SIGINT", "train",
         _train_args(tmp_path, name, hdf5_file,
                     ["--nb_workers", "2", "--lazy"]),
         expected=EXIT_INTERRUPTED)
    assert _position(folder) == (0, "train", 3)
    # The last validation batch: the epoch is closed and saved.
    _resume("1:valid:2:SIGTERM", tmp_path, name, EXIT_INTERRUPTED)
    assert _position(folder) == (2, "train", 0)
    assert len(_logs(folder)["train_loss.npy"]) == 2
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, folder)


def test_sigterm_to_the_group_kills_workers_and_still_saves(
        tmp_path, hdf5_file, straight_run):
    name = "group"
    # As SLURM or scancel do: SIGTERM to the main process and its 2 workers,
    # in epoch 1, which waits for it (a run that ended first failed).
    ready = tmp_path / "ready"
    ready.mkdir()
    process = subprocess.Popen(
        [sys.executable, HELPER, "1:train:1:WAIT", "train",
         *_train_args(tmp_path, name, hdf5_file, ["--nb_workers", "2"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(DWIML_TEST_READY_DIR=str(ready)), start_new_session=True)
    _wait_until_ready(ready, 1, process)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert process.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(
        "stopped by SIGTERM in epoch")
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, tmp_path / name)


def test_sigterm_to_the_group_between_epochs(tmp_path, hdf5_file,
                                             straight_run):
    name = "group_between"
    folder = tmp_path / name
    # The workers die before the next epoch wakes them up: a stop, not a
    # DataLoader error.
    process = subprocess.run(
        [sys.executable, HELPER, "1:start:0:SIGTERM@group", "train",
         *_train_args(tmp_path, name, hdf5_file, ["--nb_workers", "2"])],
        capture_output=True, text=True, timeout=600, env=_env(),
        start_new_session=True)
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert _stop_line(process).startswith("stopped by SIGTERM in epoch")
    assert _position(folder) == (1, "train", 0)
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, folder)


def test_signal_during_checkpoint_write(tmp_path, hdf5_file, straight_run):
    name = "during_save"
    folder = tmp_path / name
    # Two signals while the batch-3 checkpoint is written: the write
    # completes, then the run stops after the next step.
    _run("0:save:3:SIGTERM+SIGUSR1", "train",
         _train_args(tmp_path, name, hdf5_file,
                     ["--checkpoint_every_n_batches", "3"]),
         expected=EXIT_INTERRUPTED)
    assert _position(folder) == (0, "valid", 0)
    assert not [entry for entry in os.listdir(folder)
                if entry.endswith((".tmp", ".old"))]
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, folder)


def test_checkpoint_every_n_batches_then_sigkill(tmp_path, hdf5_file,
                                                 straight_run):
    name = "killed"
    folder = tmp_path / name
    _run("1:train:2:SIGKILL", "train",
         _train_args(tmp_path, name, hdf5_file,
                     ["--checkpoint_every_n_batches", "2"]),
         expected=-signal.SIGKILL)
    # Batches 0-1 of epoch 1 were checkpointed; batch 2 is redone.
    assert _position(folder) == (1, "train", 2)
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, folder)


def test_max_time_stops_with_a_checkpoint(tmp_path, hdf5_file, straight_run):
    name = "timed"
    folder = tmp_path / name
    # Each batch takes 0.3 s more: a 2 s budget stops inside epoch 0 or 1.
    process = subprocess.run(
        [sys.executable, HELPER, "-", "train",
         *_train_args(tmp_path, name, hdf5_file, ["--max_time", "00:00:02"])],
        capture_output=True, text=True, timeout=600,
        env=_env(DWIML_TEST_SLEEP_PER_BATCH="0.3"))
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert _stop_line(process).startswith("stopped by max_time in epoch ")
    epoch, _, _ = _position(folder)
    assert epoch < NB_EPOCHS
    # 'none' removes the saved limit (it came back on every resume).
    _resume("-", tmp_path, name, extra=["--max_time", "none"])
    assert_same_run(straight_run, folder)
    saved = json.loads((folder / "parameters.json").read_text())
    assert saved["trainer"]["max_time_s"] is None


def test_a_resume_keeps_the_runs_thread_count(tmp_path, hdf5_file,
                                              straight_run):
    """Without --nb_cpu_threads or OMP_NUM_THREADS, a resume used the cores
    left by its workers: other workers (or another node) gave another
    thread count, other float rounding, and another run, without a word."""
    name = "threads"
    _run("1:train:1:SIGTERM", "train", _train_args(tmp_path, name, hdf5_file),
         expected=EXIT_INTERRUPTED)
    environment = {key: value for key, value in os.environ.items()
                   if key != "OMP_NUM_THREADS"}
    process = _run("-", "resume", [str(tmp_path), name, "-v", "WARNING",
                                   "--nb_workers", "1"], env=environment)
    assert_same_run(straight_run, tmp_path / name)
    assert _state(tmp_path / name)["cpu_threads"] == 2
    oversubscribed = available_cores() - 1 < 2
    assert ("Keeping the run's 2 CPU thread(s) for torch" in
            process.stderr) == oversubscribed


def test_the_same_command_resumes_a_run_given_threads_over_the_variable(
        tmp_path, hdf5_file, straight_run):
    """Trained with --nb_cpu_threads 2 where OMP_NUM_THREADS is 1 (as
    under torchrun): the printed resume command, in the same environment,
    took 1 thread from the variable, and the run's numbers changed."""
    name = "threads_over_variable"
    _run("1:train:1:SIGTERM", "train",
         _train_args(tmp_path, name, hdf5_file, ["--nb_cpu_threads", "2"]),
         env=_env(OMP_NUM_THREADS="1"), expected=EXIT_INTERRUPTED)
    process = _run("-", "resume", [str(tmp_path), name, "-v", "WARNING"],
                   env=_env(OMP_NUM_THREADS="1"))
    assert "float rounding differs" not in process.stderr
    assert_same_run(straight_run, tmp_path / name)
    assert _state(tmp_path / name)["cpu_threads"] == 2


def test_runs_repeat_bitwise_under_cpu_contention(tmp_path, hdf5_file,
                                                  straight_run):
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2)]
    try:
        _run("-", "train", _train_args(tmp_path, "busy", hdf5_file))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert_same_run(straight_run, tmp_path / "busy")


def test_resume_if_exists_starts_then_continues(tmp_path, hdf5_file,
                                                straight_run):
    name = "wrapper"
    args = _train_args(tmp_path, name, hdf5_file, ["--resume_if_exists"])
    _run("0:valid:1:SIGTERM", "train", args, expected=EXIT_INTERRUPTED)
    # The same command line continues the run.
    process = _run("-", "train", args)
    assert "resumed and saved" in process.stdout
    assert_same_run(straight_run, tmp_path / name)
    # Requeued once more after the end: nothing to do is a success (it
    # exited 2 and the job was marked failed), and nothing changes.
    process = _run("-", "train", args)
    assert (f"Nothing to resume: experiment '{tmp_path / name}' already "
            f"finished its {NB_EPOCHS} epochs") in process.stderr
    assert_same_run(straight_run, tmp_path / name)


@pytest.mark.parametrize("epoch", [0, 1])
def test_sigkill_between_best_model_and_checkpoint_then_requeue(
        tmp_path, hdf5_file, straight_run, epoch):
    # Epoch 0: before, the best model without any checkpoint made
    # --resume_if_exists refuse for ever (a requeued job failed each time).
    name = "killed_at_end"
    args = _train_args(tmp_path, name, hdf5_file, ["--resume_if_exists"])
    _run(f"{epoch}:end:0:SIGKILL", "train", args, expected=-signal.SIGKILL)
    assert os.path.isdir(tmp_path / name / "best_model")
    _run("-", "train", args)
    assert_same_run(straight_run, tmp_path / name)


def test_auto_requeue_calls_scontrol(tmp_path, hdf5_file):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\n")
    scontrol.chmod(0o755)
    env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               SLURM_JOB_ID="4242")
    process = subprocess.run(
        [sys.executable, HELPER, "0:train:1:SIGUSR1", "train",
         *_train_args(tmp_path, "requeued", hdf5_file, ["--auto_requeue"])],
        capture_output=True, text=True, timeout=600, env=env)
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert record.read_text() == "requeue 4242\n"
    assert "job requeued" in _stop_line(process)


def test_interruption_options_are_checked(tmp_path, hdf5_file, capsys):
    from dwi_ml.cli.dwiml_train_model import main as train_main

    for option, value, expected in (
            ("--max_time", "90", "expected a positive duration"),
            ("--max_time", "00:00:00", "expected a positive duration"),
            ("--checkpoint_every_n_batches", "0", "an integer >= 1"),
            ("--checkpoint_every_minutes", "-1", "a finite number > 0")):
        with pytest.raises(SystemExit) as error:
            train_main(_train_args(tmp_path, "bad", hdf5_file,
                                   [option, value]))
        assert error.value.code == 2
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1
        assert option in message and expected in message
        assert not (tmp_path / "bad").exists()


def test_deterministic_is_accepted_on_cpu_and_saved(tmp_path, hdf5_file):
    import json

    _run("-", "train", _train_args(tmp_path, "det", hdf5_file,
                                   ["--deterministic", "--max_epochs", "1"]))
    with open(tmp_path / "det" / "parameters.json") as f:
        assert json.load(f)["trainer"]["deterministic"] is True


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2"]


def _torchrun(mode, args, spec="-", **popen_args):
    # One torch thread per rank: the default on 2 cores and 2 ranks.
    return subprocess.Popen(
        [*TORCHRUN, HELPER, spec, mode, *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=_env(OMP_NUM_THREADS="1", **popen_args.pop("env", {})),
        **popen_args)


def _ddp_args(experiments, name, hdf5_file):
    # Global batches of 40 (20 per rank); default torch threads per rank.
    args = _train_args(experiments, name, hdf5_file, ["--batch_size_training",
                                                      "40"])
    cut = args.index("--nb_cpu_threads")
    return args[:cut] + args[cut + 2:]


def test_torchrun_sigterm_to_the_group_then_resume(tmp_path, hdf5_file):
    straight = _torchrun("train", _ddp_args(tmp_path, "straight", hdf5_file))
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]

    # SIGTERM to torchrun's group, as SLURM or scancel do, in epoch 1: both
    # ranks wait for it (a run that ended first failed). torchrun starts
    # each rank in its own session and passes the signal on to them.
    ready = tmp_path / "ready"
    ready.mkdir()
    interrupted = _torchrun(
        "train", _ddp_args(tmp_path, "stopped", hdf5_file),
        spec="1:train:1:WAIT", env={"DWIML_TEST_READY_DIR": str(ready)},
        start_new_session=True)
    _wait_until_ready(ready, 2, interrupted)
    os.killpg(interrupted.pid, signal.SIGTERM)
    _, err = interrupted.communicate(timeout=600)
    assert interrupted.returncode != 0
    assert "stopped by SIGTERM in epoch" in err, err[-3000:]
    epoch, phase, nb_done = _position(tmp_path / "stopped")
    assert epoch < NB_EPOCHS
    if (phase, nb_done) != ("train", 0):
        # Inside an epoch, the parts of each global batch done by 2 ranks
        # do not map onto 1 process: refused in one line.
        process = _resume("-", tmp_path, "stopped", expected=2)
        assert "saved inside epoch" in process.stderr
        assert "by 2 process(es); resume it with 2 (found 1)" in process.stderr

    # The printed command resumes with as many ranks, pasted as it is
    # ("torchrun" is torch.distributed.run).
    command = err.strip().splitlines()
    command = next(line for line in reversed(command)
                   if "resume with: " in line).split("resume with: ", 1)[1]
    assert command == shlex.join([
        "torchrun", "--standalone", "--nproc_per_node=2", "-m",
        "dwi_ml.cli.resume_training_from_checkpoint", str(tmp_path),
        "stopped"])
    resumed = subprocess.run(
        [*TORCHRUN[:3], *shlex.split(command)[1:], "-v", "WARNING"],
        capture_output=True, text=True, timeout=600,
        env=_env(OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def _torchrun_forwards(option):
    return option in subprocess.run(
        [*TORCHRUN[:3], "--help"], capture_output=True, text=True,
        timeout=600).stdout


@pytest.mark.skipif(not _torchrun_forwards("--signals-to-handle"),
                    reason="this torchrun forwards no SIGUSR1")
def test_torchrun_forwards_sigusr1_as_docs_slurm_says(tmp_path, hdf5_file):
    """SIGUSR1 to torchrun alone (SLURM's B: form): without
    --signals-to-handle it ended torchrun at once (status 138) and the
    ranks trained on, orphaned. With docs/slurm.md's options it reaches
    both ranks, which stop at the same step with a checkpoint."""
    ready = tmp_path / "ready"
    ready.mkdir()
    launcher = [*TORCHRUN, "--signals-to-handle",
                "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "--shutdown-timeout", "600"]
    process = subprocess.Popen(
        [*launcher, HELPER, "1:train:1:WAIT", "train",
         *_ddp_args(tmp_path, "usr1", hdf5_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(OMP_NUM_THREADS="1", DWIML_TEST_READY_DIR=str(ready)))
    _wait_until_ready(ready, 2, process)
    ranks = [int(name) for name in os.listdir(ready)]
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=600)
    assert process.returncode != 0  # torchrun's, after the ranks stopped
    assert ("stopped by SIGUSR1 in epoch 1 after 2 training batches; "
            "checkpoint saved") in err, err[-3000:]
    assert _position(tmp_path / "usr1") == (1, "train", 2)
    for rank in ranks:  # none left training
        with pytest.raises(ProcessLookupError):
            os.kill(rank, 0)


def _has_mkl():
    import ctypes

    library = os.path.join(os.path.dirname(torch.__file__), "lib",
                           "libtorch_cpu.so")
    try:
        return hasattr(ctypes.CDLL(library), "mkl_serv_cbwr_get")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mkl(), reason="this torch build has no MKL")
def test_import_sets_reproducible_mkl_mode():
    code = ("import ctypes, os, torch, dwi_ml; print(ctypes.CDLL(os.path.join("
            "os.path.dirname(torch.__file__), 'lib', 'libtorch_cpu.so'))"
            ".mkl_serv_cbwr_get(1))")
    env = {key: value for key, value in os.environ.items()
           if key != "MKL_CBWR"}
    # MKL_CBWR_AUTO (2): deterministic scheduling, fastest code path.
    assert subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True,
                          check=True).stdout.strip() == "2"
    # dwi_ml imported before torch (as by HDF5 creation, which never loads
    # torch): MKL_CBWR sets the same mode when MKL first runs.
    torch_after = code.replace("torch, dwi_ml", "dwi_ml, torch")
    assert subprocess.run([sys.executable, "-c", torch_after], env=env,
                          capture_output=True, text=True,
                          check=True).stdout.strip() == "2"
    # A mode the user chose wins (MKL_CBWR_COMPATIBLE is 3).
    assert subprocess.run([sys.executable, "-c", code],
                          env={**env, "MKL_CBWR": "COMPATIBLE"},
                          capture_output=True, text=True,
                          check=True).stdout.strip() == "3"


def test_resume_if_exists_names_the_training_options_it_ignores(
        tmp_path, hdf5_file, capsys):
    # A job script given a larger --max_epochs (or another learning rate)
    # and requeued: --resume_if_exists continues with the saved options,
    # and said only 'give --new_max_epochs', an option this script lacks.
    from dwi_ml.cli.dwiml_train_model import main as train_main

    args = _train_args(tmp_path, "exp", hdf5_file, ["--resume_if_exists"])
    args[args.index("--max_epochs") + 1] = "1"
    train_main(args)
    assert capsys.readouterr().err == ""
    train_main(args)   # the same command line: nothing ignored
    err = capsys.readouterr().err
    assert "Nothing to resume" in err and "ignored" not in err
    args[args.index("--max_epochs") + 1] = "3"
    train_main([*args, "--learning_rate", "0.01"])
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert "--max_epochs 3 (saved: 1)" in warnings[0]
    assert "--learning_rate 0.01 (saved: 0.005)" in warnings[0]
    assert "--new_max_epochs" in warnings[0]
    assert "Nothing to resume" in warnings[1]
    logs = np.load(tmp_path / "exp" / "logs" / "train_loss.npy")
    assert len(logs) == 1


def test_a_signal_after_the_last_epoch_leaves_a_finished_run(
        tmp_path, hdf5_file, straight_run):
    # After the last validation batch, or while the last checkpoint is
    # written: before, "checkpoint saved; resume with" and exit status 3,
    # then a resume refused as finished (exit 2), and a requeued job.
    name = "late"
    process = _run(f"{NB_EPOCHS}:save:0:SIGUSR1", "train",
                   _train_args(tmp_path, name, hdf5_file))
    assert "resume with" not in process.stderr
    assert f"reached max_epochs ({NB_EPOCHS})" in process.stdout
    assert_same_run(straight_run, tmp_path / name)


# As the scripts' files and commands start (dwi_ml.launcher), with a
# signal while the script's module imports numpy.
SIGNAL_ON_IMPORT = """
import os, signal, sys


class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGUSR1)
        return None


sys.meta_path.insert(0, SignalOnImport())
"""
STARTUP_SIGNAL = SIGNAL_ON_IMPORT + """
from dwi_ml.launcher import launch
sys.argv = ["{module}.py", *sys.argv[1:]]
launch("{module}")
"""


def _run_signalled_at_startup(module, args):
    return subprocess.run(
        [sys.executable, "-c", STARTUP_SIGNAL.format(module=module), *args],
        capture_output=True, text=True, timeout=600, env=_env())


def test_a_signal_while_the_run_starts_stops_it_at_its_first_step(
        tmp_path, hdf5_file, straight_run):
    # Before: SIGUSR1 killed the process (status 138, nothing said, no
    # requeue), SIGTERM exited 143, until the training loop began.
    name = "early"
    process = _run_signalled_at_startup(
        "dwiml_train_model", _train_args(tmp_path, name, hdf5_file))
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert "SIGUSR1 received while the run starts" in process.stderr
    assert _stop_line(process) == (
        f"stopped by SIGUSR1 in epoch 0 after 0 training batches; checkpoint saved; "
        f"resume with: resume_training_from_checkpoint.py {tmp_path} {name}")
    assert _position(tmp_path / name) == (0, "train", 0)
    # The same while a resumed run starts: the checkpoint stays the position.
    _resume("1:train:1:SIGTERM", tmp_path, name, EXIT_INTERRUPTED)
    process = _run_signalled_at_startup(
        "resume_training_from_checkpoint", [str(tmp_path), name])
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert "stopped by SIGUSR1 in epoch 1 after 2 training batches" in _stop_line(
        process)
    assert _position(tmp_path / name) == (1, "train", 2)
    _resume("-", tmp_path, name)
    assert_same_run(straight_run, tmp_path / name)


def test_the_dash_m_form_also_stops_a_run_signalled_while_it_starts(
        tmp_path, hdf5_file):
    """``python -m dwi_ml.cli.dwiml_train_model`` (torchrun's form in the
    docs) skipped the launcher: SIGUSR1 while it imported killed it (status
    138, nothing said, no checkpoint)."""
    site = tmp_path / "site"
    site.mkdir()
    # Installed by Python at start-up, before `-m` imports the script.
    (site / "sitecustomize.py").write_text(SIGNAL_ON_IMPORT)
    name = "early_m"
    process = subprocess.run(
        [sys.executable, "-m", "dwi_ml.cli.dwiml_train_model",
         *_train_args(tmp_path, name, hdf5_file)],
        capture_output=True, text=True, timeout=600,
        env=_env(PYTHONPATH=os.pathsep.join(
            [str(site), os.environ.get("PYTHONPATH", "")])))
    assert process.returncode == EXIT_INTERRUPTED, process.stderr[-3000:]
    assert "SIGUSR1 received while the run starts" in process.stderr
    assert "stopped by SIGUSR1 in epoch 0 after 0 training batches" in \
        _stop_line(process)
    assert _position(tmp_path / name) == (0, "train", 0)


@pytest.mark.parametrize("environment, expected", [
    ({}, "resume_training_from_checkpoint.py '/my exps' run"),
    ({"WORLD_SIZE": "1"}, "resume_training_from_checkpoint.py '/my exps' run"),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"},
     "torchrun --standalone --nproc_per_node=4 -m "
     "dwi_ml.cli.resume_training_from_checkpoint '/my exps' run"),
    # Over several nodes, only the job knows its rendezvous options.
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
     "torchrun <this job's options, 8 ranks> -m "
     "dwi_ml.cli.resume_training_from_checkpoint '/my exps' run")])
def test_resume_command_resumes_with_as_many_ranks(monkeypatch, environment,
                                                   expected):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert resume_command("/my exps", "run") == expected
