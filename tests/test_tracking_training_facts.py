"""Tracking defaults taken from how the model was trained."""
import json
import logging
import os

import pytest
from error_checks import assert_user_error
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.tracking.tracking_io import load_experiment_model
from dwi_ml.tracking.training_facts import (
    choose_step_size,
    training_hdf5_step_size,
    training_step_size,
    warn_if_not_trained_backward,
)
from dwi_ml.training.training_file import (
    input_preparation_differences,
    use_training_streamline_format,
    warn_if_input_prepared_differently,
)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("facts")
    paths = make_synthetic_dataset(str(folder / "synthetic"), nb_subjects=2,
                                   nb_streamlines=30, seed=0)
    files = {}
    # The input group standardized otherwise: another input.
    with open(paths.config) as file:
        config = json.load(file)
    assert config["input"]["standardization"] != "none"
    config["input"]["standardization"] = "none"
    other_config = str(folder / "other_standardization.json")
    with open(other_config, "w") as file:
        json.dump(config, file)
    for name, step, config_file in (("stepped", 1.5, paths.config),
                                    ("raw", None, paths.config),
                                    ("unstandardized", 1.5, other_config)):
        files[name] = str(folder / f"{name}.hdf5")
        create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                            files[name], config_file, ["subj-01"], [],
                            ["subj-02"], step_size=step)
    os.makedirs(folder / "exps")
    for name, extra in (("stepped", ["--reverse_ratio", "0.5"]),
                        ("raw", ["--reverse_ratio", "0"])):
        train_main([str(folder / "exps"), name, files[name], "input",
                    "streamlines", "--max_epochs", "1",
                    "--rnn_layer_sizes", "8", "-v", "WARNING", *extra])
    return folder / "exps", files


def test_step_size_comes_from_the_training_hdf5(experiments, caplog):
    exps, files = experiments
    experiment = str(exps / "stepped")
    model = load_experiment_model(experiment, False, "cpu")
    assert model.input_spec.streamline_format.step_size is None
    assert training_hdf5_step_size(experiment) == 1.5
    with caplog.at_level(logging.INFO):
        assert choose_step_size(None, model, experiment) == 1.5
    assert "Step size 1.5 mm: the step size of the HDF5" in caplog.text
    # A given step wins, silently.
    assert choose_step_size(0.7, model, experiment) == 0.7
    # The fingerprint holds it: the training file may be gone.
    os.rename(files["stepped"], files["stepped"] + ".moved")
    try:
        assert training_hdf5_step_size(experiment) == 1.5
    finally:
        os.rename(files["stepped"] + ".moved", files["stepped"])


def test_no_step_size_anywhere_is_one_clear_error(experiments):
    exps, _ = experiments
    experiment = str(exps / "raw")
    model = load_experiment_model(experiment, False, "cpu")
    with pytest.raises(DwiMLUserError, match="--step_size: the model was "
                                             "trained without a step size"):
        choose_step_size(None, model, experiment)


def test_warns_when_the_model_never_saw_reversed_streamlines(experiments,
                                                             caplog):
    exps, _ = experiments
    with caplog.at_level(logging.WARNING):
        warn_if_not_trained_backward(str(exps / "raw"), forward_only=False)
    assert len(caplog.records) == 1
    assert "trained without reversed streamlines" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_if_not_trained_backward(str(exps / "raw"), forward_only=True)
        warn_if_not_trained_backward(str(exps / "stepped"),
                                     forward_only=False)
    assert not caplog.records


def test_no_warning_when_the_parameters_do_not_record_the_loader(tmp_path,
                                                                 caplog):
    # A model trained from Python (trainer.save_parameters) has no loader
    # section: whether it saw reversed streamlines is unknown.
    (tmp_path / "parameters.json").write_text('{"trainer": {}}')
    with caplog.at_level(logging.WARNING):
        warn_if_not_trained_backward(str(tmp_path), forward_only=False)
    assert not caplog.records


