"""DWIMLAbstractTrainer: folders, logs, best model, patience, NaN stop, checks."""
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import mark_output_folder
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.monitoring.log_reading import read_experiment_logs
from dwi_ml.training.callbacks import Callback, TrainingAbortedError
from dwi_ml.training.experiment_builder import (
    build_dataset,
    build_loader,
    build_sampler,
    build_trainer,
)
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5
from tests.tolerances import EPS32, EPS64, rounding_atol


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("trainer_data")))


@pytest.fixture(scope="module")
def dataset(hdf5_file):
    return build_dataset({"hdf5_file": hdf5_file, "lazy": False})


def test_experiment_folder_logs_and_best_model(tmp_path, dataset):
    trainer = make_trainer(dataset, tmp_path, clip_grad=0.1)
    trainer.save_parameters({"note": "test"})
    trainer.train_and_validate()
    folder = tmp_path / "exp"
    logs = {name[:-4]: np.load(folder / "logs" / name)
            for name in os.listdir(folder / "logs")}
    for name in ("train_loss", "valid_loss", "grad_norm_before_clip",
                 "grad_norm_after_clip", "learning_rate", "train_time",
                 "valid_time"):
        assert logs[name].shape == (3,), name
    nb_batches = math.ceil(dataset.training_set.get_lengths(0, 0).size / 40)
    assert logs["train_loss_per_batch"].shape == (3 * nb_batches,)
    # The epoch loss is the points-weighted mean of the batch losses: it lies
    # between their min and max.
    # float64 means: a rounding per batch.
    per_epoch = logs["train_loss_per_batch"].reshape(3, nb_batches)
    slack = rounding_atol(per_epoch.max(), nb_batches + 1, eps=EPS64)
    assert np.all(per_epoch.min(1) <= logs["train_loss"] + slack)
    assert np.all(logs["train_loss"] <= per_epoch.max(1) + slack)
    # Clipped to 0.1 exactly, but for the float32 norm of the clipped
    # gradients: one rounding per weight, relatively.
    nb_weights = sum(p.numel() for p in trainer.model.parameters())
    assert np.all(logs["grad_norm_after_clip"]
                  <= 0.1 + rounding_atol(0.1, nb_weights))
    assert np.all(logs["grad_norm_before_clip"] > logs["grad_norm_after_clip"])
    np.testing.assert_allclose(logs["learning_rate"], 0.005,
                               rtol=EPS32)   # stored once, maybe as float32
    assert logs["valid_loss"][-1] < logs["valid_loss"][0]

    best = json.loads((folder / "best_model" / "best_epoch.json").read_text())
    assert best["epoch"] == int(np.argmin(logs["valid_loss"]))
    assert best["loss"] == logs["valid_loss"].min()   # the same float64
    params = json.loads((folder / "parameters.json").read_text())
    assert params["note"] == "test" and params["trainer"]["max_epochs"] == 3
    assert params["model"]["rnn_layer_sizes"] == [16]
    # Safe loading: weights_only, and state of the last epoch in checkpoint/.
    state = torch.load(folder / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert state["current_epoch"] == 3
    model = load_model_from_params_and_state(str(folder / "best_model"), "cpu")
    assert isinstance(model, Learn2TrackModel)


def test_patience_stops_and_no_validation_uses_training_loss(
        tmp_path, dataset, caplog):
    # A learning rate of ~0 never improves by more than patience_delta.
    trainer = make_trainer(dataset, tmp_path, learning_rate=1e-12,
                            max_epochs=10, patience=2, patience_delta=1.0)
    with caplog.at_level(logging.WARNING, logger="dwi_ml.training"):
        trainer.train_and_validate()
    assert "validation" not in caplog.text
    assert trainer.current_epoch == 3
    assert "patience" in trainer.stopped_reason
    assert len(np.load(tmp_path / "exp" / "logs" / "valid_loss.npy")) == 3

    hdf5_no_valid = make_training_hdf5(str(tmp_path),
                                       with_validation=False)
    dataset_no_valid = build_dataset({"hdf5_file": hdf5_no_valid,
                                      "lazy": True})
    trainer = make_trainer(dataset_no_valid, tmp_path, name="no_valid",
                            max_epochs=2)
    assert not trainer.use_validation
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dwi_ml.training"):
        trainer.train_and_validate()
    # docs/training.md promised a warning; nothing was said.
    assert [record.getMessage() for record in caplog.records] == [
        f"HDF5 file {hdf5_no_valid}: no validation subject; training runs "
        "without validation (valid_loss is NaN): the best model and "
        "patience follow train_loss."]
    train_loss = np.load(tmp_path / "no_valid" / "logs" / "train_loss.npy")
    best = json.loads((tmp_path / "no_valid" / "best_model" /
                       "best_epoch.json").read_text())
    assert best["loss"] == train_loss.min()   # the same float64
    assert np.all(np.isnan(np.load(tmp_path / "no_valid" / "logs" /
                                   "valid_loss.npy")))
    assert trainer.best_metric_name == "train_loss"


def test_script_names_the_training_loss_without_validation(tmp_path, capsys):
    """It said 'best epoch 1, valid_loss 0.91452' of a run whose
    valid_loss log is all NaN."""
    hdf5_no_valid = make_training_hdf5(str(tmp_path), nb_streamlines=40,
                                       with_validation=False)
    train_main([str(tmp_path), "exp", hdf5_no_valid, "input", "streamlines",
                "--max_epochs", "2", "--rnn_layer_sizes", "8",
                "--step_size", "1.0"])
    train_loss = np.load(tmp_path / "exp" / "logs" / "train_loss.npy")
    best = int(np.argmin(train_loss))
    output = capsys.readouterr()
    assert output.out.strip().endswith(
        f"best epoch {best}, train_loss {train_loss[best]:.5f}).")
    # One warning, at the start, as docs/training.md says.
    assert output.err.splitlines() == [
        f"WARNING: HDF5 file {hdf5_no_valid}: no validation subject; "
        "training runs without validation (valid_loss is NaN): the best "
        "model and patience follow train_loss."]
    # best_epoch.json named valid_loss for this train_loss value.
    with open(tmp_path / "exp" / "best_model" / "best_epoch.json") as f:
        assert json.load(f) == {"epoch": best, "loss": train_loss[best],
                                "metric": "train_loss"}


def test_validation_subjects_without_streamlines_count_as_no_validation(
        tmp_path, capsys):
    """It said 'best epoch 0, valid_loss nan': validation subjects whose
    group holds no streamline gave an epoch of no validation batch, a NaN
    valid_loss, and the best model was the first epoch's for ever."""
    rng = np.random.default_rng(4)
    subjects = {name: make_example_subject(rng, nb_streamlines=n)
                for name, n in (("t1", 12), ("v1", 3), ("v2", 3))}
    for name in ("v1", "v2"):
        subjects[name]["streamlines"].streamlines = []
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, training_subjs=["t1"],
                         validation_subjs=["v1", "v2"])
    train_main([str(tmp_path), "exp", path, "input", "streamlines",
                "--max_epochs", "2", "--rnn_layer_sizes", "8",
                "--step_size", "1.0"])
    train_loss = np.load(tmp_path / "exp" / "logs" / "train_loss.npy")
    best = int(np.argmin(train_loss))
    output = capsys.readouterr()
    assert output.out.strip().endswith(
        f"best epoch {best}, train_loss {train_loss[best]:.5f}).")
    # One warning, with what the best model follows instead.
    assert output.err.splitlines() == [
        f"WARNING: HDF5 file {path}, streamline group 'streamlines': the "
        "validation subjects (v1, v2) hold no streamline; training runs "
        "without validation (valid_loss is NaN): the best model and "
        "patience follow train_loss."]


