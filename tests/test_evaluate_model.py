"""dwiml_evaluate_model.py: per-subject losses on any subset."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from signal_during_training import SignalAt
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_train_model import build_parser as train_build_parser
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_train_model import train_from_args
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.training.evaluation import evaluate_model
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5
from tests.tolerances import EPS64, rounding_atol


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
    # The JSON says which model it evaluated: best_model's epoch.
    assert saved["epoch"] == best["epoch"] and saved["epoch_complete"]
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
    saved = json.loads(out.read_text())
    results = saved["results"]
    assert sorted(results) == ["all", "subj-03"] and results["all"]["n_points"] > 0
    # The checkpoint after the last of the 2 epochs (0-based epoch 1).
    assert (saved["model"], saved["epoch"], saved["epoch_complete"]) == \
        ("latest", 1, True)
    assert "Evaluated the latest model (epoch 1). Saved" in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        evaluate_main([str(experiment_dir), hdf5_file, "--out", str(out)])
    assert error.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_latest_model_stopped_inside_an_epoch(experiment, tmp_path):
    """A run stopped by SIGTERM after training batch 1 of epoch 1: its
    checkpoint's model is inside epoch 1, which the JSON says."""
    _, hdf5_file = experiment
    args = train_build_parser().parse_args(
        [str(tmp_path), "stopped", hdf5_file, "input", "streamlines",
         "--max_epochs", "2", "--step_size", "1.5", "--rnn_layer_sizes", "8",
         "--batch_size_training", "30", "-v", "WARNING"])
    with pytest.raises(SystemExit) as stop:
        script_entry_point(lambda argv: train_from_args(
            args, [SignalAt("1:train:1:SIGTERM")]))([])
    assert stop.value.code != 0
    out = tmp_path / "latest.json"
    evaluate_main([str(tmp_path / "stopped"), hdf5_file, "--subset",
                   "validation", "--use_latest_epoch", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert (saved["model"], saved["epoch"], saved["epoch_complete"]) == \
        ("latest", 1, False)


def test_no_best_model_points_to_the_checkpoint(experiment, tmp_path,
                                               capsys):
    """A run stopped before it kept a best model still has its checkpoint:
    the one-line error says how to use it."""
    experiment_dir, hdf5_file = experiment
    copy = tmp_path / "exp"
    shutil.copytree(experiment_dir, copy,
                    ignore=shutil.ignore_patterns("best_model"))
    with pytest.raises(SystemExit) as error:
        evaluate_main([str(copy), hdf5_file, "--subset", "validation"])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "has no best_model/ folder" in message
    assert "--use_latest_epoch" in message
    shutil.rmtree(copy / "checkpoint")
    with pytest.raises(SystemExit):
        evaluate_main([str(copy), hdf5_file, "--subset", "validation"])
    assert "--use_latest_epoch" not in capsys.readouterr().err


def test_a_model_trained_from_python_is_evaluated_on_the_groups_given(
        experiment, tmp_path, capsys):
    """trainer.save_parameters() alone (docs/extending.md) saves no loader
    section: the script said "expected sections ['loader']" even with the
    model's module named; it now takes the groups as options."""
    experiment_dir, hdf5_file = experiment
    copy = tmp_path / "exp"
    shutil.copytree(experiment_dir, copy,
                    ignore=shutil.ignore_patterns("evaluation_*"))
    params = json.loads((copy / "parameters.json").read_text())
    (copy / "parameters.json").write_text(json.dumps(
        {key: params[key] for key in ("format_version", "model_type",
                                      "model", "trainer")}))
    for extra in ([], ["--input_group", "input"]):
        with pytest.raises(SystemExit) as error:
            evaluate_main([str(copy), hdf5_file, "--subset", "validation",
                           *extra])
        assert error.value.code == 2
        assert capsys.readouterr().err.strip().split(": error: ")[1] == (
            f"experiment '{copy}': its parameters.json has no 'loader' "
            "section naming the groups its model read (a run trained from "
            "Python); give --input_group and --streamline_group.")
    evaluate_main([str(copy), hdf5_file, "--subset", "validation",
                   "--input_group", "input", "--streamline_group",
                   "streamlines", "--out", str(tmp_path / "given.json")])
    evaluate_main([str(experiment_dir), hdf5_file, "--subset", "validation",
                   "--out", str(tmp_path / "saved.json")])
    given, saved = (json.loads((tmp_path / f"{name}.json").read_text())
                    for name in ("given", "saved"))
    assert given["results"] == saved["results"]


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


def test_all_subjects_angle_is_the_mean_over_all_angles(tmp_path):
    """With EOS a subject has N fewer angles (none at the stop point) than
    loss points: 'all' weighted each subject's mean angle by its loss points
    instead of its angles."""
    paths = make_synthetic_dataset(str(tmp_path / "synthetic"),
                                   nb_subjects=3, nb_streamlines=30, seed=1)
    hdf5_file = str(tmp_path / "data.hdf5")
    # Streamlines of other lengths per subject: other ratios N / n_points.
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config,
                        paths.splits["training"] + paths.splits["validation"],
                        [], paths.splits["testing"], step_size=1.0)
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_validation=False, load_testing=False,
                      volume_groups=["input"],
                      streamline_groups=["streamlines"])
    torch.manual_seed(0)
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             step_size=1.0, rnn_layer_sizes=[8],
                             dg_args={"add_eos": True}).eval()
    results = evaluate_model(model, dataset, "training", "input",
                             "streamlines", batch_size=7)
    nb_streamlines = [dataset.training_set.get_subject(i).sft_data_list[0]
                      .nb_streamlines for i in range(2)]
    dataset.close()
    subjects = [results[s] for s in dataset.training_set.subjects]
    # One prediction per point with EOS; an angle at all but the last one.
    nb_angles = np.array([s["n_points"] - n
                          for s, n in zip(subjects, nb_streamlines)])
    angles = np.array([s["angular_error_deg"] for s in subjects])
    assert nb_angles[0] * subjects[1]["n_points"] != \
        nb_angles[1] * subjects[0]["n_points"]     # the weights differ
    expected = float(np.sum(angles * nb_angles) / nb_angles.sum())
    # The same float32 batch means, weighted and summed in float64 either
    # per subject then over subjects, or over all batches: a few float64
    # roundings apart (the loss-point weights were 3e-6 off here).
    assert results["all"]["angular_error_deg"] == pytest.approx(
        expected, rel=rounding_atol(1, 10, EPS64))


