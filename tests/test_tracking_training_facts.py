"""Tracking defaults taken from how the model was trained."""
import logging
import os

import pytest
from error_checks import assert_user_error
from training_data import make_training_hdf5

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


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("facts")
    paths = make_synthetic_dataset(str(folder / "synthetic"), nb_subjects=2,
                                   nb_streamlines=30, seed=0)
    files = {}
    for name, step in (("stepped", 1.5), ("raw", None)):
        files[name] = str(folder / f"{name}.hdf5")
        create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                            files[name], paths.config, ["subj-01"], [],
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
    for extra, reason in (([], "step size is unknown"),
                          (["--nb_points", "10"], "--nb_points 10")):
        assert_user_error(
            train_main, [tmp_path / "exps", "tv", hdf5_file, "input",
                         "streamlines", "--tracking_validation_every", "1",
                         *extra],
            capsys, tmp_path, "--tracking_validation_every",
            "needs a step size", reason)
