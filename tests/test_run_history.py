"""runs.json: how each segment of a run was made, through real runs of the
training and resume scripts on tiny data."""
import json
import os
import platform
import socket

import pytest
import torch
from signal_during_training import SignalAt
from training_data import TINY_TRAINING, make_trained_experiment, make_training_hdf5

from dwi_ml import __version__
from dwi_ml.cli import dwiml_train_model as train_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.io_utils import output_folders
from dwi_ml.io_utils.script_args import parse_script_args
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.run_history import changed_values, fingerprint_digest


@pytest.fixture(scope="module")
def other_hdf5(tmp_path_factory):
    """A second training file, made from other random subjects."""
    return make_training_hdf5(str(tmp_path_factory.mktemp("other_data")),
                              nb_streamlines=40, seed=1)


def _history(experiment):
    with open(os.path.join(experiment, "runs.json")) as f:
        history = json.load(f)
    assert history["format_version"] == 1
    return history["segments"]


def _parameters(experiment):
    with open(os.path.join(experiment, "parameters.json")) as f:
        return json.load(f)


def _resume(folder, *options):
    argv = [str(folder), "trained", *options, "-v", "WARNING"]
    resume_cli.main(argv)
    return ["resume_training_from_checkpoint.py", *argv]


def test_a_resume_keeps_what_it_replaced(tmp_path, other_hdf5):
    experiment = make_trained_experiment(tmp_path)
    first_hdf5, path = experiment["hdf5"], experiment["experiment"]
    argv = _resume(tmp_path, "--new_max_epochs", "2", "--nb_workers", "1",
                   "--hdf5_file", other_hdf5, "--accept_different_hdf5")

    train, resume = _history(path)
    assert train["argv"] == [
        "dwiml_train_model.py", str(tmp_path), "trained", first_hdf5,
        "input", "streamlines", *TINY_TRAINING]
    assert resume["argv"] == argv
    assert (train["kind"], resume["kind"]) == ("train", "resume")
    old_fingerprint = compute_hdf5_fingerprint(first_hdf5)
    new_fingerprint = compute_hdf5_fingerprint(other_hdf5)
    old_digest = fingerprint_digest(old_fingerprint)
    new_digest = fingerprint_digest(new_fingerprint)
    assert old_digest != new_digest
    assert train["changes"] == {}
    assert resume["changes"] == {
        "trainer.max_epochs": {"old": 1, "new": 2},
        "trainer.nb_workers": {"old": 0, "new": 1},
        "dataset.hdf5_file": {"old": first_hdf5, "new": other_hdf5},
        "dataset.fingerprint": {"old": f"sha256:{old_digest}",
                                "new": f"sha256:{new_digest}"}}
    # Both fingerprints, in full: each segment says what it trained on.
    assert (train["hdf5_file"], resume["hdf5_file"]) == (first_hdf5,
                                                         other_hdf5)
    assert train["hdf5_fingerprint"] == old_fingerprint
    assert resume["hdf5_fingerprint"] == new_fingerprint
    assert (train["hdf5_fingerprint_sha256"],
            resume["hdf5_fingerprint_sha256"]) == (old_digest, new_digest)
    # parameters.json holds the values the code reads now.
    params = _parameters(path)
    assert params["trainer"]["max_epochs"] == 2
    assert params["trainer"]["nb_workers"] == 1
    assert params["dataset"]["hdf5_file"] == other_hdf5
    assert params["dataset"]["fingerprint"] == new_fingerprint

    for segment, epochs in ((train, (0, 1)), (resume, (1, 2))):
        assert segment["end"] == "completed"
        assert segment["end_detail"] == f"reached max_epochs ({epochs[1]})"
        assert segment["started"] <= segment["ended"]
        assert segment["started"].endswith("+00:00")
        assert segment["position_at_start"] == {
            "current_epoch": epochs[0], "phase": "train",
            "nb_batches_done": 0}
        assert segment["position_at_end"]["current_epoch"] == epochs[1]
        assert segment["host"] == socket.gethostname()
        assert segment["pid"] == os.getpid()
        assert segment["dwi_ml"]["version"] == __version__
        assert segment["python"] == platform.python_version()
        assert segment["libraries"]["torch"].split("+")[0] == \
            torch.__version__.split("+")[0]
        assert set(segment["libraries"]) == {"torch", "numpy", "h5py",
                                             "nibabel", "dipy"}
        assert segment["torch_threads"] == torch.get_num_threads()
        assert (segment["device"], segment["nb_ranks"]) == ("cpu", 1)
    # -f removes it with the rest of the experiment: it is dwi_ml's own.
    assert output_folders.foreign_entries(path, "experiment") == []


def test_a_resume_with_the_same_file_repeats_no_fingerprint(tmp_path):
    experiment = make_trained_experiment(tmp_path)
    _resume(tmp_path, "--new_max_epochs", "2", "--new_patience", "3")
    train, resume = _history(experiment["experiment"])
    assert resume["changes"] == {
        "trainer.max_epochs": {"old": 1, "new": 2},
        "trainer.patience": {"old": None, "new": 3}}
    assert "hdf5_fingerprint" in train and "hdf5_fingerprint" not in resume
    assert resume["hdf5_fingerprint_sha256"] == \
        train["hdf5_fingerprint_sha256"]