def _empty_streamline_group(hdf5_file, copy, subject):
    """A copy of ``hdf5_file`` where ``subject``'s streamline group holds no
    streamline (as for a bundle absent from a subject)."""
    shutil.copy(hdf5_file, copy)
    with h5py.File(copy, "a") as hdf:
        group = hdf[f"{subject}/streamlines"]
        for name in ("offsets", "lengths", "euclidean_lengths"):
            del group[name]
            group.create_dataset(name, shape=(0,), dtype=np.int64)
        if "data_per_streamline" in group:
            del group["data_per_streamline"]
        # Evaluated with a subject that has some.
        hdf.attrs["testing_subjs"] = ["subj-01", subject]
    return str(copy)


def test_a_subject_without_streamlines_gets_null_values(experiment,
                                                        tmp_path, capsys):
    """Its mean loss and angle, means of nothing, were NaN: the strict JSON
    writer refused them with a traceback, and nothing was saved."""
    experiment_dir, hdf5_file = experiment
    empty = _empty_streamline_group(hdf5_file, tmp_path / "data.hdf5",
                                    "subj-03")
    out = tmp_path / "out.json"
    evaluate_main([str(experiment_dir), empty, "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results["subj-03"] == {"loss": None, "loss_direction": None,
                                  "loss_eos": None, "n_points": 0,
                                  "angular_error_deg": None}
    # 'all' is subj-01's means (one float64 weighting apart).
    assert results["all"] == pytest.approx(results["subj-01"],
                                           rel=rounding_atol(1, 2, EPS64))
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == ["subj-03"] + ["n/a"] * 4 + ["0"]


def test_a_streamline_too_short_for_the_model_is_named_before_any_batch(
        tmp_path):
    """The model refused it at its batch, naming neither file nor subject."""
    rng = np.random.default_rng(8)
    subjects = {name: make_example_subject(rng, nb_streamlines=5)
                for name in ("s1", "s2")}
    subjects["s2"]["streamlines"].streamlines[2] = (
        subjects["s2"]["streamlines"].streamlines[2][:1])
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, testing_subjs=["s1", "s2"])
    dataset = MultiSubjectDataset(path, lazy=True)
    dataset.load_data()
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             rnn_layer_sizes=[8]).eval()
    with pytest.raises(DwiMLUserError) as error:
        evaluate_model(model, dataset, "testing", "input", "streamlines")
    assert str(error.value) == (
        f"HDF5 file {path}, subject 's2', group 'streamlines': expected "
        "testing streamlines of at least 2 points in the model's format (a "
        "model without EOS predicts n - 1 directions), found 1 (streamline "
        "ids: 2).")


def test_a_model_in_training_mode_is_evaluated_without_dropout(experiment):
    """It was evaluated with its dropout on, and left so."""
    _, hdf5_file = experiment
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    torch.manual_seed(0)
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             rnn_layer_sizes=[8], step_size=1.5,
                             dg_args={"dropout": 0.5})
    model.eval()
    expected = evaluate_model(model, dataset, "validation", "input",
                              "streamlines")
    model.train()
    got = evaluate_model(model, dataset, "validation", "input",
                         "streamlines")
    assert got == expected  # the same batches, in eval mode both times
    assert model.training


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "testing"}, "evaluate_model: expected testing subjects in the "
     "dataset, found none loaded (load_data(load_testing=True)"),
    ({"split": "valid"}, "evaluate_model argument split: expected one of "
     "['training', 'validation', 'testing'], got 'valid'."),
    ({"batch_size": 0}, "evaluate_model argument batch_size: expected an "
     "integer >= 1, got 0."),
    ({"max_streamlines": 0}, "evaluate_model argument max_streamlines: "
     "expected an integer >= 1, got 0.")])
def test_evaluate_model_names_bad_arguments(experiment, kwargs, message):
    """A split not loaded, a batch of 0 or at most 0 streamlines gave
    empty results; 'valid' an enum error."""
    _, hdf5_file = experiment
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data(load_testing=False)
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             rnn_layer_sizes=[8], step_size=1.5)
    args = {"split": "validation", **kwargs}
    with pytest.raises(DwiMLUserError) as refused:
        evaluate_model(model, dataset, args.pop("split"), "input",
                       "streamlines", **args)
    assert message in str(refused.value)
