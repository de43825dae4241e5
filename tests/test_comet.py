"""Comet logging: real offline archives from real tiny training runs.

The network is closed; online runs point Comet at a closed local port so
that they fail fast, as they would without network.
"""
import argparse
import glob
import json
import logging
import os
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import load_checkpoint_state, read_parameters
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.monitoring.comet_logger import (
    CometCallback,
    create_comet_experiment,
    describe_comet_error,
)
from dwi_ml.monitoring.monitoring_args import add_comet_args, make_comet_callback
from dwi_ml.training.distributed import DistributedContext
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5

DUMMY_API_KEY = "dwimlDummyApiKey0123456789abcdef"
EPOCH_LOGS = ("train_loss", "valid_loss", "grad_norm_before_clip",
              "grad_norm_after_clip", "learning_rate", "train_time",
              "valid_time")
COMET_LOGGER = "dwi_ml.monitoring.comet_logger"
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                            "scripts_python", "dwiml_train_model.py")


# ----------------------------------------------------------------------
# Tiny real training runs (also used by test_visualize_logs.py)
@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory):
    """A real two-subject HDF5 (training s1, validation s2), ~20 streamlines."""
    path = str(tmp_path_factory.mktemp("hdf5") / "tiny.hdf5")
    rng = np.random.default_rng(0)
    subjects = {"s1": make_example_subject(rng),
                "s2": make_example_subject(rng)}
    write_reference_hdf5(path, subjects, training_subjs=["s1"],
                         validation_subjs=["s2"])
    return path


def make_tiny_trainer(hdf5_file, experiments_path, experiment_name,
                      max_epochs=2, callbacks=(), **trainer_args):
    """A real Learn2track trainer on ``hdf5_file``: 4 batches per epoch."""
    dataset = MultiSubjectDataset(hdf5_file, lazy=False)
    dataset.load_data()
    sampler = BatchSampler(dataset, "streamlines", 5, 10, "nb_streamlines",
                           seed=1)
    loader = BatchLoaderOneInput(dataset, "streamlines", "input",
                                 InputSpec.from_options(step_size=1.0))
    model = Learn2TrackModel(experiment_name, nb_features=dataset.nb_features[0],
                             step_size=1.0, rnn_layer_sizes=[8])
    return DWIMLTrainerOneInput(model, str(experiments_path), experiment_name,
                                sampler, loader, max_epochs=max_epochs,
                                callbacks=callbacks, **trainer_args)


# ----------------------------------------------------------------------
# Reading Comet's offline archive (a zip of JSON lines)
def read_archive(path):
    """(experiment.json dict, list of messages, raw bytes of every member)."""
    with zipfile.ZipFile(path) as archive:
        raw = b"".join(archive.read(name) for name in archive.namelist())
        experiment = json.loads(archive.read("experiment.json"))
        messages = [json.loads(line) for line in
                    archive.read("messages.json").decode().splitlines()
                    if line.strip()]
    return experiment, messages, raw


def archive_metrics(messages):
    """metric name -> (steps, values), in logging order."""
    metrics = {}
    for message in messages:
        if message["type"] == "metric_msg":
            metric = message["payload"]["metric"]
            steps, values = metrics.setdefault(metric["metricName"], ([], []))
            steps.append(metric["step"])
            values.append(float(metric["metricValue"]))
    return metrics


def archive_parameters(messages):
    """Parameters logged by us (not Comet's own): name -> value."""
    params = {}
    for message in messages:
        if message["type"] == "parameter_msg":
            # A list value comes under "params", a scalar under "param".
            param = (message["payload"].get("param")
                     or message["payload"]["params"])
            if param["source"] == "manual":
                params[param["paramName"]] = param["paramValue"]
    return params


def flatten(params, prefix=""):
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}|"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def comet_args(argv):
    parser = argparse.ArgumentParser()
    add_comet_args(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def comet_env(monkeypatch, tmp_path):
    """A dummy key, no user config, and a Comet server that refuses at once."""
    monkeypatch.setenv("COMET_API_KEY", DUMMY_API_KEY)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(tmp_path / "default"))
    monkeypatch.setenv("COMET_URL_OVERRIDE", "http://127.0.0.1:9/clientlib/")
    monkeypatch.setenv("COMET_HTTP_SESSION_RETRY_TOTAL", "0")
    monkeypatch.setenv("COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL", "0")


