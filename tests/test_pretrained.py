"""dwiml_train_model.py --pretrained: fine-tuning from another experiment.

The new run starts from the pretrained weights exactly, records where they
came from, logs the starting model's validation loss, resumes exactly, and
refuses what would not be fine-tuning in one line.
"""
import json
import os

import numpy as np
import pytest
import torch
from error_checks import assert_user_error
from training_data import TINY_TRAINING, make_training_hdf5

from dwi_ml.cli import dwiml_train_model as train_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.io_utils.manifest import file_sha256
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.evaluation import evaluate_model_folder

# Wall times differ between any two runs.
TIME_LOGS = ("train_time.npy", "valid_time.npy")
BATCHES = ["--batch_size_training", "20", "--batch_size_validation", "20",
           "-v", "WARNING"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An HDF5 and a trained experiment 'base' (2 epochs) in one folder."""
    folder = tmp_path_factory.mktemp("pretrained")
    hdf5_file = make_training_hdf5(str(folder), nb_streamlines=60)
    train_cli.main([str(folder), "base", hdf5_file, "input", "streamlines",
                    *TINY_TRAINING, "--max_epochs", "2"])
    return folder, hdf5_file, str(folder / "base")


def _tune_args(experiments, name, hdf5_file, pretrained, *options):
    return [str(experiments), name, hdf5_file, "input", "streamlines",
            "--pretrained", pretrained, *BATCHES, *options]


class WeightsAtStart(Callback):
    def on_train_start(self, trainer):
        self.state = {key: value.clone()
                      for key, value in trainer.model.state_dict().items()}


def _weights(experiment, folder="best_model"):
    return torch.load(os.path.join(experiment, folder, "model_state.pt"),
                      weights_only=True)


def _parameters(experiment):
    with open(os.path.join(experiment, "parameters.json")) as f:
        return json.load(f)


def test_fine_tuning_starts_from_the_pretrained_weights(base, tmp_path):
    folder, hdf5_file, pretrained = base
    probe = WeightsAtStart()
    args = train_cli.build_parser().parse_args(_tune_args(
        tmp_path, "tuned", hdf5_file, pretrained, "--max_epochs", "2"))
    train_cli.train_from_args(args, callbacks=[probe])
    start = _weights(pretrained)
    assert probe.state.keys() == start.keys()
    for key in start:
        assert torch.equal(probe.state[key], start[key]), key
    # Training moved them.
    tuned = _weights(str(tmp_path / "tuned"))
    assert any(not torch.equal(tuned[key], start[key]) for key in start)

    params, base_params = (_parameters(str(tmp_path / "tuned")),
                           _parameters(pretrained))
    assert params["model_type"] == base_params["model_type"]
    assert params["model"] == {**base_params["model"],
                               "experiment_name": "tuned"}
    with open(os.path.join(pretrained, "best_model", "best_epoch.json")) as f:
        best_epoch = json.load(f)["epoch"]
    # The starting model's loss on this run's validation set (60
    # streamlines: all of them): the same evaluation code on the same
    # (eager or lazy, identical) data.
    evaluated = evaluate_model_folder(
        os.path.join(pretrained, "best_model"), hdf5_file, "validation",
        "input", "streamlines")["all"]["loss"]
    assert params["pretrained"] == {
        "experiment": os.path.abspath(pretrained), "use_latest_epoch": False,
        "epoch": best_epoch,
        "weights_sha256": file_sha256(os.path.join(
            pretrained, "best_model", "model_state.pt")),
        "valid_loss": evaluated}
    # Learn2track's default learning rate, as for a new run.
    assert params["trainer"]["learning_rate"] == 0.005
    logged = np.load(tmp_path / "tuned" / "logs" / "pretrained_valid_loss.npy")
    assert logged.tolist() == [evaluated, evaluated]


def test_the_checkpoint_model_with_use_latest_epoch(base, tmp_path):
    _, hdf5_file, pretrained = base
    probe = WeightsAtStart()
    args = train_cli.build_parser().parse_args(_tune_args(
        tmp_path, "tuned", hdf5_file, pretrained,
        "--pretrained_use_latest_epoch", "--max_epochs", "1"))
    train_cli.train_from_args(args, callbacks=[probe])
    latest = _weights(pretrained, "checkpoint/model")
    assert all(torch.equal(probe.state[key], latest[key]) for key in latest)
    info = _parameters(str(tmp_path / "tuned"))["pretrained"]
    assert info["use_latest_epoch"] is True and info["epoch"] == 1


def _logs(experiment):
    logs = os.path.join(experiment, "logs")
    return {name: np.load(os.path.join(logs, name))
            for name in sorted(os.listdir(logs)) if name not in TIME_LOGS}


def test_a_resumed_fine_tuning_equals_a_straight_one(base, tmp_path):
    _, hdf5_file, pretrained = base
    # Augmentation and dropout draw from every random stream.
    options = ["--noise_gaussian_size_forward", "0.1", "--split_ratio", "0.3",
               "--seed", "3"]
    train_cli.main(_tune_args(tmp_path, "straight", hdf5_file, pretrained,
                              "--max_epochs", "3", *options))
    train_cli.main(_tune_args(tmp_path, "resumed", hdf5_file, pretrained,
                              "--max_epochs", "1", *options))
    resume_cli.main([str(tmp_path), "resumed", "--new_max_epochs", "3",
                     "-v", "WARNING"])
    straight, resumed = (_logs(str(tmp_path / "straight")),
                         _logs(str(tmp_path / "resumed")))
    assert sorted(straight) == sorted(resumed)
    assert "pretrained_valid_loss.npy" in straight
    for name in straight:
        assert straight[name].tobytes() == resumed[name].tobytes(), name
    assert len(straight["train_loss.npy"]) == 3
    for folder in ("best_model", "checkpoint/model"):
        a = _weights(str(tmp_path / "straight"), folder)
        b = _weights(str(tmp_path / "resumed"), folder)
        assert all(torch.equal(a[key], b[key]) for key in a), folder


def test_what_is_not_fine_tuning_is_refused(base, capsys):
    folder, hdf5_file, pretrained = base
    main = train_cli.main
    assert_user_error(main, _tune_args(folder, "t", hdf5_file, pretrained,
                                       "--rnn_layer_sizes", "16"),
                      capsys, folder, "argument --rnn_layer_sizes",
                      "the model comes from --pretrained")
    # Transformer options too: not checked against the default model type.
    for option, value in (("--n_layers_d", "3"), ("--d_model", "16"),
                          ("--attention_window", "4"),
                          ("--position_encoding", "alibi"),
                          ("--max_len", "50")):
        message = assert_user_error(
            main, _tune_args(folder, "t", hdf5_file, pretrained, option,
                             value), capsys, folder)
        assert message == (
            f"argument {option}: the model comes from --pretrained "
            f"'{pretrained}' (its type, options and weights); expected no "
            f"model option, found {option}.")
    assert_user_error(main, _tune_args(folder, "t", hdf5_file,
                                       str(folder / "nowhere")),
                      capsys, folder, "argument --pretrained",
                      "found no folder")
    assert_user_error(main, _tune_args(folder, "t", hdf5_file,
                                       str(folder / "synthetic")),
                      capsys, folder, "argument --pretrained: experiment",
                      "is not a dwi_ml experiment folder: expected "
                      "parameters.json with best_model/ or checkpoint/, found "
                      "no parameters.json")
    assert_user_error(main, [str(folder), "t", hdf5_file, "input",
                             "streamlines", "--pretrained_use_latest_epoch"],
                      capsys, folder, "argument --pretrained_use_latest_epoch",
                      "found no --pretrained")
    # An input group with other features than the pretrained model reads.
    assert_user_error(main, [str(folder), "t", hdf5_file, "wm_mask",
                             "streamlines", "--pretrained", pretrained],
                      capsys, folder, "input group 'wm_mask'",
                      "found 1 features")


def test_a_transformer_keeps_its_type_learning_rate_and_max_len(
        base, tmp_path, capsys):
    _, hdf5_file, _ = base
    # 35: the prediction points of this file's longest streamline at 1.5 mm.
    train_cli.main([str(tmp_path), "tf", hdf5_file, "input", "streamlines",
                    "--model_type", "transformer_src_only", "--d_model", "8",
                    "--nheads", "2", "--n_layers_e", "1", "--step_size", "1.5",
                    "--max_len", "35", "--max_epochs", "1", *BATCHES])
    train_cli.main(_tune_args(tmp_path, "tuned", hdf5_file,
                              str(tmp_path / "tf"), "--max_epochs", "1"))
    params = _parameters(str(tmp_path / "tuned"))
    assert params["model_type"] == "TransformerSrcOnlyModel"
    assert params["model"]["d_model"] == 8
    assert params["trainer"]["learning_rate"] == 0.001
    # Other data, whose longest streamline has 36 prediction points: the
    # model's max_len cannot be given, and the refusal says so.
    (tmp_path / "other").mkdir()
    other = make_training_hdf5(str(tmp_path / "other"), nb_streamlines=400,
                               seed=2)
    message = assert_user_error(
        train_cli.main, _tune_args(tmp_path, "t2", other, str(tmp_path / "tf")),
        capsys, tmp_path / "tf", "max_len of the --pretrained model",
        "expected at least 36", "found 35")
    assert not (tmp_path / "t2").exists(), message