class _PoisonWeights(Callback):
    """Makes the loss NaN from a given epoch, as a diverging run would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, dataset):
    trainer = make_trainer(dataset, tmp_path, callbacks=[_PoisonWeights(1)])
    with pytest.raises(TrainingAbortedError, match="non-finite loss"):
        trainer.train_and_validate()
    folder = tmp_path / "exp"
    state = torch.load(folder / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert state["current_epoch"] == 1
    for sub in ("checkpoint/model", "best_model"):
        weights = torch.load(folder / sub / "model_state.pt", weights_only=True)
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_overflowing_weights_stop_before_any_save(tmp_path, dataset):
    # Adam moves each weight by about the learning rate: 1e39 overflows
    # float32 at the first update while its loss and gradient are finite.
    # Saved every batch, the checkpoint held Inf weights that a resume
    # could not use; now the update is refused before anything is saved.
    trainer = make_trainer(dataset, tmp_path, learning_rate=1e39,
                           clip_grad=None, checkpoint_every_n_batches=1)
    with pytest.raises(TrainingAbortedError) as error:
        trainer.train_and_validate()
    assert str(error.value).startswith(
        "non-finite weights after the update at epoch 0, batch 0; the "
        "last checkpoint and best model are kept. To go on with a lower "
        "--learning_rate or with --clip_grad, start a new experiment from it")
    folder = tmp_path / "exp"
    # Only the run's first checkpoint, of its start: finite weights.
    state = torch.load(folder / "checkpoint" / "checkpoint_state.pt",
                       weights_only=True)
    assert (state["current_epoch"], state["position"]["nb_batches_done"]) \
        == (0, 0)
    weights = torch.load(folder / "checkpoint" / "model" / "model_state.pt",
                         weights_only=True)
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert not (folder / "best_model").exists()


@pytest.mark.parametrize("optimizer,scheduler", [
    ("AdamW", "cosine"), ("RAdam", "plateau"), ("SGD", "step")])
def test_optimizers_and_schedulers(tmp_path, dataset, optimizer, scheduler):
    trainer = make_trainer(dataset, tmp_path, optimizer=optimizer,
                            lr_scheduler=scheduler, lr_step_size=1,
                            lr_gamma=0.5, max_epochs=2,
                            max_batches_per_epoch_training=2,
                            max_batches_per_epoch_validation=1)
    trainer.train_and_validate()
    lrs = np.load(tmp_path / "exp" / "logs" / "learning_rate.npy")
    assert type(trainer.optimizer).__name__ == optimizer
    if scheduler == "step":
        assert lrs.tolist() == [0.005, 0.0025]   # halving is exact
    if scheduler == "cosine":
        assert lrs[1] == pytest.approx(   # float64, a few roundings
            0.005 * (1 + math.cos(math.pi / 2)) / 2,
            abs=rounding_atol(0.005, 16, eps=EPS64))
    per_batch = np.load(tmp_path / "exp" / "logs" / "train_loss_per_batch.npy")
    assert per_batch.shape == (4,)


@pytest.mark.parametrize("key,value,message", [
    ("learning_rate", -1.0, "learning_rate"),
    ("max_epochs", 0, "max_epochs"),
    ("optimizer", "Adamax", "optimizer"),
    ("lr_scheduler", "warm", "lr_scheduler"),
    ("device", "cuda", "CUDA is not available"),
    ("mixed_precision", "fp8", "mixed_precision")])
def test_bad_trainer_arguments(tmp_path, dataset, key, value, message):
    if key == "device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here.")
    with pytest.raises(DwiMLUserError, match=message):
        make_trainer(dataset, tmp_path, **{key: value})


def test_a_loader_of_another_input_spec_is_refused(tmp_path, dataset):
    """A loader built without the model's spec resampled nothing while the
    model recorded a 1.5 mm step: trained on other data than its
    parameters say, silently."""
    trainer = make_trainer(dataset, tmp_path)
    with pytest.raises(DwiMLUserError, match=(
            r"^batch_loader: expected the model's input_spec, found another "
            r"\(step_size 1.5 in the model, None in the loader\); build the "
            r"loader with input_spec=model.input_spec.$")):
        DWIMLTrainerOneInput(
            trainer.model, str(tmp_path), "exp2", trainer.batch_sampler,
            BatchLoaderOneInput(dataset, "streamlines", "input"))
    with pytest.raises(DwiMLUserError, match="argument 'model': expected a "
                                             "torch.nn.Module"):
        DWIMLTrainerOneInput("m", str(tmp_path), "exp2",
                             trainer.batch_sampler, trainer.batch_loader)


@pytest.mark.parametrize("model_type", ["learn2track",
                                        "transformer_src_only"])
def test_a_python_trainer_takes_the_scripts_optimisation_defaults(
        tmp_path, dataset, model_type):
    """No learning rate or clipping given: those the training script
    saves for the same model type (they differed until session 30)."""
    from dwi_ml.cli.dwiml_train_model import build_parser
    from dwi_ml.models.model_types import DEFAULT_LEARNING_RATES, MODEL_TYPES
    model_class = MODEL_TYPES[model_type]
    torch.manual_seed(0)
    model = model_class("exp", nb_features=dataset.nb_features[0],
                        step_size=1.5)
    trainer = make_trainer(dataset, tmp_path, model=model)
    trainer = DWIMLTrainerOneInput(model, str(tmp_path), "defaults",
                                   trainer.batch_sampler,
                                   trainer.batch_loader)
    script = build_parser().parse_args(
        [str(tmp_path), "x", "data.hdf5", "input", "streamlines"])
    assert script.learning_rate is None  # resolved by the model type
    assert trainer.learning_rate == DEFAULT_LEARNING_RATES[model_type] \
        == model_class.default_learning_rate
    assert trainer.clip_grad == script.clip_grad == 1.0
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.learning_rate


@pytest.mark.parametrize("params, device, message", [
    ({"streamline_group": "streamlines", "input_group": "dwi"}, "cpu",
     "BatchLoaderOneInput argument input_group: expected one of ['input', "
     "'wm_mask'], got 'dwi'."),
    ({"streamline_group": "streamlines"}, "cpu",
     "loader_params: expected the keys 'streamline_group' and 'input_group', "
     "missing: input_group."),
    # It interpolated on the CPU, quietly.
    ({"streamline_group": "streamlines", "input_group": "input"}, "gpu",
     "argument device: expected a torch device such as 'cpu' or 'cuda[:N]', "
     "got 'gpu'.")])
def test_build_loader_names_what_is_wrong(dataset, params, device, message):
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             rnn_layer_sizes=[8])
    with pytest.raises(DwiMLUserError) as refused:
        build_loader(dataset, params, model, device)
    assert message in str(refused.value)


def test_builders_name_what_they_expect(hdf5_file, dataset):
    with pytest.raises(DwiMLUserError, match=(
            r"argument dataset_params: expected a dict of the constructor's "
            r"arguments, got str '.*data.hdf5'.$")):
        build_dataset(hdf5_file)
    sampler = build_sampler(dataset, {
        "streamline_group": "streamlines", "batch_size_training": 40,
        "batch_size_validation": 40, "batch_size_units": "nb_streamlines"})
    with pytest.raises(DwiMLUserError, match=(
            r"BatchSampler argument split: expected one of \['training', "
            r"'validation'\], got 'train'")):
        sampler.nb_streamlines("train")


def test_callbacks_that_are_not_callbacks_are_named(tmp_path, dataset):
    """A function given as callbacks was a TypeError deep in the trainer;
    one Callback alone is a list of one."""
    def on_epoch_end(trainer, epoch, logs):
        pass

    with pytest.raises(DwiMLUserError, match=(
            r"argument 'callbacks': expected a list of Callback instances "
            r"\(dwi_ml.training.callbacks\), got <function")):
        make_trainer(dataset, tmp_path, callbacks=on_epoch_end)
    alone = Callback()
    trainer = make_trainer(dataset, tmp_path, callbacks=alone)
    assert trainer.callbacks.callbacks[-1] is alone


def test_loading_a_model_on_an_unknown_device_names_the_device(tmp_path,
                                                               dataset):
    """It was called a truncated or corrupt weights file."""
    trainer = make_trainer(dataset, tmp_path, max_epochs=1)
    trainer.train_and_validate()
    for device in ("gpu", *(() if torch.cuda.is_available() else ("cuda",))):
        with pytest.raises(DwiMLUserError, match=r"^argument device: .*"
                                                 rf"'{device}'"):
            load_model_from_params_and_state(
                str(tmp_path / "exp" / "best_model"), device)


@pytest.mark.parametrize("name", ["", ".", "a/b"])
def test_an_experiment_name_that_is_no_folder_name_is_refused(
        tmp_path, dataset, name):
    """An empty name wrote best_model/, checkpoint/ and logs/ straight into
    the experiments folder, among the other experiments."""
    parts = make_trainer(dataset, tmp_path)
    with pytest.raises(DwiMLUserError, match="experiment_name"):
        DWIMLTrainerOneInput(parts.model, str(tmp_path), name,
                             parts.batch_sampler, parts.batch_loader)
    assert os.listdir(tmp_path) == []


def test_a_new_trainer_never_writes_over_a_previous_run(tmp_path, dataset):
    """The scripts ask for -f; a trainer built in Python replaced the run
    (its logs, best model and checkpoint) without a word."""
    make_trainer(dataset, tmp_path, max_epochs=2).train_and_validate()
    logs = tmp_path / "exp" / "logs" / "valid_loss.npy"
    before = logs.read_bytes()
    with pytest.raises(DwiMLUserError, match=(
            r"holds a previous run \(checkpoint/, best_model/, logs/\); "
            r"expected a new experiment folder")):
        make_trainer(dataset, tmp_path, max_epochs=1).train_and_validate()
    assert logs.read_bytes() == before
    # Continuing it is what a loaded checkpoint does.
    trainer = make_trainer(dataset, tmp_path, max_epochs=3)
    trainer.load_checkpoint()
    trainer.train_and_validate()
    assert np.load(logs).shape == (3,)


@pytest.mark.parametrize("extra,message", [
    (["--split_ratio", "1.5"], "'--split_ratio': expected a number in [0, 1]"),
    (["--neighborhood_type", "axes"], "'axes' needs neighborhood_radius "
     "(scripts: --neighborhood_radius)"),
    # It named the library's fields only.
    (["--neighborhood_resolution", "2"], "(scripts: --neighborhood_radius, "
     "--neighborhood_resolution): expected none without a neighborhood_type "
     "(--neighborhood_type), found radius None, resolution 2.0."),
])
def test_train_script_checks_arguments_before_work(tmp_path, hdf5_file, capsys,
                                                   extra, message):
    with pytest.raises(SystemExit) as error:
        train_main([str(tmp_path), "exp", hdf5_file, "input", "streamlines",
                    *extra])
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("extra, expected", [
    # Streamline 4's 3 equal points are read as one (its segments have no
    # direction).
    ([], "at least 2 points in the model's format (a model without EOS "
         "predicts n - 1 directions), found 2 (streamline ids: 3, 4)."),
    # A streamline of 0 mm keeps 1 point at any step size.
    (["--step_size", "0.5"], "at least 2 points in the model's format (a "
     "model without EOS predicts n - 1 directions), found 2 (streamline "
     "ids: 3, 4)."),
    # A 0-point streamline is refused when the file is loaded, whatever
    # the model.
    (["--add_eos"], "expected 'lengths' >= 1 (a streamline has points), "
     "found 1 of 6 streamlines of 0 points (the first: 5).")])
def test_train_script_refuses_streamlines_too_short_for_the_model(
        tmp_path, capsys, extra, expected):
    """A model without EOS predicts n - 1 directions: a stored 1-point
    streamline, or one of 0 mm resampled to 1 point, stopped the run at its
    first batch, after the experiment folder was made, with an error that
    named neither the file nor the subject. With EOS, a 0-point one."""
    rng = np.random.default_rng(6)
    subjects = {name: make_example_subject(rng, nb_streamlines=6)
                for name in ("t1", "t2")}
    streamlines = subjects["t2"]["streamlines"].streamlines
    streamlines[3] = streamlines[3][:1]
    streamlines[4] = np.repeat(streamlines[4][:1], 3, axis=0)
    if "--add_eos" in extra:
        streamlines[5] = streamlines[5][:0]
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, training_subjs=["t1", "t2"])
    with pytest.raises(SystemExit) as error:
        train_main([str(tmp_path), "exp", path, "input", "streamlines",
                    "--rnn_layer_sizes", "8", *extra])
    assert error.value.code == 2
    where = (f"HDF5 file {path}: streamline group 't2/streamlines': "
             if "--add_eos" in extra else
             f"HDF5 file {path}, subject 't2', group 'streamlines': expected "
             "training streamlines of ")
    assert capsys.readouterr().err.strip().endswith(
        f"error: {where}{expected}")
    assert not (tmp_path / "exp").exists()


def test_train_script_unknown_group_and_existing_experiment(tmp_path, hdf5_file,
                                                           capsys):
    with pytest.raises(SystemExit):
        train_main([str(tmp_path), "exp", hdf5_file, "dwi", "streamlines"])
    err = capsys.readouterr().err
    assert "input_group: 'dwi' is not a volume group" in err and "input" in err
    (tmp_path / "exp").mkdir()
    mark_output_folder(str(tmp_path / "exp"), "experiment")
    # A run that wrote its parameters, then stopped before a checkpoint
    # (with its marker only, the folder is reused: test_output_safety.py).
    (tmp_path / "exp" / "parameters.json").write_text("{}")
    with pytest.raises(SystemExit):
        train_main([str(tmp_path), "exp", hdf5_file, "input", "streamlines"])
    assert "it has no checkpoint to continue" in capsys.readouterr().err
    (tmp_path / "exp" / "checkpoint").mkdir()
    with pytest.raises(SystemExit):
        train_main([str(tmp_path), "exp", hdf5_file, "input", "streamlines"])
    assert "resume_training_from_checkpoint.py" in capsys.readouterr().err


class MetricPerEpoch(Callback):
    """Writes given values of a best-model metric, one per epoch."""

    def __init__(self, name, values):
        self.name_of_metric, self.values = name, values

    def on_validation_end(self, trainer, epoch):
        trainer.monitors.get_or_create(self.name_of_metric).set_epoch_value(
            self.values[epoch])

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if epoch == 0:  # the best so far has no value: JSON null, readable
            folder = os.path.join(trainer.experiment_dir, "best_model")
            with open(os.path.join(folder, "best_epoch.json")) as f:
                assert json.load(f)["loss"] is None
            logs = read_experiment_logs(trainer.experiment_dir)
            assert (logs.best_epoch, logs.best_loss) == (0, None)


def test_a_first_epoch_without_a_metric_value_is_not_the_best_for_ever(
        tmp_path, dataset):
    # A metric that could not be measured at epoch 0 (NaN) became the best,
    # whose best_epoch.json could not be written (a ValueError ended the
    # run); and nothing compares better than NaN.
    values = [math.nan, 0.5, 0.75, 0.25]
    trainer = make_trainer(
        dataset, tmp_path, max_epochs=4, patience=2,
        best_model_metric="tracking_f1",
        callbacks=[MetricPerEpoch("tracking_f1", values)])
    trainer.train_and_validate()
    best = json.loads((tmp_path / "exp" / "best_model" /
                       "best_epoch.json").read_text())
    assert best == {"epoch": 2, "loss": 0.75, "metric": "tracking_f1"}
    np.testing.assert_array_equal(
        np.load(tmp_path / "exp" / "logs" / "tracking_f1.npy"), values)
    assert trainer.current_epoch == 4


def test_plateau_lowers_the_rate_after_5_epochs_without_improvement(
        tmp_path, dataset):
    # docs/training.md: 'plateau' multiplies the rate by --lr_gamma when
    # the loss has not improved for 5 epochs. torch's patience 5 waited for
    # a 6th. At a rate of 1e-7 (a decay well above torch's eps, 1e-8) the
    # loss moves by ~1e-5 relatively per epoch: 8 epochs stay within 1e-4
    # of epoch 0, torch's threshold of an improvement.
    trainer = make_trainer(dataset, tmp_path, learning_rate=1e-7,
                           lr_scheduler="plateau", lr_gamma=0.5, max_epochs=8,
                           max_batches_per_epoch_training=1,
                           max_batches_per_epoch_validation=1)
    trainer.train_and_validate()
    lrs = np.load(tmp_path / "exp" / "logs" / "learning_rate.npy")
    assert lrs.tolist() == [1e-7] * 6 + [5e-8] * 2
    losses = np.load(tmp_path / "exp" / "logs" / "valid_loss.npy")
    assert np.all(losses > losses[0] * (1 - 1e-4))


def test_mixed_precision_is_kept_for_a_resume_on_cuda(tmp_path, dataset,
                                                      caplog):
    # Ignored on CPU, it was also dropped from parameters.json and the
    # checkpoint: a GPU run resumed once on CPU went on in float32 on GPU.
    with caplog.at_level(logging.WARNING, logger="dwi_ml"):
        trainer = make_trainer(dataset, tmp_path, mixed_precision="fp16",
                               max_epochs=1, max_batches_per_epoch_training=1,
                               max_batches_per_epoch_validation=1)
    # Said, not silent.
    assert [record.getMessage() for record in caplog.records] == [
        "mixed_precision fp16: CUDA only; this run on cpu trains in float32 "
        "(kept in its parameters for a resume on CUDA; bf16 autocasts on "
        "CPU)."]
    trainer.save_parameters()
    trainer.train_and_validate()
    saved = json.loads((tmp_path / "exp" / "parameters.json").read_text())
    assert saved["trainer"]["mixed_precision"] == "fp16"
    assert not trainer.grad_scaler.is_enabled()
    # The disabled scaler's empty state loads into the next trainer.
    resumed = make_trainer(dataset, tmp_path, mixed_precision="fp16",
                           max_epochs=2, max_batches_per_epoch_training=1,
                           max_batches_per_epoch_validation=1)
    resumed.load_checkpoint()
    resumed.train_and_validate()
    assert len(np.load(tmp_path / "exp" / "logs" / "train_loss.npy")) == 2


def test_a_split_with_fewer_streamlines_than_ranks_is_refused_at_build(
        tmp_path, dataset):
    """Refused before the run, not after its first training epoch. A
    budget of one streamline for 2 ranks is not: its batches are joined."""
    torch.manual_seed(0)
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             step_size=1.5, rnn_layer_sizes=[8])
    loader = build_loader(dataset, {"streamline_group": "streamlines",
                                    "input_group": "input"}, model, "cpu")

    def sampler(world_size):
        return build_sampler(dataset, {
            "streamline_group": "streamlines", "batch_size_training": 40,
            "batch_size_validation": 1, "batch_size_units": "nb_streamlines",
            "seed": 3}, rank=0, world_size=world_size)

    nb_valid = sampler(2).nb_streamlines(Split.VALIDATION)
    assert len(sampler(2).for_split(Split.VALIDATION)) == nb_valid // 2
    # This dataset has as many training streamlines: that split says it.
    assert sampler(2).nb_streamlines(Split.TRAINING) == nb_valid
    with pytest.raises(DwiMLUserError) as error:
        build_trainer(model, str(tmp_path), "exp", sampler(nb_valid + 1),
                      loader, {"max_epochs": 1})
    assert str(error.value) == (
        f"training set: expected at least one streamline per rank, found "
        f"{nb_valid} streamline(s) for {nb_valid + 1} ranks.")
    assert not (tmp_path / "exp").exists()


def test_train_script_refuses_streamlines_on_another_grid(tmp_path, capsys):
    """A reference-layout subject whose streamlines were stored on a 1 mm
    grid and its input on a 2 mm one trained without a word: its voxel
    coordinates were interpolated on the input's grid."""
    rng = np.random.default_rng(1)
    subjects = {name: make_example_subject(rng, nb_streamlines=8)
                for name in ("s1", "s2")}
    group = subjects["s2"]["streamlines"]
    group.affine = np.diag([1., 1., 1., 1.]).astype(np.float32)
    group.affine[:3, 3] = [-10.5, 4.5, 2.5]
    group.dimensions = np.array([16, 18, 20], dtype=np.int16)
    group.voxel_sizes = np.ones(3, dtype=np.float32)
    group.streamlines = [points * 2 for points in group.streamlines]
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, training_subjs=["s1", "s2"])
    with pytest.raises(SystemExit) as error:
        train_main([str(tmp_path), "exp", path, "input", "streamlines",
                    "--rnn_layer_sizes", "8"])
    assert error.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: HDF5 file {path}, subject 's2': expected streamline group "
        "'streamlines' on the grid of volume group 'input' (shape (8, 9, "
        "10), affine [[2.0, 0.0, 0.0, -10.0], [0.0, 2.0, 0.0, 5.0], [0.0, "
        "0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]]), found shape (16, 18, 20), "
        "affine [[1.0, 0.0, 0.0, -10.5], [0.0, 1.0, 0.0, 4.5], [0.0, 0.0, "
        "1.0, 2.5], [0.0, 0.0, 0.0, 1.0]]: its points would be interpolated "
        "on the wrong grid.")
    assert not (tmp_path / "exp").exists()