def train_offline(hdf5, tmp_path, max_epochs, log_every, resume=False):
    """Train (or resume) experiment 'exp' with an offline Comet archive."""
    args = comet_args(["--comet_workspace", "ws", "--comet_project", "proj",
                       "--comet_offline_dir", str(tmp_path / "comet"),
                       *([] if log_every is None else
                         ["--comet_log_every", str(log_every)])])
    # hyperparameters=None: parameters.json as it is when training starts.
    callback = make_comet_callback(args, os.path.join(tmp_path, "exp"))
    trainer = make_tiny_trainer(hdf5, tmp_path, "exp", max_epochs,
                                callbacks=[callback])
    if resume:
        trainer.load_checkpoint()  # gives the callback its experiment key
    else:
        trainer.save_parameters()
    trainer.train_and_validate()
    return trainer, callback


def test_importing_dwi_ml_monitoring_does_not_import_comet_ml():
    code = ("import sys, dwi_ml.monitoring.comet_logger, "
            "dwi_ml.monitoring.monitoring_args; "
            "print('comet_ml' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"


def test_offline_run_logs_metrics_params_graph_then_resume_adds_to_it(
        tiny_hdf5, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=COMET_LOGGER)
    trainer, callback = train_offline(tiny_hdf5, tmp_path, max_epochs=2,
                                      log_every=3)
    key = callback.experiment_key
    archives = glob.glob(str(tmp_path / "comet" / "*.zip"))
    assert archives == [str(tmp_path / "comet" / f"{key}.zip")]
    # With what it logged there: epochs 0-1, and every 3rd of 8 batches.
    assert load_checkpoint_state(trainer.experiment_dir)["callbacks"][
        "comet"] == {"experiment_key": key, "log_every": 3,
                     "logged_epochs": [[0, 1, 1]],
                     "logged_batches": [[0, 6, 3]]}

    experiment, messages, raw = read_archive(archives[0])
    first_messages = messages
    assert experiment["workspace"] == "ws"
    assert experiment["project_name"] == "proj"
    assert DUMMY_API_KEY.encode() not in raw

    logs_dir = os.path.join(trainer.experiment_dir, "logs")
    metrics = archive_metrics(messages)
    for name in EPOCH_LOGS:
        expected = np.load(os.path.join(logs_dir, f"{name}.npy"))
        assert metrics[name][0] == [0, 1], name
        np.testing.assert_array_equal(metrics[name][1], expected)
    with open(os.path.join(trainer.experiment_dir, "best_model",
                           "best_epoch.json")) as f:
        best = json.load(f)
    assert metrics["best_epoch"][0] == [0, 1]
    assert metrics["best_epoch"][1][-1] == best["epoch"]
    assert metrics["best_loss"][1][-1] == best["loss"]
    per_batch = np.load(os.path.join(logs_dir, "train_loss_per_batch.npy"))
    assert len(per_batch) == 8
    assert metrics["train_loss_per_batch"][0] == [0, 3, 6]
    np.testing.assert_array_equal(metrics["train_loss_per_batch"][1],
                                  per_batch[[0, 3, 6]])

    hyperparameters = flatten(read_parameters(trainer.experiment_dir))
    params = archive_parameters(messages)
    assert set(params) == set(hyperparameters)
    assert params["trainer|learning_rate"] == 0.005  # Learn2track's default
    assert params["model_type"] == "Learn2TrackModel"
    graphs = [m["payload"]["graph"] for m in messages if m["type"] == "graph"]
    assert graphs == [str(trainer.model)]
    names = [m["payload"]["value"] for m in messages
             if m["type"] == "log_other" and m["payload"]["key"] == "Name"]
    assert names == ["exp"]

    # Resume to epoch 3: a second archive continues the same experiment,
    # logging every 3 batches without being told again (it stopped).
    _, resumed = train_offline(tiny_hdf5, tmp_path, max_epochs=3,
                               log_every=None, resume=True)
    assert resumed.experiment_key == key
    second = [path for path in glob.glob(str(tmp_path / "comet" / "*.zip"))
              if path != archives[0]]
    assert len(second) == 1 and os.path.basename(second[0]).startswith(key)
    experiment, messages, raw = read_archive(second[0])
    assert experiment["offline_id"] == key
    assert experiment["resume_strategy"] == "get"
    assert DUMMY_API_KEY.encode() not in raw
    assert archive_parameters(messages) == archive_parameters(first_messages)
    metrics = archive_metrics(messages)
    train_loss = np.load(os.path.join(logs_dir, "train_loss.npy"))
    assert len(train_loss) == 3
    assert metrics["train_loss"] == ([2], [train_loss[2]])
    per_batch = np.load(os.path.join(logs_dir, "train_loss_per_batch.npy"))
    assert metrics["train_loss_per_batch"][0] == [9]
    assert metrics["train_loss_per_batch"][1] == [per_batch[9]]
    assert caplog.records == []
    assert load_checkpoint_state(trainer.experiment_dir)["callbacks"][
        "comet"] == {"experiment_key": key, "log_every": 3,
                     "logged_epochs": [[0, 2, 1]],
                     "logged_batches": [[0, 9, 3]]}

    for path in glob.glob(os.path.join(tmp_path, "exp", "**", "*"),
                          recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert DUMMY_API_KEY.encode() not in f.read(), path


def test_script_online_bogus_key_no_network_warns_once_and_trains(
        tiny_hdf5, tmp_path):
    """The training script as a user runs it: a bogus key, a workspace, no
    network, and Comet's default retries (which once printed 16 warning
    lines over 80 s). One warning line, then the run goes on."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("COMET_")}
    env.update(COMET_API_KEY=DUMMY_API_KEY, HOME=str(tmp_path),
               COMET_URL_OVERRIDE="http://127.0.0.1:9/clientlib/",
               OMP_NUM_THREADS="1")
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    process = subprocess.run(
        [sys.executable, TRAIN_SCRIPT,
         str(experiments), "exp", tiny_hdf5, "input", "streamlines",
         "--max_epochs", "2", "--batch_size_training", "5",
         "--step_size", "1.0", "--rnn_layer_sizes", "8",
         "--comet_workspace", "ws", "--comet_project", "proj",
         "--comet_log_every", "1"],
        capture_output=True, text=True, env=env,
        timeout=600)   # a hang guard only, not a timing
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    warnings = [line for line in output.splitlines()
                if any(word in line.lower()
                       for word in ("warn", "retr", "error"))]
    assert len(warnings) == 1, output
    assert "Comet could not be reached" in warnings[0]
    assert len(np.load(experiments / "exp" / "logs" / "train_loss.npy")) == 2
    assert DUMMY_API_KEY not in output
    for path in glob.glob(str(tmp_path / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert DUMMY_API_KEY.encode() not in f.read(), path


def test_unreachable_comet_warns_once_and_gives_no_callback(tmp_path,
                                                            caplog):
    args = comet_args(["--comet_workspace", "ws", "--comet_project", "proj"])
    with caplog.at_level(logging.WARNING):
        assert make_comet_callback(args, str(tmp_path / "exp"), {}) is None
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith(
        "Comet could not be reached to check the workspace 'ws'")
    assert DUMMY_API_KEY not in caplog.text


def test_online_experiment_failing_warns_once_and_trains(tiny_hdf5, tmp_path,
                                                         caplog):
    # Reached at the workspace check, lost at the experiment.
    callback = CometCallback(workspace="ws", project="proj",
                             hyperparameters={"a": 1}, experiment_name="exp",
                             log_every=1)
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "exp",
                                callbacks=[callback])
    with caplog.at_level(logging.WARNING, logger=COMET_LOGGER):
        trainer.train_and_validate()
    assert [r.getMessage() for r in caplog.records] == [
        "Comet (online) stopped: ConnectionError: Comet could not be reached "
        "or refused the experiment (network, API key or experiment key). "
        "Training goes on; the logs are in the experiment's logs/ folder."]
    assert callback.experiment_key is None
    assert len(np.load(os.path.join(trainer.logs_dir, "train_loss.npy"))) == 2
    assert DUMMY_API_KEY not in caplog.text


def test_comet_error_while_logging_warns_once_and_training_goes_on(
        tiny_hdf5, tmp_path, caplog, monkeypatch):
    # comet_ml.error_mode() makes Comet raise where it would only warn,
    # e.g. on a metric without a value (a custom monitor that logged none).
    from comet_ml.debug import debug_options
    monkeypatch.setattr(debug_options, "_debug_exceptions_raising", True)
    callback = CometCallback(offline_dir=str(tmp_path / "comet"))
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "exp",
                                callbacks=[callback])
    callback.on_train_start(trainer)
    experiment = callback.experiment
    logs = {"train_loss": 1.5, "custom_metric": None}
    with caplog.at_level(logging.WARNING, logger=COMET_LOGGER):
        trainer.best_tracker.update(1.5, 0)
        callback.on_epoch_end(trainer, 0, logs)
        assert callback.experiment is None
        callback.on_epoch_end(trainer, 1, logs)
        callback.on_train_end(trainer)
    assert len(caplog.records) == 1
    assert "Comet (offline) stopped: CometDebugException" in caplog.text
    experiment.end()


def test_only_the_main_process_talks_to_comet(tiny_hdf5, tmp_path):
    callback = CometCallback(offline_dir=str(tmp_path / "comet"), log_every=1)
    # Rank 1 of a run whose other processes are not started: it trains on
    # its own, as a non-main process.
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "exp",
                                callbacks=[callback],
                                distributed=DistributedContext(rank=1))
    assert not trainer.is_main_process
    trainer.train_and_validate()
    assert not os.path.exists(tmp_path / "comet")
    assert callback.experiment_key is None


@pytest.mark.parametrize("argv, message", [
    (["--comet_log_every", "-1"], "--comet_log_every: expected 0 or more"),
    (["--comet_log_every", "5"], "--comet_log_every needs --comet_workspace"),
    (["--comet_workspace", "ws"], "got only --comet_workspace."),
    (["--comet_project", "p"], "got only --comet_project."),
    (["--comet_offline_dir", "{tmp}/missing/comet"],
     "parent folder '{tmp}/missing' of '{tmp}/missing/comet' does not exist"),
    (["--comet_offline_dir", "{tmp}/a_file"], "exists and is not a folder"),
    (["--comet_offline_dir", "{tmp}/a_file/comet"],
     "parent folder '{tmp}/a_file' of '{tmp}/a_file/comet' is a file"),
])
def test_bad_comet_options_are_clear_errors(argv, message, tmp_path):
    (tmp_path / "a_file").write_text("")
    args = comet_args([arg.format(tmp=tmp_path) for arg in argv])
    with pytest.raises(DwiMLUserError, match=message.format(tmp=tmp_path)):
        make_comet_callback(args, str(tmp_path / "exp"), {})


def test_online_without_api_key_is_an_error_and_no_option_is_no_comet(
        tmp_path, monkeypatch):
    monkeypatch.delenv("COMET_API_KEY")
    assert make_comet_callback(comet_args([]), str(tmp_path / "exp"), {}) is None
    args = comet_args(["--comet_workspace", "ws", "--comet_project", "p"])
    with pytest.raises(DwiMLUserError, match="no API key found"):
        make_comet_callback(args, str(tmp_path / "exp"), {})
    args = comet_args(["--comet_offline_dir", str(tmp_path / "comet"),
                       "--comet_log_every", "2"])
    callback = make_comet_callback(args, str(tmp_path / "my_exp"), {"a": 1},
                                   resumed_key="abc")
    assert (callback.mode, callback.experiment_name, callback.log_every,
            callback.experiment_key) == ("offline", "my_exp", 2, "abc")


def test_error_descriptions_hide_the_api_key():
    error = ConnectionError(f"401 for key {DUMMY_API_KEY}\n  retry later")
    assert describe_comet_error(error) == \
        "ConnectionError: 401 for key *** retry later"


def test_a_resume_without_comet_options_says_its_epochs_miss_comet(
        tiny_hdf5, tmp_path, capsys):
    # Trained with an offline archive, resumed without a Comet option: the
    # resumed epochs silently never reached the Comet experiment.
    from dwi_ml.cli.dwiml_train_model import main as train_main
    from dwi_ml.cli.resume_training_from_checkpoint import main as resume_main

    comet_dir = tmp_path / "comet"
    train_main([str(tmp_path), "exp", tiny_hdf5, "input", "streamlines",
                "--max_epochs", "1", "--batch_size_training", "5",
                "--step_size", "1.0", "--rnn_layer_sizes", "8",
                "--comet_offline_dir", str(comet_dir), "-v", "WARNING"])
    key = load_checkpoint_state(str(tmp_path / "exp"))["callbacks"][
        "comet"]["experiment_key"]
    archives = sorted(os.listdir(comet_dir))
    capsys.readouterr()
    resume_main([str(tmp_path), "exp", "--new_max_epochs", "2",
                 "-v", "WARNING"])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("WARNING:")]
    assert len(warnings) == 1, warnings
    assert key in warnings[0] and "--comet_offline_dir" in warnings[0]
    assert sorted(os.listdir(comet_dir)) == archives
    # The key is kept: a later resume with Comet continues the experiment.
    # So is the record of what reached it: epoch 0 only.
    assert load_checkpoint_state(str(tmp_path / "exp"))["callbacks"][
        "comet"] == {"experiment_key": key, "log_every": 0,
                     "logged_epochs": [[0, 0, 1]], "logged_batches": []}


def test_a_comet_ml_that_fails_to_import_is_named_as_installed(tmp_path):
    # comet_ml 3.35 - 3.38 import pkg_resources, which setuptools 82 removed:
    # the message said to install comet_ml, which was installed.
    broken = tmp_path / "site" / "comet_ml"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import pkg_resources_gone_xyz\n")
    code = ("from dwi_ml.monitoring.comet_logger import import_comet\n"
            "from dwi_ml.io_utils.errors import DwiMLUserError\n"
            "try:\n    import_comet()\n"
            "except DwiMLUserError as error:\n    print(error)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, timeout=120)
    assert process.stdout.strip() == (
        "the Comet options need the comet_ml package, which is installed but "
        "failed to import (No module named 'pkg_resources_gone_xyz'); "
        "upgrade it: pip install -U comet_ml.")


def test_resumed_archives_of_one_seeded_run_get_their_own_names(tmp_path):
    """Comet draws a resumed archive's name suffix from Python's random:
    seeded alike, two resumes of one experiment (or of its copy) wrote the
    same KEY-XXXXXX.zip, the second over the first. The run's own draws
    stay as they were."""
    folder = str(tmp_path / "comet")
    first = create_comet_experiment("ws", "proj", folder,
                                    system_metrics=False)
    key = first.get_key()
    first.end()
    draws = []
    for _ in range(2):
        random.seed(1234)
        resumed = create_comet_experiment("ws", "proj", folder,
                                          experiment_key=key,
                                          system_metrics=False)
        draws.append(random.random())
        resumed.log_metric("train_loss", 1.0, step=0)
        resumed.end()
    random.seed(1234)
    assert draws == [random.random()] * 2
    archives = sorted(os.path.basename(path)
                      for path in glob.glob(os.path.join(folder, "*.zip")))
    assert len(archives) == 3 and f"{key}.zip" in archives
    assert all(name.startswith(key) for name in archives)


@pytest.mark.parametrize("option", ["--comet_offline_dir",
                                    "--comet_workspace", "--comet_project"])
def test_an_empty_comet_option_is_refused(option, tmp_path):
    """An unset shell variable ("$COMET_DIR") turned Comet off, silently."""
    with pytest.raises(DwiMLUserError, match=(
            f"^argument {option}: expected a name or path, found an empty "
            "string")):
        make_comet_callback(comet_args([option, ""]), str(tmp_path / "exp"),
                            {})


def test_comet_leaves_python_random_as_it_was(tiny_hdf5, tmp_path):
    """Comet draws from Python's random (archive names, ids) when it logs
    and ends: a run with Comet ended with another random state than the
    same run without it, and a resumed run's checkpoint held another state
    than an uninterrupted one's (a user callback drawing from random then
    diverged)."""
    states = []
    for comet in (True, False):
        folder = tmp_path / ("comet_run" if comet else "plain_run")
        folder.mkdir()
        random.seed(1234)
        if comet:
            train_offline(tiny_hdf5, folder, max_epochs=2, log_every=1)
        else:
            trainer = make_tiny_trainer(tiny_hdf5, folder, "exp", 2)
            trainer.save_parameters()
            trainer.train_and_validate()
        states.append(random.getstate())
    assert states[0] == states[1]
