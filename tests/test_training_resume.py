"""Exact resume: 4 epochs straight == 2 epochs + resume to 4 == killed + resumed."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_preemption import assert_same_states
from training_data import make_training_hdf5

from dwi_ml.cli import dwiml_train_model as train_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.models.model_types import DEFAULT_LEARNING_RATES
from tests.tolerances import EPS64, rounding_atol

# Times differ between runs by nature; every other log must be bitwise equal.
TIME_LOGS = ("train_time.npy", "valid_time.npy")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("resume_data")))


def _train_args(experiments, name, hdf5_file, max_epochs, nb_workers):
    # Dropout, augmentation and noise exercise every random stream.
    return [experiments, name, hdf5_file, "input", "streamlines",
            "--max_epochs", str(max_epochs), "--nb_workers", str(nb_workers),
            "--batch_size_training", "30", "--batch_size_validation", "40",
            "--step_size", "1.5", "--nb_previous_dirs", "1",
            "--rnn_layer_sizes", "16", "16", "--dropout", "0.2",
            "--split_ratio", "0.3", "--reverse_ratio", "0.5",
            "--noise_gaussian_size_forward", "0.1",
            "--noise_gaussian_size_loss", "0.05", "--lr_scheduler", "step",
            "--lr_step_size", "1", "--seed", "7", "-v", "WARNING"]


def _with_scheduler(arguments, scheduler):
    """``arguments`` with another --lr_scheduler, without --lr_step_size
    unless it is 'step' (the others refuse it)."""
    arguments = list(arguments)
    arguments[arguments.index("step")] = scheduler
    if scheduler != "step":
        cut = arguments.index("--lr_step_size")
        del arguments[cut:cut + 2]
    return arguments


def _logs(experiment_dir):
    logs_dir = os.path.join(experiment_dir, "logs")
    return {name: np.load(os.path.join(logs_dir, name))
            for name in sorted(os.listdir(logs_dir)) if name not in TIME_LOGS}


def _weights(experiment_dir, folder="checkpoint/model"):
    return torch.load(os.path.join(experiment_dir, folder, "model_state.pt"),
                      weights_only=True)


def assert_same_run(dir_a, dir_b, nb_epochs=4):
    """Bitwise equal logs (but times), weights and checkpoint states."""
    logs_a, logs_b = _logs(dir_a), _logs(dir_b)
    assert sorted(logs_a) == sorted(logs_b)
    for name in logs_a:
        assert logs_a[name].tobytes() == logs_b[name].tobytes(), name
    assert len(logs_a["train_loss.npy"]) == nb_epochs
    for folder in ("checkpoint/model", "best_model"):
        weights_a, weights_b = _weights(dir_a, folder), _weights(dir_b, folder)
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (folder, key)
    assert_same_states(dir_a, dir_b)


@pytest.mark.parametrize("nb_workers, precision",
                         [(0, None), (2, None), (0, "bf16")])
def test_stop_and_resume_equals_straight_run(tmp_path, hdf5_file, nb_workers,
                                             precision):
    experiments = str(tmp_path)
    extra = ["--mixed_precision", precision] if precision else []
    train_main(_train_args(experiments, "straight", hdf5_file, 4, nb_workers)
               + extra)
    train_main(_train_args(experiments, "resumed", hdf5_file, 2, nb_workers)
               + extra)
    assert len(_logs(tmp_path / "resumed")["train_loss.npy"]) == 2
    resume_cli.main([experiments, "resumed", "--new_max_epochs", "4",
                     "-v", "WARNING"])
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    # Training changed the weights and lowered the loss.
    losses = _logs(tmp_path / "straight")["train_loss.npy"]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_a_longer_resumed_run_follows_the_longer_schedule(tmp_path, hdf5_file,
                                                         scheduler):
    # 2 epochs planned, then --new_max_epochs 4: from epoch 2 on, the
    # learning rate is that of a run planned for 4 epochs (not the 2-epoch
    # curve, spent at epoch 2, and for cosine rising again after it).
    experiments = str(tmp_path)

    def args(name, max_epochs):
        return _with_scheduler(
            _train_args(experiments, name, hdf5_file, max_epochs, 0),
            scheduler)

    train_main(args("straight", 4))
    train_main(args("extended", 2))
    resume_cli.main([experiments, "extended", "--new_max_epochs", "4",
                     "-v", "WARNING"])
    straight = _logs(tmp_path / "straight")["learning_rate.npy"]
    extended = _logs(tmp_path / "extended")["learning_rate.npy"]
    assert len(straight) == len(extended) == 4
    # Cosine's closed form against torch's recursive one, in float64: per
    # epoch (3) ~12 roundings (two cos(pi t / T) + 1, a ratio, a product,
    # a sum) on rates below lr0, amplified at most 1 / (1 + cos(3 pi / 4))
    # < 4 by the ratio; the closed form, and OneCycle's (a function of the
    # step), ~8.
    lr0 = DEFAULT_LEARNING_RATES["learn2track"]
    np.testing.assert_allclose(extended[2:], straight[2:], rtol=0,
                               atol=rounding_atol(lr0, 3 * 12 * 4 + 8, EPS64))
    # The 2-epoch curves at epoch 1: cosine's is lower by
    # lr0 (cos(pi / 4) - cos(pi / 2)) / 2 = 0.35 lr0, OneCycle's is past its
    # peak while the 4-epoch one still warms up to it (0.44 lr0 lower): a
    # tenth of lr0 is far below both and far above rounding.
    assert np.abs(extended[:2] - straight[:2]).max() > lr0 / 10
    assert np.all(np.diff(straight[1:]) < 0)


def test_sigkill_mid_epoch_then_resume_equals_straight_run(tmp_path, hdf5_file):
    experiments = str(tmp_path)
    train_main(_train_args(experiments, "straight", hdf5_file, 4, 0))
    command = [sys.executable, os.path.join(HERE, "kill_during_training.py"),
               "2", "1", *_train_args(experiments, "killed", hdf5_file, 4, 0)]
    process = subprocess.run(command, capture_output=True, text=True,
                             timeout=600)
    assert process.returncode == -signal.SIGKILL, process.stderr
    # The epoch-2 checkpoint is the last complete one: epoch 3 is redone.
    state = torch.load(tmp_path / "killed" / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert state["current_epoch"] == 2
    resume_cli.main([experiments, "killed", "-v", "WARNING"])
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


def test_resume_of_a_finished_run_says_so(tmp_path, hdf5_file, capsys):
    experiments = str(tmp_path)
    train_main(_train_args(experiments, "done", hdf5_file, 2, 0))
    # A smaller --new_max_epochs does not undo the epochs done: the message
    # said 'finished its 1 epochs: give --new_max_epochs larger than 1'.
    # With more workers than cores: the refusal alone, no worker or thread
    # warning before it (they came first).
    for extra in ([], ["--new_max_epochs", "1"], ["--new_max_epochs", "2"],
                  ["--nb_workers", "99"]):
        with pytest.raises(SystemExit) as error:
            resume_cli.main([experiments, "done", *extra])
        assert error.value.code == 2
        message = capsys.readouterr().err.strip()
        assert ("already finished its 2 epochs: give --new_max_epochs "
                "larger than 2") in message
        assert len(message.splitlines()) == 1


def test_parameters_format_version(tmp_path):
    """Files without a version (older dwi_ml) load; newer ones are refused
    in one line naming the version."""
    import json

    import pytest

    from dwi_ml.io_utils.errors import DwiMLUserError
    from dwi_ml.io_utils.experiment_layout import (
        EXPERIMENT_FORMAT_VERSION,
        read_parameters,
    )
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps({"dataset": {}}))
    assert read_parameters(str(tmp_path), ("dataset",)) == {"dataset": {}}
    path.write_text(json.dumps({"dataset": {}, "format_version":
                                EXPERIMENT_FORMAT_VERSION + 1}))
    with pytest.raises(DwiMLUserError) as error:
        read_parameters(str(tmp_path), ("dataset",))
    message = str(error.value)
    assert "\n" not in message
    assert f"format_version {EXPERIMENT_FORMAT_VERSION + 1}" in message


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_a_longer_run_resumed_inside_an_epoch_equals_one_extended_at_its_end(
        tmp_path, hdf5_file, scheduler):
    # Pre-empted inside epoch 1 of 2, then resumed with --new_max_epochs 4:
    # the rest of epoch 1 used the 4-epoch curve while learning_rate.npy
    # said the 2-epoch one (epoch 1's train_loss differed from a run
    # extended at the end of epoch 1). The new curve now starts at the
    # epoch's end, so both runs are the same, logs and weights.
    from signal_during_training import SignalAt

    experiments = str(tmp_path)

    def args(name):
        return _with_scheduler(_train_args(experiments, name, hdf5_file, 2,
                                           0), scheduler)

    train_main(args("at_end"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.train_from_args(train_cli.build_parser().parse_args(
            args("inside")), [SignalAt("1:train:1:SIGTERM")])
    assert stopped.value.code == 3
    position = torch.load(tmp_path / "inside" / "checkpoint" /
                          "checkpoint_state.pt", weights_only=True)["position"]
    assert (position["phase"], position["nb_batches_done"]) == ("train", 2)
    for name in ("at_end", "inside"):
        resume_cli.main([experiments, name, "--new_max_epochs", "4",
                         "-v", "WARNING"])
    assert_same_run(tmp_path / "at_end", tmp_path / "inside")


def test_a_smaller_new_max_epochs_than_the_epoch_in_progress_is_refused(
        tmp_path, hdf5_file, capsys):
    # Stopped inside epoch 1, resumed with --new_max_epochs 1: the run
    # trained all of epoch 1 anyway (2 epochs of logs) and said 'reached
    # max_epochs (1)'. It must be refused before any work, in one line.
    from signal_during_training import SignalAt

    experiments = str(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        train_cli.train_from_args(train_cli.build_parser().parse_args(
            _train_args(experiments, "inside", hdf5_file, 3, 0)),
            [SignalAt("1:train:1:SIGTERM")])
    assert stopped.value.code == 3
    capsys.readouterr()
    checkpoint = tmp_path / "inside" / "checkpoint" / "checkpoint_state.pt"
    saved = checkpoint.read_bytes()
    with pytest.raises(SystemExit) as refused:
        resume_cli.main([experiments, "inside", "--new_max_epochs", "1"])
    assert refused.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "error: --new_max_epochs: " in message
    assert "inside epoch 1 (1 epoch done)" in message
    assert "expected at least 2, found 1" in message
    assert checkpoint.read_bytes() == saved
    assert len(_logs(tmp_path / "inside")["train_loss.npy"]) == 1

    # The smallest allowed value finishes the epoch in progress, no more.
    resume_cli.main([experiments, "inside", "--new_max_epochs", "2",
                     "-v", "WARNING"])
    assert "reached max_epochs (2)" in capsys.readouterr().out
    assert len(_logs(tmp_path / "inside")["train_loss.npy"]) == 2


def test_patience_of_one_epoch_is_said_in_the_singular(tmp_path, hdf5_file,
                                                       capsys):
    # The stop and the refused resume said 'no improvement for 1 epochs'
    # and 'patience (1 epochs)'. A learning rate of ~0 never improves by
    # more than --patience_delta: the run stops after epoch 1.
    experiments = str(tmp_path)
    train_cli.main(_train_args(experiments, "patient", hdf5_file, 5, 0)
                   + ["--patience", "1", "--patience_delta", "1.0",
                      "--learning_rate", "1e-12"])
    assert ("patience reached: no improvement for 1 epoch;"
            in capsys.readouterr().out)
    with pytest.raises(SystemExit) as refused:
        resume_cli.main([experiments, "patient"])
    assert refused.value.code == 2
    assert "patience (1 epoch) reached at epoch 1" in capsys.readouterr().err
