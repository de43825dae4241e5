"""One process per experiment, and a killed run's leftovers cleaned."""
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from file_tree import run_refused, snapshot
from training_data import (
    TINY_TRAINING,
    make_trained_experiment,
)

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import build_parser, train_from_args
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.io_utils.atomic import remove_stale_temporaries
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import has_checkpoint
from dwi_ml.io_utils.experiment_lock import (
    LOCK_FILE,
    ExperimentLock,
    holder_is_alive_here,
)
from dwi_ml.io_utils.output_folders import mark_output_folder
from dwi_ml.training.callbacks import Callback

# Holds the lock of EXPERIMENT like a running training would, until killed.
HOLDER = textwrap.dedent("""
    import sys
    from dwi_ml.io_utils.experiment_lock import ExperimentLock
    lock = ExperimentLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # until killed (or its test ends)
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_trained_experiment(tmp_path_factory.mktemp("lock_data"))


@pytest.fixture
def experiment(tmp_path, data):
    """A copy of a trained 1-epoch experiment, beside a user's file."""
    (tmp_path / "sibling.txt").write_text("keep me")
    experiments = tmp_path / "exps"
    experiments.mkdir()
    shutil.copytree(data["experiment"], experiments / "exp")
    return experiments


@pytest.fixture
def holder(experiment):
    """A real second process holding the experiment's lock."""
    # As a SLURM job: a PID alone names no process on another node.
    process = subprocess.Popen([sys.executable, "-c", HOLDER,
                                str(experiment / "exp")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True,
                               env={**os.environ, "SLURM_JOB_ID": "4242"})
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_resume_refuses_while_another_process_runs(experiment, holder,
                                                   capsys):
    # The holder may be writing it: a refused run must not clean it up.
    (experiment / "exp" / ".checkpoint.abcdefgh.tmp").mkdir()
    before = snapshot(experiment.parent)
    message = run_refused(resume_cli.main, [str(experiment), "exp",
                                            "--new_max_epochs", "2"], capsys)
    assert f"experiment '{experiment / 'exp'}' is in use by process " \
           f"{holder.pid} on host {socket.gethostname()} (SLURM job 4242) " \
           f"(lock {experiment / 'exp' / LOCK_FILE}): wait for it" in message
    assert snapshot(experiment.parent) == before


def test_train_f_refuses_while_another_process_runs(experiment, holder, data,
                                                    capsys):
    before = snapshot(experiment.parent)
    message = run_refused(train_main, [
        str(experiment), "exp", data["hdf5"], "input", "streamlines",
        *TINY_TRAINING, "-f"], capsys)
    assert f"is in use by process {holder.pid}" in message
    assert snapshot(experiment.parent) == before


def test_lock_of_a_dead_process_does_not_block(experiment, holder,
                                              monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder.kill()
    holder.wait()
    lock_path = experiment / "exp" / LOCK_FILE
    assert lock_path.read_text().split() == [
        str(holder.pid), socket.gethostname(), "4242"]
    resume_cli.main([str(experiment), "exp", "--new_max_epochs", "2",
                     "-v", "WARNING"])
    # Released at the end of the run, and left empty.
    assert lock_path.read_text() == ""
    with ExperimentLock(str(experiment / "exp")) as lock:
        lock.acquire()
        assert lock_path.read_text().split() == [str(os.getpid()),
                                                 socket.gethostname()]


def test_lock_is_held_during_the_run(experiment, data):
    """A callback of the run tries to take the lock from another process."""
    probe = ("import sys\nfrom dwi_ml.io_utils.experiment_lock import "
             "ExperimentLock\nExperimentLock(sys.argv[1]).acquire()")
    seen = []

    class TryLock(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(subprocess.run(
                [sys.executable, "-c", probe, trainer.experiment_dir],
                capture_output=True, text=True))

    resume_cli.resume_from_args(resume_cli.build_parser().parse_args(
        [str(experiment), "exp", "--new_max_epochs", "2"]),
        callbacks=[TryLock()])
    assert len(seen) == 1 and seen[0].returncode != 0
    assert f"in use by process {os.getpid()}" in seen[0].stderr


def test_same_process_cannot_take_a_held_lock(tmp_path):
    with ExperimentLock(str(tmp_path)) as first:
        first.acquire()
        with pytest.raises(DwiMLUserError, match=f"process {os.getpid()}"):
            ExperimentLock(str(tmp_path)).acquire()
    ExperimentLock(str(tmp_path)).acquire().release()


def test_resume_removes_its_own_stale_temporaries_only(experiment):
    exp = experiment / "exp"
    (exp / ".checkpoint.ab_12cd3.tmp").mkdir()
    (exp / ".checkpoint.ab_12cd3.tmp" / "model_state.pt").write_bytes(b"x")
    (exp / ".parameters.json.k2j4h5g6.tmp").write_text("{")
    shutil.copytree(exp / "best_model", exp / ".best_model.old")
    # Not ours: a user's hidden files, another script's temporary file.
    (exp / ".checkpoint.tmp").write_text("user")
    (exp / ".my_notes.abcdefgh.tmp").write_text("user")
    (exp / ".evaluation_testing_best.json.abcdefgh.tmp").write_text("eval")
    resume_cli.main([str(experiment), "exp", "--new_max_epochs", "2",
                     "-v", "WARNING"])
    left = sorted(name for name in os.listdir(exp) if name.startswith("."))
    assert left == [".checkpoint.tmp", ".dwi_ml_output.json",
                    ".evaluation_testing_best.json.abcdefgh.tmp", ".lock",
                    ".my_notes.abcdefgh.tmp"]


def test_only_previous_version_is_kept(tmp_path):
    # Killed between the two renames: .checkpoint.old is the only complete
    # checkpoint, so it must stay.
    (tmp_path / ".checkpoint.old").mkdir()
    (tmp_path / ".best_model.old").mkdir()
    (tmp_path / "best_model").mkdir()
    removed = remove_stale_temporaries(str(tmp_path),
                                       ("checkpoint", "best_model"))
    assert removed == [str(tmp_path / ".best_model.old")]
    assert sorted(os.listdir(tmp_path)) == [".checkpoint.old", "best_model"]


class _CrashAtFirstBatch(Callback):
    """Stands for a kill (-9, out of memory) before the first checkpoint:
    while the run starts (the run saves one before its first batch)."""

    def on_train_start(self, trainer):
        raise RuntimeError("killed before the first checkpoint")


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_over(
        tmp_path, data, capsys):
    """Such a folder was refused by train ('use -f or resume') and by resume
    ('not a dwi_ml experiment' / 'never finished an epoch'), and a requeued
    job's --resume_if_exists failed instead of starting the run over."""
    experiments = tmp_path / "exps"
    experiments.mkdir()
    argv = [str(experiments), "exp", data["hdf5"], "input", "streamlines",
            *TINY_TRAINING]
    with pytest.raises(RuntimeError, match="before the first checkpoint"):
        train_from_args(build_parser().parse_args(argv),
                        callbacks=[_CrashAtFirstBatch()])
    folder = str(experiments / "exp")
    assert os.path.isfile(os.path.join(folder, "parameters.json"))
    assert not has_checkpoint(folder)
    before = snapshot(tmp_path)
    message = run_refused(train_main, argv, capsys)
    assert "already exists; use -f/--overwrite to replace it (it has no " \
           "checkpoint to continue" in message
    assert "resume_training_from_checkpoint.py" not in message
    message = run_refused(resume_cli.main, [str(experiments), "exp"], capsys)
    assert f"experiment '{folder}' has no checkpoint to continue" in message
    assert "dwiml_train_model.py -f (or --resume_if_exists)" in message
    assert snapshot(tmp_path) == before

    # The same command line with --resume_if_exists starts it over.
    train_main(argv + ["--resume_if_exists"])
    assert "starting it over" in capsys.readouterr().err
    assert has_checkpoint(folder)
    assert len(np.load(os.path.join(folder, "logs", "train_loss.npy"))) == 1

    # A finished epoch whose checkpoint was removed since (to save space)
    # keeps its best model: --resume_if_exists refuses, changing nothing,
    # and both refusals say what works (they suggested -f or
    # --resume_if_exists, which refuse or delete that model).
    shutil.rmtree(os.path.join(folder, "checkpoint"))
    before = snapshot(tmp_path)
    message = run_refused(train_main, argv + ["--resume_if_exists"], capsys)
    assert message.split(": error: ", 1)[1] == (
        f"experiment '{folder}' already exists; use -f/--overwrite to "
        "replace it and lose its best_model/ (it has no checkpoint to "
        "continue, only that model: to keep it, track or evaluate with that "
        "model (dwiml_track_from_model.py, dwiml_evaluate_model.py)).")
    message = run_refused(resume_cli.main, [str(experiments), "exp"], capsys)
    assert message.split(": error: ", 1)[1] == (
        f"experiment '{folder}' has no checkpoint to continue, only a "
        "best_model/: track or evaluate with that model "
        "(dwiml_track_from_model.py, dwiml_evaluate_model.py), or start the "
        "experiment over with dwiml_train_model.py -f, which deletes that "
        "model.")
    assert snapshot(tmp_path) == before

    # Killed even earlier: only the marker and the lock were written.
    (experiments / "early").mkdir()
    mark_output_folder(str(experiments / "early"), "experiment")
    (experiments / "early" / LOCK_FILE).write_text("")
    train_main([str(experiments), "early", *argv[2:], "--resume_if_exists"])
    assert has_checkpoint(str(experiments / "early"))


def test_a_run_in_its_first_epoch_is_named_as_in_use(tmp_path, data, capsys):
    """Another process started this experiment and has no checkpoint yet:
    train said 'already exists; use -f', and resume 'no checkpoint to
    continue: its run stopped', of a run that had not stopped."""
    experiments = tmp_path / "exps"
    (experiments / "exp").mkdir(parents=True)
    mark_output_folder(str(experiments / "exp"), "experiment")
    process = subprocess.Popen([sys.executable, "-c", HOLDER,
                                str(experiments / "exp")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        in_use = f"is in use by process {process.pid}"
        argv = [str(experiments), "exp", data["hdf5"], "input",
                "streamlines", *TINY_TRAINING]
        for main, extra in ((train_main, []),
                            (train_main, ["--resume_if_exists"]),
                            (train_main, ["-f"])):
            assert in_use in run_refused(main, argv + extra, capsys)
        assert in_use in run_refused(resume_cli.main,
                                     [str(experiments), "exp"], capsys)
        assert snapshot(tmp_path) == before
    finally:
        process.kill()
        process.wait()
    # A user's folder gets no lock file from the check.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    run_refused(train_main, [str(tmp_path), "mine", *argv[2:]], capsys)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_only_rank_0_probes_the_lock(tmp_path, monkeypatch):
    """Under torchrun, rank 0 of the same run may already hold the lock
    when another rank starts: that rank's probe refused its own run (and
    could make rank 0's acquire fail), about once in a few runs."""
    folder = tmp_path / "exp"
    folder.mkdir()
    with ExperimentLock(str(folder)) as held:
        held.acquire()
        probe = ExperimentLock(str(folder))
        monkeypatch.setenv("RANK", "1")
        probe.refuse_if_held()
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(DwiMLUserError, match="is in use by process"):
            probe.refuse_if_held()
        # The holder keeps its lock through both probes.
        assert held.is_held


def test_holder_names_the_running_process(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert ExperimentLock(str(tmp_path)).holder() is None
    assert not (tmp_path / LOCK_FILE).exists()  # asking creates no file
    with ExperimentLock(str(tmp_path)) as lock:
        lock.acquire()
        assert ExperimentLock(str(tmp_path)).holder() == \
            f"process {os.getpid()} on host {socket.gethostname()}"
    assert ExperimentLock(str(tmp_path)).holder() is None
    # Asking took no lock: the experiment can be locked at once.
    with ExperimentLock(str(tmp_path)) as lock:
        assert lock.acquire().is_held


@pytest.mark.parametrize("kind", ["folder", "link", "dangling link"])
def test_a_lock_file_that_is_not_a_file_is_named(tmp_path, data, capsys,
                                                   kind):
    """A folder or a symbolic link in place of .lock gave an
    IsADirectoryError or 'Too many levels of symbolic links' traceback.
    A link is never followed: its target is neither created nor written."""
    experiments = tmp_path / "exps"
    shutil.copytree(data["experiment"], experiments / "exp")
    lock_path = experiments / "exp" / LOCK_FILE
    lock_path.unlink(missing_ok=True)
    target = tmp_path / "target"
    if kind == "folder":
        lock_path.mkdir()
    else:
        if kind == "link":
            target.write_text("theirs")
        lock_path.symlink_to(target)
    found = "a folder" if kind == "folder" else "a symbolic link"
    expected = (f"experiment '{experiments / 'exp'}': its lock file "
                f"{lock_path} is {found}; expected a regular file (or "
                "none): remove it, then run again.")
    argv = [str(experiments), "exp", data["hdf5"], "input", "streamlines",
            *TINY_TRAINING]
    try:
        for main, args in ((resume_cli.main, [str(experiments), "exp",
                                              "--new_max_epochs", "2"]),
                           (train_main, argv + ["--resume_if_exists"]),
                           (train_main, argv + ["-f"])):
            message = run_refused(main, args, capsys)
            assert message.split(": error: ", 1)[1] == expected
        assert ExperimentLock(str(experiments / "exp")).holder() is None
        if kind == "link":
            assert target.read_text() == "theirs"
        else:
            assert not target.exists()
    finally:
        # Other tests walk the temporary folders, following links.
        if kind == "folder":
            lock_path.rmdir()
        else:
            lock_path.unlink()


def test_resume_if_exists_never_starts_over_what_another_copy_saved(
        tmp_path, data, capsys, monkeypatch):
    """Two copies of a requeued job: the second found nothing saved, loaded
    its data, meanwhile the first saved (here: finished) the run; the second
    then deleted it and trained again from scratch, exit status 0."""
    from dwi_ml.training import experiment_builder

    experiments = tmp_path / "exps"
    (experiments / "exp").mkdir(parents=True)
    mark_output_folder(str(experiments / "exp"), "experiment")
    real_build = experiment_builder.build_dataset

    def build_while_the_other_copy_saves(params):
        dataset = real_build(params)
        shutil.rmtree(experiments / "exp")
        shutil.copytree(data["experiment"], experiments / "exp")
        return dataset

    monkeypatch.setattr(experiment_builder, "build_dataset",
                        build_while_the_other_copy_saves)
    argv = [str(experiments), "exp", data["hdf5"], "input", "streamlines",
            *TINY_TRAINING, "--resume_if_exists"]
    message = run_refused(train_main, argv, capsys)
    assert message.split(": error: ", 1)[1] == (
        f"experiment '{experiments / 'exp'}' was saved by another run while "
        "this one loaded its data (a second copy of the job?); nothing was "
        "changed: run the same command again to resume it.")
    # The other copy's experiment, untouched (the lock file emptied).
    saved = snapshot(data["experiment"])
    after = snapshot(experiments / "exp")
    for tree in (saved, after):
        tree.pop(LOCK_FILE, None)
    assert after == saved


def test_a_resume_continues_what_another_copy_saved_meanwhile(
        tmp_path, data, capsys, monkeypatch):
    """A resume read the checkpoint, then another copy of the job saved a
    later one before this resume took the lock: it went on with the old
    epoch and optimizer but the later weights (and rewrote the logs)."""
    experiments = tmp_path / "exps"
    experiments.mkdir()
    for name in ("exp", "other", "straight"):
        shutil.copytree(data["experiment"], experiments / name)
    # The other copy: one more epoch.
    resume_cli.main([str(experiments), "other", "--new_max_epochs", "2"])
    shutil.rmtree(experiments / "straight")
    shutil.copytree(experiments / "other", experiments / "straight")
    resume_cli.main([str(experiments), "straight", "--new_max_epochs", "3"])

    real_start = resume_cli.start_resumed_experiment

    def start_after_the_other_copy_saved(lock):
        for entry in ("checkpoint", "best_model", "logs", "parameters.json"):
            source, target = experiments / "other" / entry, \
                experiments / "exp" / entry
            if source.is_dir():
                shutil.rmtree(target)
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        return real_start(lock)

    monkeypatch.setattr(resume_cli, "start_resumed_experiment",
                        start_after_the_other_copy_saved)
    capsys.readouterr()
    resume_cli.main([str(experiments), "exp", "--new_max_epochs", "3"])
    warnings = capsys.readouterr().err
    for log in ("train_loss.npy", "valid_loss.npy"):
        np.testing.assert_array_equal(
            np.load(experiments / "exp" / "logs" / log),
            np.load(experiments / "straight" / "logs" / log))
    exp_weights, straight_weights = (
        torch.load(experiments / name / "checkpoint" / "model" /
                   "model_state.pt", weights_only=True)
        for name in ("exp", "straight"))
    assert exp_weights.keys() == straight_weights.keys()
    for key, value in exp_weights.items():
        assert torch.equal(value, straight_weights[key]), key
    assert "was saved by another run while this one started" in warnings


def test_a_checkpoint_folder_linked_to_another_disk_stays_linked(
        experiment, tmp_path):
    # The run crashed at its first save ("Cannot call rmtree on a symbolic
    # link"), with the link renamed and a real checkpoint/ in its place.
    store = tmp_path / "scratch"
    store.mkdir()
    shutil.move(experiment / "exp" / "checkpoint", store / "checkpoint")
    os.symlink(store / "checkpoint", experiment / "exp" / "checkpoint")
    resume_cli.main([str(experiment), "exp", "--new_max_epochs", "2",
                     "-v", "WARNING"])
    link = experiment / "exp" / "checkpoint"
    assert os.path.islink(link)
    assert os.readlink(link) == str(store / "checkpoint")
    position = json.loads((store / "checkpoint" / "position.json").read_text())
    assert position["current_epoch"] == 2
    assert sorted(os.listdir(store)) == ["checkpoint"]
    assert not [name for name in os.listdir(experiment / "exp")
                if name.endswith((".tmp", ".old"))]


def test_overwriting_unlinks_a_linked_checkpoint_and_names_its_target(
        experiment, data, tmp_path, capsys):
    # -f removes the link, never what it points to (it may be the user's),
    # and says so: the new run's checkpoint/ is then a folder of its own.
    store = tmp_path / "scratch"
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    shutil.move(experiment / "exp" / "checkpoint", store / "checkpoint")
    os.symlink(store / "checkpoint", experiment / "exp" / "checkpoint")
    kept = snapshot(store)
    train_main([str(experiment), "exp", data["hdf5"], "input",
                "streamlines", *TINY_TRAINING, "-f", "-v", "WARNING"])
    assert snapshot(store) == kept
    checkpoint = experiment / "exp" / "checkpoint"
    assert checkpoint.is_dir() and not checkpoint.is_symlink()
    assert json.loads((checkpoint / "position.json").read_text())[
        "current_epoch"] == 1
    assert (f"-f: '{checkpoint}' was a symbolic link to "
            f"'{store / 'checkpoint'}'; the link is removed") in \
        capsys.readouterr().err


def test_a_holder_line_is_alive_only_for_a_running_process_here():
    here = socket.gethostname()
    ended = subprocess.run([sys.executable, "-c", "import os; "
                            "print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    assert holder_is_alive_here(f"{os.getpid()} {here}\n")
    assert holder_is_alive_here(f"{os.getpid()} {here} 1234\n")
    assert not holder_is_alive_here(f"{ended.stdout.strip()} {here}\n")
    assert not holder_is_alive_here(f"{os.getpid()} not-{here}\n")
    assert not holder_is_alive_here(f"{os.getpid()}\n")  # older files
    assert not holder_is_alive_here("")
    assert not holder_is_alive_here(f"99999999999999999999 {here}")


def test_without_flock_a_live_holder_here_is_refused(tmp_path, caplog):
    """A file system without flock (the OS's answer, ENOLCK, given here:
    no test machine has one): the holder line is the only guard."""
    lock = ExperimentLock(str(tmp_path))
    no_locks = OSError(errno.ENOLCK, "No locks available")
    path = tmp_path / LOCK_FILE
    path.write_text(f"{os.getpid()} {socket.gethostname()} 77\n")
    fd = os.open(path, os.O_RDWR)
    with pytest.raises(DwiMLUserError, match=(
            rf"is in use by process {os.getpid()} on host .* \(SLURM job "
            r"77\) \(lock .*, on a file system without locks: No locks "
            r"available\).* remove the lock file")):
        lock._without_locks(fd, no_locks)
    # Emptied by a release, or naming a process of another host: a warning.
    for line, named in (("", None), ("12 elsewhere\n", "process 12 on "
                                                       "host elsewhere")):
        path.write_text(line)
        fd = os.open(path, os.O_RDWR)
        caplog.clear()
        lock = ExperimentLock(str(tmp_path))
        with caplog.at_level(logging.WARNING):
            lock._without_locks(fd, no_locks)
            lock._without_locks(fd, no_locks)  # said once per lock
        os.close(fd)
        assert len(caplog.records) == 1
        message = caplog.records[-1].getMessage()
        assert "does not support locks (No locks available)" in message
        assert (named in message) if named else ("names" not in message)


def test_an_unexpected_lock_failure_is_one_line(tmp_path):
    """flock failing otherwise than 'held' or 'not supported' (here EBADF,
    a closed descriptor) is named, not a traceback."""
    lock = ExperimentLock(str(tmp_path))
    fd = os.open(tmp_path / "closed", os.O_CREAT | os.O_RDWR)
    os.close(fd)
    with pytest.raises(DwiMLUserError, match=(
            r"cannot lock its lock file .*\.lock \(Bad file descriptor\)")):
        lock._lock_or_refuse(fd)


FORKING_HOLDER = """
import os, sys, time
from dwi_ml.io_utils.experiment_lock import ExperimentLock
lock = ExperimentLock(sys.argv[1]).acquire()
child = os.fork()  # as a DataLoader worker is made
if child == 0:
    # Past os.fork, so past its handlers: the test may go on.
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def test_a_killed_runs_forked_workers_do_not_keep_its_lock(tmp_path):
    """kill -9 of a run with DataLoader workers: the orphaned workers held
    the lock's descriptor, and a resume was refused until they noticed."""
    holder = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER,
                               str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        # The child's closed copy leaves the parent's lock held.
        with pytest.raises(DwiMLUserError, match=f"process {holder.pid}"):
            ExperimentLock(str(tmp_path)).acquire()
        holder.kill()
        holder.wait(timeout=600)
        os.kill(child, 0)  # the orphan is alive
        ExperimentLock(str(tmp_path)).acquire().release()
    finally:
        holder.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
