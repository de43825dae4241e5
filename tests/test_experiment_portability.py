"""Experiments that move between machines and folders, or cannot be written.

Users copy experiment folders to other machines under other names, move
their HDF5 files to scratch, run from relative paths with spaces and
non-ASCII characters, and open experiments they cannot write (a read-only
copy, a teammate's folder). Each case either works or is refused in one
line, before any work, with every file left as it was.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
from file_tree import run_refused, snapshot, without_write_permission
from test_training_resume import TIME_LOGS, assert_same_run
from training_data import (
    TINY_TRAINING,
    make_trained_experiment,
    make_training_hdf5,
)

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.visualize_logs import main as plot_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_lock import LOCK_FILE
from dwi_ml.training.run_history import changed_values

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "scripts_python")
SIGNAL_HELPER = os.path.join(HERE, "signal_during_training.py")
EXIT_INTERRUPTED = 3
# Spaces, non-ASCII letters and a quote: what a pasted command must keep.
PARENT = "other parent é"
NAME = "run 1 ñ'b"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_trained_experiment(tmp_path_factory.mktemp("portability_data"))


@pytest.fixture(scope="module")
def straight_run(data):
    """The 2 epochs of the interrupted runs below, uninterrupted."""
    train_main([str(data["folder"]), "straight", data["hdf5"], "input",
                "streamlines", *TINY_TRAINING[2:], "--max_epochs", "2"])
    return os.path.join(str(data["folder"]), "straight")


def _run_script(name, args, prefix=(), **kwargs):
    return subprocess.run([*prefix, sys.executable,
                           os.path.join(SCRIPTS, name), *args],
                          capture_output=True, text=True, timeout=300,
                          **kwargs)


def _assert_one_line_refusal(process, script, *expected):
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith(f"{script}: error: ")
    for text in expected:
        assert text in lines[0]
    return lines[0]


def _interrupted_run(experiments, name, hdf5_file):
    """A real run of 2 epochs stopped by SIGINT in its first epoch."""
    stopped = subprocess.run(
        [sys.executable, SIGNAL_HELPER, "0:train:1:SIGINT", "train",
         str(experiments), name, hdf5_file, "input", "streamlines",
         *TINY_TRAINING[2:], "--max_epochs", "2"],
        capture_output=True, text=True, timeout=300)
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.stderr[-3000:]
    return stopped


def _resume_track_evaluate(parent, name, hdf5_file, tractogram):
    """An experiment resumed to 2 epochs, tracked and evaluated. Returns
    the HDF5 file it saved, the tractogram and the evaluation."""
    experiment = os.path.join(parent, name)
    resume_cli.main([parent, name, "--new_max_epochs", "2",
                     "--hdf5_file", hdf5_file, "-v", "WARNING"])
    with open(os.path.join(experiment, "parameters.json")) as f:
        saved = json.load(f)["dataset"]["hdf5_file"]
    track_main([experiment, hdf5_file, "subj-03", "input", tractogram,
                "--seeding_mask_group", "wm_mask", "--npv", "1",
                "--step_size", "1.5", "--min_length", "0"])
    evaluate_main([experiment, hdf5_file])
    with open(os.path.join(experiment, "evaluation_testing_best.json")) as f:
        evaluation = json.load(f)
    return saved, nib.streamlines.load(tractogram), evaluation


def test_copied_experiment_and_moved_hdf5_work_from_relative_paths(
        tmp_path, data, monkeypatch):
    """Copied under another parent and name, its HDF5 moved: every script
    takes them by relative paths with spaces and non-ASCII letters, and
    does what it does on a copy by absolute paths."""
    (tmp_path / PARENT).mkdir()
    shutil.copytree(data["experiment"], tmp_path / PARENT / NAME)
    # The same commands on another copy, by absolute paths.
    reference = tmp_path / "reference"
    shutil.copytree(data["experiment"], reference / NAME)
    _, expected_tracks, expected = _resume_track_evaluate(
        str(reference), NAME, data["hdf5"], str(tmp_path / "reference.trk"))

    (tmp_path / "scratch ü").mkdir()
    shutil.copy(data["hdf5"], tmp_path / "scratch ü" / "dätä 1.hdf5")
    hdf5_file = os.path.join("scratch ü", "dätä 1.hdf5")
    experiment = os.path.join(PARENT, NAME)
    monkeypatch.chdir(tmp_path)
    saved, tracks, evaluation = _resume_track_evaluate(
        PARENT, NAME, hdf5_file, "tracks ß.trk")
    # Absolute: a later resume from another folder finds it.
    assert saved == str(tmp_path / hdf5_file)
    assert_same_run(experiment, reference / NAME, 2)

    assert len(tracks.streamlines) > 0
    np.testing.assert_array_equal(tracks.streamlines._lengths,
                                  expected_tracks.streamlines._lengths)
    np.testing.assert_array_equal(tracks.streamlines.get_data(),
                                  expected_tracks.streamlines.get_data())
    np.testing.assert_array_equal(tracks.affine, expected_tracks.affine)

    assert evaluation["hdf5_file"] == str(tmp_path / hdf5_file)
    assert evaluation["experiment"] == str(tmp_path / experiment)
    assert evaluation["weights_sha256"] == expected["weights_sha256"]
    assert evaluation["results"] == expected["results"]

    # Times differ between runs by nature: the reference gets the copy's,
    # so that every drawn value is the same.
    for name in TIME_LOGS:
        shutil.copy(os.path.join(experiment, "logs", name),
                    reference / NAME / "logs" / name)
    plot_main([experiment])
    plot_main([str(reference / NAME)])
    image = plt.imread(os.path.join(experiment, "logs_plot.png"))
    assert image.ndim == 3
    np.testing.assert_array_equal(
        image, plt.imread(reference / NAME / "logs_plot.png"))


def test_printed_resume_command_works_when_pasted(tmp_path, data,
                                                  straight_run):
    """The resume command printed at an interruption is quoted for a shell:
    pasted as it is, it resumes an experiment whose path has spaces."""
    experiments = tmp_path / PARENT
    experiments.mkdir()
    stopped = _interrupted_run(experiments, NAME, data["hdf5"])
    command = stopped.stderr.strip().splitlines()[-1].split(
        "resume with: ", 1)[1]
    script, *args = shlex.split(command)
    assert script == "resume_training_from_checkpoint.py"
    assert args == [str(experiments), NAME]

    resumed = _run_script(script, [*args, "-v", "WARNING"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(experiments / NAME, straight_run, 2)


def test_requeued_job_resumes_on_its_own_copy_of_the_hdf5(tmp_path, data,
                                                         straight_run):
    """A job that copies the HDF5 to its node's scratch each time: the
    requeued command line names a new copy; the first one is gone."""
    first_copy = tmp_path / "scratch_job1" / "data.hdf5"
    second_copy = tmp_path / "scratch_job2" / "data.hdf5"
    for copy in (first_copy, second_copy):
        copy.parent.mkdir()
        shutil.copy(data["hdf5"], copy)
    _interrupted_run(tmp_path, "exp", str(first_copy))
    shutil.rmtree(first_copy.parent)

    train_main([str(tmp_path), "exp", str(second_copy), "input",
                "streamlines", *TINY_TRAINING[2:], "--max_epochs", "2",
                "--resume_if_exists"])
    experiment = tmp_path / "exp"
    assert_same_run(experiment, straight_run, 2)
    with open(experiment / "parameters.json") as f:
        assert json.load(f)["dataset"]["hdf5_file"] == str(second_copy)


def test_requeued_job_names_its_own_hdf5_problems(tmp_path, data, capsys):
    """Refusals of train --resume_if_exists name the train command's HDF5
    file, and options that exist (train has no --hdf5_file)."""
    shutil.copytree(data["experiment"], tmp_path / "exp")
    (tmp_path / "other").mkdir()
    other = make_training_hdf5(str(tmp_path / "other"), nb_streamlines=30)
    before = snapshot(tmp_path)
    missing = str(tmp_path / "gone" / "data.hdf5")
    for hdf5_file, expected in (
            (missing, f"HDF5 file '{missing}' does not exist."),
            (other, f"HDF5 file '{other}' is not the one experiment "
                    f"'{tmp_path / 'exp'}' was trained on (first difference: "
                    "subjects/")):
        message = run_refused(train_main, [
            str(tmp_path), "exp", hdf5_file, "input", "streamlines",
            *TINY_TRAINING, "--resume_if_exists"], capsys)
        assert expected in message and "--hdf5_file" not in message
    assert "use resume_training_from_checkpoint.py --accept_different_hdf5" \
        in message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("read_only", [".", "logs"])
def test_read_only_experiment_is_refused_before_any_work(tmp_path, data,
                                                         read_only):
    """A read-only copy (or one of its folders) would fail at its first save,
    with a traceback: both resume and train --resume_if_exists refuse it."""
    experiment = tmp_path / "exps" / "exp"
    shutil.copytree(data["experiment"], experiment)
    folder = os.path.normpath(experiment / read_only)
    os.chmod(folder, 0o555)
    try:
        before = snapshot(tmp_path)
        prefix = without_write_permission()
        where = "" if read_only == "." else f": its folder '{folder}'"
        expected = f"experiment '{experiment}'{where} is not writable"
        _assert_one_line_refusal(
            _run_script("resume_training_from_checkpoint.py",
                        [str(experiment.parent), "exp", "--new_max_epochs",
                         "2"], prefix),
            "resume_training_from_checkpoint.py", expected,
            "copy the experiment to a folder you can write to")
        _assert_one_line_refusal(
            _run_script("dwiml_train_model.py",
                        [str(experiment.parent), "exp", data["hdf5"], "input",
                         "streamlines", *TINY_TRAINING, "--resume_if_exists"],
                        prefix),
            "dwiml_train_model.py", expected)
        assert snapshot(tmp_path) == before
    finally:
        os.chmod(folder, 0o755)


def test_lock_file_of_another_user_is_named(tmp_path, data):
    """A teammate's experiment in a shared folder: its lock file is theirs
    (read-only for us), which resume and train -f name in one line."""
    experiment = tmp_path / "exps" / "exp"
    shutil.copytree(data["experiment"], experiment)
    lock_path = experiment / LOCK_FILE
    lock_path.touch()
    lock_path.chmod(0o444)
    before = snapshot(tmp_path)
    prefix = without_write_permission()
    expected = (f"experiment '{experiment}': cannot open its lock file "
                f"{lock_path} for writing (Permission denied)")
    _assert_one_line_refusal(
        _run_script("resume_training_from_checkpoint.py",
                    [str(experiment.parent), "exp", "--new_max_epochs", "2"],
                    prefix),
        "resume_training_from_checkpoint.py", expected)
    _assert_one_line_refusal(
        _run_script("dwiml_train_model.py",
                    [str(experiment.parent), "exp", data["hdf5"], "input",
                     "streamlines", *TINY_TRAINING, "-f"], prefix),
        "dwiml_train_model.py", expected)
    assert snapshot(tmp_path) == before


def test_a_resume_names_the_step_size_that_changed(tmp_path, caplog):
    """A resume on a file stored at another step size named only a shape
    (the first difference), and runs.json a fingerprint's digest: the step
    the model now trained at changed unnoticed."""
    paths = make_synthetic_dataset(str(tmp_path / "synthetic"),
                                   nb_subjects=3, nb_streamlines=10, seed=0)
    files = {}
    for step_size in (1.0, 2.0):
        files[step_size] = str(tmp_path / f"step_{step_size}.hdf5")
        create_hdf5_dataset(
            os.path.join(paths.out_folder, "dwi_ml_ready"), files[step_size],
            paths.config, paths.splits["training"],
            paths.splits["validation"], paths.splits["testing"],
            step_size=step_size)
    saved = compute_hdf5_fingerprint(files[1.0])
    expected = ("its streamlines were stored with step_size 2.0, the "
                "training file's with step_size 1.0; a model without its own "
                "--step_size, --nb_points or --compress trains on them as "
                "stored; first difference: subjects/")
    with pytest.raises(DwiMLUserError) as raised:
        resume_cli.check_same_hdf5(
            {"hdf5_file": files[2.0], "fingerprint": saved}, "exp", False)
    assert expected in str(raised.value)
    with caplog.at_level("WARNING"):
        resume_cli.check_same_hdf5(
            {"hdf5_file": files[2.0], "fingerprint": saved}, "exp", True)
    assert expected in caplog.text
    found = compute_hdf5_fingerprint(files[2.0])
    changes = changed_values({"dataset": {"fingerprint": saved}},
                             {"dataset": {"fingerprint": found}})
    assert changes["dataset.fingerprint.creation.step_size"] == {
        "old": 1.0, "new": 2.0}
    assert changes["dataset.fingerprint"]["old"].startswith("sha256:")