@pytest.mark.parametrize("streamline_format, option", [
    ({"step_size": None, "nb_points": 10, "compress": None}, "--nb_points 10"),
    ({"step_size": None, "nb_points": None, "compress": 0.5},
     "--compress 0.5"),
])
def test_a_model_resampled_otherwise_never_saw_the_hdf5_step(
        experiments, streamline_format, option):
    # Before: tracked at the HDF5's 1.5 mm, a step its model never saw.
    exps, _ = experiments
    dataset = read_parameters(str(exps / "stepped"))["dataset"]
    assert training_step_size({"step_size": None, "nb_points": None,
                               "compress": None}, dataset) == 1.5
    assert training_step_size({"step_size": 2.0, "nb_points": None,
                               "compress": None}, dataset) == 2.0
    with pytest.raises(DwiMLUserError, match=f"trained on streamlines of "
                                             f"{option}, without a step"):
        training_step_size(streamline_format, dataset)


def test_tracking_validation_without_a_step_is_refused_before_any_folder(
        tmp_path, capsys):
    # Before: refused at the first epoch, after the folder was made.
    hdf5_file = make_training_hdf5(str(tmp_path), nb_streamlines=10)
    os.makedirs(tmp_path / "exps")
    # The message was the tracking script's ("give --step_size"), which
    # --nb_points refuses.
    for extra, found in (([], "no --step_size, and an HDF5 whose step size "
                              "is unknown"),
                         (["--nb_points", "10"], "streamlines of --nb_points "
                                                 "10, which have none")):
        message = assert_user_error(
            train_main, [tmp_path / "exps", "tv", hdf5_file, "input",
                         "streamlines", "--tracking_validation_every", "1",
                         *extra], capsys, tmp_path)
        assert message == (
            "argument --tracking_validation_every: expected a step size in "
            f"mm to track at (the training streamlines'), found {found}; "
            "train with --step_size instead, or without tracking "
            "validation.")


def test_training_warns_at_its_start_when_tracking_will_need_a_step(
        experiments, tmp_path, capsys):
    # Tracking from such a model said "trained without a step size" only
    # after the training.
    _, files = experiments
    runs = (("raw", files["raw"], []), ("raw_stepped", files["raw"],
                                        ["--step_size", "1.0"]),
            ("stepped", files["stepped"], []),
            ("points", files["stepped"], ["--nb_points", "10"]))
    warnings = {}
    for name, hdf5_file, extra in runs:
        train_main([str(tmp_path), name, hdf5_file, "input", "streamlines",
                    "--max_epochs", "1", "--rnn_layer_sizes", "8", *extra])
        warnings[name] = [line for line in capsys.readouterr().err.splitlines()
                          if "--step_size" in line]
    assert warnings == {
        "raw": [f"WARNING: Training without --step_size on HDF5 file "
                f"{files['raw']}, which records no step size: "
                "dwiml_track_from_model.py will need --step_size to track "
                "from this model. Give --step_size here, or create the HDF5 "
                "with --step_size, for the model to know its step."],
        "raw_stepped": [], "stepped": [],
        "points": ["WARNING: Training on streamlines of --nb_points 10, "
                   "which have no step size: dwiml_track_from_model.py will "
                   "need --step_size to track from this model."]}
    # The warning says what tracking then does: refuse without --step_size.
    for name in ("raw", "points"):
        model = load_experiment_model(str(tmp_path / name), False, "cpu")
        with pytest.raises(DwiMLUserError, match="argument --step_size"):
            choose_step_size(None, model, str(tmp_path / name))
    model = load_experiment_model(str(tmp_path / "stepped"), False, "cpu")
    assert choose_step_size(None, model, str(tmp_path / "stepped")) == 1.5


def test_a_model_reads_another_file_as_it_read_its_training_file(
        experiments, caplog):
    # Before: evaluated on the streamlines as stored in the other file, at
    # a step the model never saw.
    exps, files = experiments
    experiment = str(exps / "stepped")
    model = load_experiment_model(experiment, False, "cpu")
    assert not model.input_spec.streamline_format.is_set
    # Its own training file: nothing to do.
    use_training_streamline_format(model, experiment, files["stepped"])
    assert not model.input_spec.streamline_format.is_set
    with caplog.at_level(logging.INFO):
        use_training_streamline_format(model, experiment, files["raw"])
    assert model.input_spec.streamline_format.as_dict() == {
        "step_size": 1.5, "nb_points": None, "compress": None}
    assert "resampled to step_size 1.5, as those of the HDF5" in caplog.text
    # A model of its own format keeps it.
    use_training_streamline_format(model, str(exps / "raw"),
                                   files["stepped"])
    assert model.input_spec.streamline_format.step_size == 1.5