def test_subjects_in_other_voxel_orientations_are_warned_about(tmp_path,
                                                               caplog):
    """An LPS subject among LAS ones trained without a word, though a model
    reads directions in voxel space (the new-user audit: the flipped copy
    of a subject scored 22 degrees against 8)."""
    rng = np.random.default_rng(2)
    subjects = {name: make_example_subject(rng, nb_streamlines=8)
                for name in ("s1", "s2", "s3")}
    flip = np.diag([1., -1., 1., 1.])  # j axis: A becomes P
    for name in ("s2", "s3"):
        volume, group = subjects[name]["input"], subjects[name]["streamlines"]
        volume.affine = volume.affine @ flip
        group.affine = (group.affine @ flip).astype(np.float32)
        group.voxel_order = "RPS"
    path = str(tmp_path / "mixed.hdf5")
    write_reference_hdf5(path, subjects, training_subjs=["s1", "s2"],
                         validation_subjs=["s3"])
    dataset = build_dataset({"hdf5_file": path, "lazy": True})
    assert dataset.voxel_orientations("input") == {"RAS": ["s1"],
                                                   "RPS": ["s2", "s3"]}
    model = Learn2TrackModel("m", nb_features=dataset.nb_features[0],
                             step_size=1.5, rnn_layer_sizes=[8])
    with caplog.at_level(logging.WARNING):
        build_loader(dataset, {"streamline_group": "streamlines",
                               "input_group": "input"}, model, "cpu")
    assert caplog.messages == [
        f"HDF5 file {path}, volume group 'input': subjects on 2 kinds of "
        "voxel grid (RAS, 2 x 2 x 2 mm voxels: s1; RPS, 2 x 2 x 2 mm voxels: "
        "s2, s3); a model learns directions in voxel space, where they "
        "differ: resample or reorient the subjects alike (e.g. to RAS, one "
        "voxel size) before creating the HDF5."]
