"""RunInterruptions and mid-epoch checkpoints, in process (fast cases)."""
import logging
import multiprocessing
import os
import signal
import subprocess
import time

import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.interruptions import (
    MAX_TIME_CODE,
    RunInterruptions,
    describe_stop,
    early_stop_signals_recorded,
    parse_duration,
    record_early_stop_signals,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    dataset = MultiSubjectDataset(make_training_hdf5(
        str(tmp_path_factory.mktemp("interruptions_data"))))
    dataset.load_data()
    return dataset


class SaveRecorder(Callback):
    """Record the position of every checkpoint written."""

    def __init__(self):
        self.positions = []

    def on_checkpoint_save(self, trainer, state):
        position = state["position"]
        self.positions.append((state["current_epoch"], position["phase"],
                               position["nb_batches_done"]))


@pytest.mark.parametrize("text, seconds", [
    ("00:00:01", 1), ("01:30:00", 5400), ("2:00:00:05", 2 * 86400 + 5),
    ("48:00:00", 172800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "1:30", "00:00:00", "a:b:c",
                                  "-1:00:00", "1:2:3:4:5"])
def test_parse_duration_refuses(text):
    with pytest.raises(DwiMLUserError, match="--max_time: expected a positive"
                                             " duration"):
        parse_duration(text)


def test_stop_codes_are_named():
    assert describe_stop(signal.SIGTERM) == "SIGTERM"
    assert describe_stop(signal.SIGUSR1) == "SIGUSR1"
    assert describe_stop(MAX_TIME_CODE) == "max_time"


def test_signal_is_recorded_and_handlers_restored():
    interruptions = RunInterruptions()
    previous = signal.getsignal(signal.SIGUSR1)
    interruptions.start()
    try:
        assert interruptions.poll(True) == (0, 0)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        # The first signal is the one reported.
        assert interruptions.poll(True) == (signal.SIGUSR1, 0)
    finally:
        interruptions.stop()
    assert signal.getsignal(signal.SIGUSR1) is previous


def _run_signalled_while_it_starts(signal_after_the_loop):
    with early_stop_signals_recorded():
        os.kill(os.getpid(), signal.SIGUSR1)
        interruptions = RunInterruptions()
        interruptions.start()
        assert interruptions.poll(True) == (signal.SIGUSR1, 0)
        interruptions.stop()
        if signal_after_the_loop:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_signal_after_the_runs_loop_is_not_called_an_early_one(caplog):
    # After the loop, the scripts' recorder is back: it said "received while
    # the run starts: it stops with a checkpoint before its first batch".
    early = ("SIGUSR1 received while the run starts: it stops with a "
             "checkpoint before its first batch.")
    with caplog.at_level("WARNING"):
        _run_signalled_while_it_starts(signal_after_the_loop=True)
    assert [record.getMessage() for record in caplog.records] == [
        early, "SIGUSR1 received after the run's last step: its outputs are "
               "written; nothing left to stop."]
    # The next run in this process records an early signal again.
    caplog.clear()
    with caplog.at_level("WARNING"):
        _run_signalled_while_it_starts(signal_after_the_loop=False)
    assert [record.getMessage() for record in caplog.records] == [early]


def test_a_signal_after_the_script_gave_its_handlers_back(caplog):
    """Once the script's block ends, the launcher's recorder (installed
    before it) is back: it took a signal after the run's end for one while
    the run starts."""
    before = {signum: signal.getsignal(signum)
              for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    record_early_stop_signals()
    try:
        with caplog.at_level("WARNING"):
            with early_stop_signals_recorded():
                interruptions = RunInterruptions()
                interruptions.start()
                interruptions.stop()
            os.kill(os.getpid(), signal.SIGUSR1)
        assert [record.getMessage() for record in caplog.records] == [
            "SIGUSR1 received after the run's last step: its outputs are "
            "written; nothing left to stop."]
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_no_sigchld_handler_while_training():
    """SIGTERM to the group kills the workers too; torch's SIGCHLD handler,
    run between two bytecodes of the SIGTERM handler before the stop was
    recorded, raised "DataLoader worker ... killed by signal: Terminated"
    out of the training step (a CI run, exit 1 instead of 3). While a run
    is trained, torch installs no SIGCHLD handler; its own is given back."""
    from torch.utils.data._utils import signal_handling

    def users_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGCHLD, users_handler)
    flag = signal_handling._SIGCHLD_handler_set
    interruptions = RunInterruptions()
    interruptions.start()
    try:
        assert signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL
        assert signal_handling._SIGCHLD_handler_set is True
        # A DataLoader with workers started now installs nothing.
        loader = torch.utils.data.DataLoader(list(range(4)), num_workers=1)
        assert sorted(int(x) for x in loader) == [0, 1, 2, 3]
        assert signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL
    finally:
        interruptions.stop()
        restored = signal.getsignal(signal.SIGCHLD)
        signal.signal(signal.SIGCHLD, previous)
    assert restored is users_handler
    assert signal_handling._SIGCHLD_handler_set is flag


def test_checkpoint_cadence_in_batches():
    interruptions = RunInterruptions(checkpoint_every_n_batches=3)
    interruptions.start()
    try:
        due = [interruptions.poll(True)[1] for _ in range(3)]
        assert due == [0, 0, 1]
        interruptions.checkpoint_written(0.0)
        # Validation batches do not count, and never checkpoint.
        assert interruptions.poll(False) == (0, 0)
        assert [interruptions.poll(True)[1] for _ in range(3)] == [0, 0, 1]
    finally:
        interruptions.stop()


def _run_for(interruptions, seconds):
    """As if ``seconds`` had passed since start() (its clock moved back)."""
    interruptions._start_time -= seconds


def test_max_time_leaves_room_for_an_expected_epoch_end():
    """Tracking validation at an epoch's end (5 s) overran a 2 s
    --max_time in each process: no step is polled during it. Its logged
    time is expected from the start."""
    for expected, stops in ((0.0, False), (200.0, True)):
        interruptions = RunInterruptions(max_time_s=600.0)
        interruptions.expect_epoch_end(expected)
        interruptions.start()
        try:
            assert interruptions.poll(False) == (0, 0)  # before a step
            _run_for(interruptions, 500.0)
            assert (interruptions.poll(True)[0] == MAX_TIME_CODE) == stops
        finally:
            interruptions.stop()


@pytest.mark.parametrize("expected", [300.0, 590.0, 700.0])
def test_an_epoch_end_the_limit_cannot_hold_does_not_stop_every_start(
        expected, caplog):
    """Left room for, it stopped each resumed process before its first
    step, forever (an endless requeue): now the first poll never stops for
    the time, and such an epoch end is said and not left room for."""
    interruptions = RunInterruptions(max_time_s=600.0)
    interruptions.expect_epoch_end(expected)
    interruptions.start()
    try:
        with caplog.at_level(logging.WARNING):
            assert interruptions.poll(False) == (0, 0)
            assert interruptions.poll(True) == (0, 0)
            assert interruptions.poll(True) == (0, 0)
        assert [m for m in caplog.messages if "--max_time 600 s" in m] == [
            f"--max_time 600 s: an epoch's end (tracking validation, the "
            f"best model's save) takes {expected:.0f} s, half the limit or "
            "more: each job spends much of its time leaving room for it, or "
            "overruns it; raise --max_time or track less often."]
        _run_for(interruptions, 600.0)
        assert interruptions.poll(True)[0] == MAX_TIME_CODE
    finally:
        interruptions.stop()


def test_every_n_batches_positions(tmp_path, dataset):
    recorder = SaveRecorder()
    # 120 training streamlines in batches of 40: 3 batches per epoch.
    trainer = make_trainer(dataset, tmp_path, callbacks=[recorder],
                           max_epochs=2, checkpoint_every_n_batches=2)
    trainer.train_and_validate()
    # The run's start is saved; the epoch-end checkpoint restarts the count.
    assert recorder.positions == [(0, "train", 0), (0, "train", 2), (1, "train", 0),
                                  (1, "train", 2), (2, "train", 0)]


def test_every_minutes_checkpoints_each_batch_when_short(tmp_path, dataset):
    recorder = SaveRecorder()
    # A cadence far below one step: a checkpoint after every batch.
    trainer = make_trainer(dataset, tmp_path, callbacks=[recorder],
                           max_epochs=1, checkpoint_every_minutes=1e-9)
    trainer.train_and_validate()
    # Only training batches checkpoint; after the last one the training
    # phase is complete but not closed.
    assert recorder.positions == [(0, "train", 0), (0, "train", 1),
                                  (0, "train", 2), (0, "train", 3),
                                  (1, "train", 0)]
    state = torch.load(tmp_path / "exp" / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert state["position"] == {"phase": "train", "nb_batches_done": 0,
                                 "elapsed_s": 0.0}
    assert state["current_epoch"] == 1


def test_trainer_refuses_bad_interruption_arguments(tmp_path, dataset):
    for name, value in (("max_time_s", 0), ("checkpoint_every_n_batches", 1.5),
                        ("checkpoint_every_minutes", -2.0)):
        with pytest.raises(DwiMLUserError, match=name):
            make_trainer(dataset, tmp_path, **{name: value})


def test_every_n_batches_counts_batches_under_gradient_accumulation(
        tmp_path, dataset):
    recorder = SaveRecorder()
    # 120 training streamlines in batches of 20: 6 batches, 3 updates of 2.
    # Checkpoints can only follow an update; every 2 batches is every
    # update (it was every 2 updates: 4 batches).
    trainer = make_trainer(dataset, tmp_path, callbacks=[recorder],
                           batch_size=20, max_epochs=1,
                           grad_accumulation_steps=2,
                           checkpoint_every_n_batches=2)
    trainer.train_and_validate()
    assert recorder.positions == [(0, "train", 0), (0, "train", 2),
                                  (0, "train", 4), (0, "train", 6),
                                  (1, "train", 0)]


class SigtermWithWorkers(Callback):
    """After training batch 1 of epoch 1, a SIGTERM to this process and
    to its DataLoader workers, as a SIGTERM to the process group does: the
    workers are killed by the signal (sent by another process, `kill`)."""

    def __init__(self):
        self.worker_pids = []
        # Children of earlier tests in this process may still be exiting.
        self.earlier_pids = {child.pid for child in
                             multiprocessing.active_children()}

    def on_train_batch_end(self, trainer, batch, outputs):
        if trainer.current_epoch != 1 or trainer.batch_index != 1:
            return
        os.kill(os.getpid(), signal.SIGTERM)
        self.worker_pids = [child.pid for child in
                            multiprocessing.active_children()
                            if child.pid not in self.earlier_pids]
        subprocess.run(["kill", "-TERM", *map(str, self.worker_pids)],
                       check=True)
        for pid in self.worker_pids:  # dead, not reaped (torch checks them)
            while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG
                            | os.WNOWAIT) is None:
                time.sleep(0.01)


def test_workers_killed_with_the_run_are_released(tmp_path, dataset):
    # Training and validation workers were left registered with torch's
    # SIGCHLD check, which it gives back after the stop: any later child's
    # exit raised "DataLoader worker ... is killed by signal" (at exit in
    # the CI run of session 10).
    killer = SigtermWithWorkers()
    trainer = make_trainer(dataset, tmp_path, callbacks=[killer],
                           max_epochs=3, nb_workers=2)
    trainer.train_and_validate()
    assert trainer.interrupted_by == "SIGTERM"
    assert len(killer.worker_pids) == 4
    # A child's exit: SIGCHLD has come when run() returns, and a Python
    # handler runs at the next bytecode (one that raised would fail here).
    subprocess.run(["true"], check=True)
    assert not {child.pid for child in multiprocessing.active_children()
                } & set(killer.worker_pids)
    assert trainer.position.nb_batches_done == 2


def test_workers_stopped_when_training_returns(tmp_path, dataset):
    trainer = make_trainer(dataset, tmp_path, max_epochs=1, nb_workers=2)
    trainer.train_and_validate()
    assert trainer.stopped_reason == "reached max_epochs (1)"
    assert multiprocessing.active_children() == []