def test_a_stop_by_a_signal_then_a_requeued_job(tmp_path):
    hdf5_file = make_training_hdf5(str(tmp_path), nb_streamlines=40)
    argv = [str(tmp_path), "trained", hdf5_file, "input", "streamlines",
            *TINY_TRAINING[2:], "--max_epochs", "2", "--resume_if_exists"]
    args = parse_script_args(train_cli.build_parser(), argv)
    with pytest.raises(SystemExit) as stopped:
        train_cli.train_from_args(args, [SignalAt("0:train:0:SIGTERM")])
    assert stopped.value.code == 3
    (segment,) = _history(tmp_path / "trained")
    assert segment["kind"] == "train"
    assert segment["end"] == "stopped"
    assert segment["stopped_by"] == "SIGTERM"
    assert segment["end_detail"] == ("stopped by SIGTERM in epoch 0 after 1 "
                                     "training batch")
    assert segment["position_at_end"] == {
        "current_epoch": 0, "phase": "train", "nb_batches_done": 1}

    # The same command again (a requeued job) continues the run.
    train_cli.main(argv)
    stopped, resumed = _history(tmp_path / "trained")
    assert stopped == segment
    assert resumed["kind"] == "resume"
    assert resumed["argv"] == ["dwiml_train_model.py", *argv]
    assert resumed["changes"] == {}
    assert resumed["position_at_start"] == segment["position_at_end"]
    assert resumed["end"] == "completed"


class FailAtFirstBatch(Callback):
    def on_train_batch_end(self, trainer, batch, outputs):
        raise RuntimeError("disk on fire\nsecond line")


def test_an_error_a_kill_and_an_older_experiment(tmp_path, other_hdf5,
                                                 capsys):
    experiment = make_trained_experiment(tmp_path)
    path = experiment["experiment"]
    args = resume_cli.build_parser().parse_args(
        [str(tmp_path), "trained", "--new_max_epochs", "2", "-v", "WARNING"])
    with pytest.raises(RuntimeError, match="disk on fire"):
        resume_cli.resume_from_args(args, [FailAtFirstBatch()])
    train, failed = _history(path)
    # Arguments built in code: no command line to record.
    assert failed["argv"] is None
    assert failed["end"] == "error"
    assert failed["end_detail"] == "RuntimeError: disk on fire"
    assert failed["position_at_end"]["current_epoch"] == 1

    # A process killed without a word: the next segment says so.
    with open(os.path.join(path, "runs.json")) as f:
        history = json.load(f)
    for key in ("ended", "end", "end_detail", "position_at_end"):
        del history["segments"][-1][key]
    with open(os.path.join(path, "runs.json"), "w") as f:
        json.dump(history, f)
    _resume(tmp_path, "--new_max_epochs", "2")
    segments = _history(path)
    assert [segment.get("end") for segment in segments] == [
        "completed", "unrecorded", "completed"]
    assert segments[1]["ended"] is None
    assert "SIGKILL" in segments[1]["end_detail"]

    # An experiment made before runs.json: its training file is known.
    os.remove(os.path.join(path, "runs.json"))
    _resume(tmp_path, "--new_max_epochs", "3", "--hdf5_file", other_hdf5,
            "--accept_different_hdf5")
    earlier, resume = _history(path)
    assert earlier["kind"] == "unrecorded"
    assert earlier["hdf5_file"] == experiment["hdf5"]
    assert earlier["hdf5_fingerprint"] == compute_hdf5_fingerprint(
        experiment["hdf5"])
    assert resume["hdf5_fingerprint"] == compute_hdf5_fingerprint(other_hdf5)
    assert resume["changes"]["dataset.hdf5_file"] == {
        "old": experiment["hdf5"], "new": other_hdf5}

    # A file it cannot read is left as it is, and the run goes on.
    with open(os.path.join(path, "runs.json"), "w") as f:
        f.write("{not json")
    capsys.readouterr()
    _resume(tmp_path, "--new_max_epochs", "4")
    assert "This segment is not recorded" in capsys.readouterr().err
    with open(os.path.join(path, "runs.json")) as f:
        assert f.read() == "{not json"
    assert _parameters(path)["trainer"]["max_epochs"] == 4


def test_changed_values_names_nested_keys():
    old = {"trainer": {"device": "cuda", "seed": 1},
           "model": {"dg_args": {"add_eos": False}}, "gone": 1}
    new = {"trainer": {"device": "cpu", "seed": 1},
           "model": {"dg_args": {"add_eos": True}}, "added": None}
    assert changed_values(old, new) == {
        "trainer.device": {"old": "cuda", "new": "cpu"},
        "model.dg_args.add_eos": {"old": False, "new": True},
        "gone": {"old": 1, "new": None}}