def test_fine_tuning_on_another_file_keeps_the_pretrained_step(
        experiments, capsys):
    """--pretrained on a file stored otherwise trained the model at that
    file's step, silently; it now reads it at the step it learned, and the
    fine-tuned model records it (its tracking step follows)."""
    exps, files = experiments
    train_main([str(exps), "tuned", files["raw"], "input", "streamlines",
                "--max_epochs", "1", "--pretrained", str(exps / "stepped"),
                "-v", "INFO"])
    assert ("resampled to step_size 1.5, as those of the HDF5"
            in capsys.readouterr().err)
    model = load_experiment_model(str(exps / "tuned"), False, "cpu")
    assert model.input_spec.streamline_format.step_size == 1.5
    assert read_parameters(str(exps / "tuned"))["model"]["step_size"] == 1.5


def test_fine_tuning_without_a_step_says_to_create_the_hdf5_with_one(
        experiments, capsys):
    # It said "Give --step_size here", an option --pretrained refuses.
    exps, files = experiments
    train_main([str(exps), "tuned_raw", files["raw"], "input", "streamlines",
                "--max_epochs", "1", "--pretrained", str(exps / "raw")])
    assert [line for line in capsys.readouterr().err.splitlines()
            if "--step_size" in line] == [
        f"WARNING: Fine-tuning the model of --pretrained '{exps / 'raw'}', "
        f"which has no step size, on HDF5 file {files['raw']}, which records "
        "none: dwiml_track_from_model.py will need --step_size to track from "
        "this model. Create the HDF5 with --step_size for the model to know "
        "its step."]


def test_a_model_trained_on_raw_streamlines_is_warned_of_resampled_ones(
        experiments, caplog):
    exps, files = experiments
    experiment = str(exps / "raw")
    model = load_experiment_model(experiment, False, "cpu")
    with caplog.at_level(logging.WARNING):
        use_training_streamline_format(model, experiment, files["stepped"])
    assert not model.input_spec.streamline_format.is_set
    assert len(caplog.records) == 1
    assert ("trained on streamlines as stored, not resampled; those of "
            f"{files['stepped']} are stored with step_size 1.5") \
        in caplog.text


def test_an_input_group_made_otherwise_is_warned_of(experiments, caplog):
    exps, files = experiments
    experiment = str(exps / "stepped")
    assert input_preparation_differences(experiment, files["raw"],
                                         "input") == []
    assert input_preparation_differences(
        experiment, files["unstandardized"], "input") == [
        "standardization: 'none' here, 'independent' in training group "
        "'input'"]
    model = load_experiment_model(experiment, False, "cpu")
    with caplog.at_level(logging.WARNING):
        warn_if_input_prepared_differently(model, experiment,
                                           files["stepped"], "input")
        # Another number of features: refused later, in one line.
        warn_if_input_prepared_differently(model, experiment,
                                           files["stepped"], "wm_mask")
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        warn_if_input_prepared_differently(model, experiment,
                                           files["unstandardized"], "input")
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith(
        f"Input group 'input' of {files['unstandardized']} was made "
        "otherwise than the model's training input (standardization: "
        "'none' here, 'independent' in training group 'input')")
    # Another group of the same file, the mask: everything differs.
    assert [piece.split(":")[0] for piece in input_preparation_differences(
        experiment, files["stepped"], "wm_mask")] == [
        "files", "standardization", "std_mask"]


def test_evaluation_reads_another_file_at_the_training_step(experiments,
                                                            tmp_path):
    exps, files = experiments
    results = {}
    for name in ("stepped", "raw"):
        out = str(tmp_path / f"{name}.json")
        evaluate_main([str(exps / "stepped"), files[name], "--out", out,
                       "-v", "WARNING"])
        with open(out) as file:
            results[name] = json.load(file)["results"]["all"]
    # The raw file's streamlines, resampled by the loader, are those the
    # stepped file stored: the same function on the same float32 points
    # (at creation), so the same values.
    assert results["raw"] == results["stepped"]
