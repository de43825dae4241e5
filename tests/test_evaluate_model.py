"""dwiml_evaluate_model.py: per-subject losses on any subset."""
import json

import pytest
import torch
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from tests.tolerances import rounding_atol


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    hdf5_file = make_training_hdf5(str(folder))
    # Two epochs learn the directions (angular error < 90 degrees below)
    # of streamlines that are never reversed; half reversed (the default)
    # need more.
    train_main([str(folder), "exp", hdf5_file, "input", "streamlines",
                "--max_epochs", "2", "--step_size", "1.5", "--rnn_layer_sizes",
                "16", "--add_eos", "--batch_size_validation", "37",
                "--reverse_ratio", "0", "-v", "WARNING"])
    return folder / "exp", hdf5_file


def test_validation_subset_reproduces_the_best_validation_loss(experiment,
                                                               capsys):
    experiment_dir, hdf5_file = experiment
    evaluate_main([str(experiment_dir), hdf5_file, "--subset", "validation",
                   "--batch_size", "50"])
    saved = json.loads((experiment_dir /
                        "evaluation_validation_best.json").read_text())
    best = json.loads((experiment_dir / "best_model" /
                       "best_epoch.json").read_text())
    results = saved["results"]
    assert saved["model"] == "best" and sorted(results) == ["all", "subj-02"]
    # Other batches, same points: the points-weighted mean is the same, up
    # to float32 rounding, since other batch shapes take other kernels. The
    # forward error of an RNN output is within one rounding per term of its
    # dot products (fan-in < 64: 45 inputs, 3, 16 hidden) per step (< 100:
    # streamlines < 150 mm at 1.5 mm), relatively to losses of size ~1.
    assert results["all"]["loss"] == pytest.approx(
        best["loss"], rel=rounding_atol(1, 100 * 64))
    # Each batch's loss is the float32 sum of its two positive terms.
    assert results["subj-02"]["loss"] == pytest.approx(
        results["subj-02"]["loss_direction"] + results["subj-02"]["loss_eos"],
        rel=rounding_atol(1, 1))
    assert 0 < results["all"]["angular_error_deg"] < 90
    assert "subj-02" in capsys.readouterr().out


def test_testing_subset_latest_model_and_overwrite(experiment, capsys):
    experiment_dir, hdf5_file = experiment
    out = experiment_dir / "test.json"
    evaluate_main([str(experiment_dir), hdf5_file, "--use_latest_epoch",
                   "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["all", "subj-03"] and results["all"]["n_points"] > 0
    with pytest.raises(SystemExit) as error:
        evaluate_main([str(experiment_dir), hdf5_file, "--out", str(out)])
    assert error.value.code == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluation_on_cuda_equals_cpu(experiment, tmp_path):
    # Batches moved to the GPU and interpolated there, the model on it.
    experiment_dir, hdf5_file = experiment
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        evaluate_main([str(experiment_dir), hdf5_file, "--subset",
                       "validation", "--device", device, "--out", str(out)])
        results[device] = json.loads(out.read_text())["results"]["all"]
    assert results["cuda"]["n_points"] == results["cpu"]["n_points"]
    # Each device within the bound of the first test of the exact losses.
    for key in ("loss", "loss_direction", "loss_eos"):
        assert results["cuda"][key] == pytest.approx(
            results["cpu"][key], rel=2 * rounding_atol(1, 100 * 64))
