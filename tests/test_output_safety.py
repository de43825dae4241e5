"""Nothing lost: -f replaces only dwi_ml's own outputs, refusals change nothing.

Every refusal is checked for its exit status (2), its one-line message and
what it names, and a snapshot of every file under the test's folder (the
user's sibling files included) before and after.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from file_tree import run_refused, snapshot, without_write_permission
from training_data import (
    TINY_TRAINING,
    make_trained_experiment,
)

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_make_synthetic_dataset import main as synthetic_main
from dwi_ml.cli.dwiml_run_demo import main as demo_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_logs_correlation import (
    main as correlation_main,
)
from dwi_ml.cli.visualize_logs import main as plot_main
from dwi_ml.io_utils import experiment_layout, output_folders
from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import (
    MARKER_FILE,
    check_experiment_name,
    check_output_folder,
    check_output_free,
    folder_kind,
    mark_output_folder,
    reset_output_folder,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_SYNTHETIC = ["--nb_subjects", "1", "--nb_streamlines", "10", "--shape",
                  "12", "12", "10", "--nb_directions", "6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny HDF5 and a trained experiment, outside each test's folder."""
    return make_trained_experiment(tmp_path_factory.mktemp("safety_data"))


def _train(experiments, name, data, *extra):
    return [str(experiments), name, data["hdf5"], "input", "streamlines",
            *TINY_TRAINING, *extra]


def _copy_experiment(data, destination):
    shutil.copytree(data["experiment"], destination)
    return str(destination)


def _user_files(root):
    """Experiments and files a user keeps side by side."""
    experiments = root / "exps"
    experiments.mkdir(parents=True)
    (experiments / "other_exp").mkdir()
    (experiments / "other_exp" / "parameters.json").write_text("{}")
    (experiments / "other_exp" / "logs").mkdir()
    (experiments / "notes.txt").write_text("my notes")
    (root / "sibling.txt").write_text("keep me")
    return experiments


# ----------------------------------------------------------------------
# The five QA cases, literally.
def test_qa_dot_name_does_not_empty_the_experiments_folder(tmp_path, data,
                                                           capsys):
    experiments = _user_files(tmp_path)
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, ".", data, "-f"),
                          capsys)
    assert "experiment_name" in message and "'.'" in message
    assert "plain folder name" in message
    assert snapshot(tmp_path) == before


def test_qa_dotdot_name_does_not_empty_the_parent(tmp_path, data, capsys):
    experiments = _user_files(tmp_path / "a")
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "..", data, "-f"),
                          capsys)
    assert "experiment_name" in message and "'..'" in message
    assert snapshot(tmp_path) == before


def test_qa_absolute_name_does_not_touch_that_folder(tmp_path, data, capsys):
    experiments = _user_files(tmp_path)
    elsewhere = tmp_path / "some" / "abs" / "folder"
    elsewhere.mkdir(parents=True)
    (elsewhere / "unrelated.txt").write_text("not yours")
    before = snapshot(tmp_path)
    message = run_refused(
        train_main, _train(experiments, str(elsewhere), data, "-f"), capsys)
    assert "experiment_name" in message and str(elsewhere) in message
    assert snapshot(tmp_path) == before


def test_qa_relative_name_cannot_escape_the_experiments_folder(tmp_path, data,
                                                               capsys):
    experiments = _user_files(tmp_path)
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "../escape", data),
                          capsys)
    assert "experiment_name" in message and "'../escape'" in message
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "escape").exists()


def test_qa_synthetic_dataset_never_replaces_the_current_folder(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dwi.nii.gz").write_bytes(b"\x00" * 10)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for folder in (".", str(tmp_path), "data/.."):
        message = run_refused(synthetic_main, [folder, "-f", *TINY_SYNTHETIC],
                              capsys)
        assert f"'{folder}' is the current folder" in message
    monkeypatch.chdir(tmp_path / "data")
    message = run_refused(synthetic_main, ["..", "-f", *TINY_SYNTHETIC],
                          capsys)
    assert "'..' is a parent of the current folder" in message
    assert snapshot(tmp_path) == before


def test_a_leading_tilde_means_the_home_folder(tmp_path, monkeypatch,
                                              capsys):
    """The shell leaves '~' alone in --opt=~/x and in quotes: the script
    expands it, so it never makes a folder named '~' here, and '~' with -f
    is the home folder, which is refused."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    synthetic_main(["~/syn", *TINY_SYNTHETIC])
    assert (home / "syn" / "config.json").is_file()
    assert not (tmp_path / "~").exists()
    before = snapshot(home)
    message = run_refused(synthetic_main, ["~", "-f", *TINY_SYNTHETIC],
                          capsys)
    assert f"'{home}' is your home folder" in message
    assert snapshot(home) == before


def test_qa_case_as_a_real_command_prints_one_line(tmp_path, data):
    experiments = _user_files(tmp_path)
    before = snapshot(tmp_path)
    process = subprocess.run(
        [sys.executable, os.path.join(HERE, "..", "scripts_python",
                                      "dwiml_train_model.py"),
         *_train(experiments, ".", data, "-f")],
        capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.startswith("dwiml_train_model.py: error: ")
    assert len(process.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# Experiment names, everywhere they are taken.
@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "x/"])
def test_experiment_name_is_one_plain_component(name):
    with pytest.raises(DwiMLUserError, match="experiment_name: expected a "
                                             "plain folder name"):
        check_experiment_name(name)


def test_empty_name_is_refused_by_train_and_resume(tmp_path, data, capsys):
    experiments = _user_files(tmp_path)
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "", data, "-f"),
                          capsys)
    assert "experiment_name" in message and "''" in message
    message = run_refused(resume_cli.main, [str(experiments), ".."], capsys)
    assert "experiment_name" in message and "'..'" in message
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# Markers: -f replaces what dwi_ml wrote, and only that.
def test_train_f_replaces_a_marked_experiment(tmp_path, data):
    experiments = _user_files(tmp_path)
    old = _copy_experiment(data, experiments / "exp")
    # What dwi_ml's scripts write into an experiment by default goes too.
    evaluate_main([old, data["hdf5"], "--subset", "validation"])
    plot_main([old])
    correlation_main([old, "train_loss", "valid_loss"])
    assert sorted(os.listdir(old)) == sorted(
        [".dwi_ml_output.json", ".lock", "best_model", "checkpoint", "logs",
         "parameters.json", "runs.json", "evaluation_validation_best.json",
         "logs_plot.png", "logs_correlation_train_loss_valid_loss.png"])
    assert output_folders.foreign_entries(old, "experiment") == []
    train_main(_train(experiments, "exp", data, "-f"))
    assert not os.path.exists(os.path.join(old, "logs_plot.png"))
    assert not os.path.exists(
        os.path.join(old, "logs_correlation_train_loss_valid_loss.png"))
    assert not os.path.exists(
        os.path.join(old, "evaluation_validation_best.json"))
    assert folder_kind(old) == "experiment"
    assert os.path.isdir(os.path.join(old, "checkpoint"))
    # The user's other files are untouched.
    assert (tmp_path / "sibling.txt").read_text() == "keep me"
    assert (experiments / "notes.txt").read_text() == "my notes"
    assert (experiments / "other_exp" / "parameters.json").is_file()


def test_train_reuses_an_experiment_that_holds_only_its_marker(
        tmp_path, data):
    """A run that failed before writing anything (an error at its first
    batch) left the marker and the lock; the same command then asked for
    -f though there was nothing to replace."""
    experiments = tmp_path / "experiments"
    folder = experiments / "exp"
    folder.mkdir(parents=True)
    mark_output_folder(str(folder), "experiment")
    (folder / ".lock").write_text("")
    train_main(_train(experiments, "exp", data))
    assert (folder / "checkpoint").is_dir()
    assert len(np.load(folder / "logs" / "train_loss.npy")) == 1
    # One output more, and -f is needed again.
    with pytest.raises(SystemExit) as error:
        train_main(_train(experiments, "exp", data))
    assert error.value.code == 2


@pytest.mark.parametrize("overwrite", [[], ["-f"]])
def test_train_refuses_a_folder_without_marker(tmp_path, data, capsys,
                                               overwrite):
    experiments = _user_files(tmp_path)
    (experiments / "exp").mkdir()
    (experiments / "exp" / "results.csv").write_text("1,2,3")
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "exp", data,
                                             *overwrite), capsys)
    assert str(experiments / "exp") in message
    assert "is not empty and is not a dwi_ml experiment" in message
    assert "with or without -f" in message
    assert snapshot(tmp_path) == before


def test_train_refuses_another_kind_of_dwi_ml_output(tmp_path, data, capsys):
    experiments = _user_files(tmp_path)
    (experiments / "exp").mkdir()
    mark_output_folder(str(experiments / "exp"), "synthetic_dataset")
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "exp", data, "-f"),
                          capsys)
    assert "holds a dwi_ml synthetic dataset, expected a dwi_ml experiment" \
        in message
    assert snapshot(tmp_path) == before


def test_train_without_f_names_resume_and_changes_nothing(tmp_path, data,
                                                          capsys):
    experiments = _user_files(tmp_path)
    _copy_experiment(data, experiments / "exp")
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "exp", data),
                          capsys)
    assert f"experiment '{experiments / 'exp'}' already exists" in message
    assert "-f" in message and "resume_training_from_checkpoint.py" in message
    assert snapshot(tmp_path) == before


def test_train_uses_an_empty_existing_folder(tmp_path, data):
    experiments = _user_files(tmp_path)
    (experiments / "exp").mkdir()
    train_main(_train(experiments, "exp", data))
    assert folder_kind(str(experiments / "exp")) == "experiment"
    marker = json.loads((experiments / "exp" / MARKER_FILE).read_text())
    assert marker["kind"] == "experiment" and marker["dwi_ml_version"]
    assert marker["created"]


def test_old_experiment_without_marker_is_recognised(tmp_path, data, capsys):
    experiments = _user_files(tmp_path)
    old = _copy_experiment(data, experiments / "old")
    os.remove(os.path.join(old, MARKER_FILE))
    os.remove(os.path.join(old, ".lock"))
    assert folder_kind(old) == "experiment"
    # Resume continues it (and marks it); train -f replaces it.
    message = run_refused(resume_cli.main, [str(experiments), "old"], capsys)
    assert "already finished its 1 epoch: " in message
    # Refused before it starts anything: the folder is left as it was.
    assert not os.path.exists(os.path.join(old, MARKER_FILE))
    resume_cli.main([str(experiments), "old", "--new_max_epochs", "2",
                     "-v", "WARNING"])
    assert os.path.isfile(os.path.join(old, MARKER_FILE))
    os.remove(os.path.join(old, MARKER_FILE))
    train_main(_train(experiments, "old", data, "-f"))
    assert os.path.isfile(os.path.join(old, MARKER_FILE))
    # Only parameters.json (or only logs) is not enough.
    (experiments / "params_only").mkdir()
    (experiments / "params_only" / "parameters.json").write_text("{}")
    assert folder_kind(str(experiments / "params_only")) is None
    assert folder_kind(str(experiments / "other_exp")) == "experiment"


def test_old_layout_names_match_the_trainers():
    assert output_folders.PARAMETERS_FILE == "parameters.json"
    assert set(output_folders.EXPERIMENT_FOLDERS) == {
        experiment_layout.CHECKPOINT_DIR, experiment_layout.BEST_MODEL_DIR,
        experiment_layout.LOGS_DIR}


def test_resume_refuses_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    experiments = _user_files(tmp_path)
    (experiments / "photos").mkdir()
    (experiments / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    before = snapshot(tmp_path)
    message = run_refused(resume_cli.main, [str(experiments), "photos"],
                          capsys)
    assert "photos" in message and "not a dwi_ml experiment" in message
    assert snapshot(tmp_path) == before


def test_synthetic_f_replaces_only_a_marked_dataset(tmp_path, capsys):
    out = tmp_path / "synthetic"
    synthetic_main([str(out), *TINY_SYNTHETIC])
    assert folder_kind(str(out)) == "synthetic_dataset"
    assert output_folders.foreign_entries(str(out), "synthetic_dataset") \
        == []
    message = run_refused(synthetic_main, [str(out), *TINY_SYNTHETIC], capsys)
    assert f"'{out}' already exists; use -f" in message
    synthetic_main([str(out), "-f", *TINY_SYNTHETIC])
    assert folder_kind(str(out)) == "synthetic_dataset"

    os.remove(out / MARKER_FILE)
    (tmp_path / "sibling.txt").write_text("keep me")
    before = snapshot(tmp_path)
    for overwrite in ([], ["-f"]):
        message = run_refused(synthetic_main,
                              [str(out), *overwrite, *TINY_SYNTHETIC], capsys)
        assert f"'{out}' is not empty and is not a dwi_ml synthetic " \
               "dataset" in message
    assert snapshot(tmp_path) == before


def test_qa_synthetic_f_keeps_what_the_pipeline_wrote_inside_it(
        tmp_path, data, capsys):
    """The README's pipeline writes data.hdf5 and experiments/ inside the
    synthetic dataset's folder: regenerating it with -f must not delete
    them (it did, with every trained model)."""
    out = tmp_path / "example"
    synthetic_main([str(out), *TINY_SYNTHETIC])
    shutil.copy(data["hdf5"], out / "data.hdf5")
    (out / "experiments").mkdir()
    _copy_experiment(data, out / "experiments" / "l2t")
    (out / "my_notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    message = run_refused(synthetic_main, [str(out), "-f", *TINY_SYNTHETIC],
                          capsys)
    assert (f"'{out}' is a dwi_ml synthetic dataset but also holds "
            "'data.hdf5', 'experiments', 'my_notes.txt'") in message
    assert "-f removes only what dwi_ml wrote" in message
    assert snapshot(tmp_path) == before


def test_train_f_refuses_a_users_file_in_logs(tmp_path, data, capsys):
    """logs/ holds the monitors' .npy files, each written on its own: a
    user's plot saved there was removed by -f with the experiment."""
    folder = tmp_path / "out"
    (folder / "logs").mkdir(parents=True)
    mark_output_folder(str(folder), "experiment")
    np.save(folder / "logs" / "valid_loss.npy", np.ones(2))
    (folder / "logs" / "my_plot.png").write_text("mine")
    assert output_folders.foreign_entries(str(folder), "experiment") == [
        "logs/my_plot.png"]
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(tmp_path, "out", data, "-f"),
                          capsys)
    assert ("but also holds 'logs/my_plot.png', which is not part of one: "
            "-f removes only what dwi_ml wrote; move it elsewhere") in message
    assert snapshot(tmp_path) == before


def test_train_f_refuses_a_users_npy_in_logs(tmp_path, data, capsys):
    """A user's own .npy in logs/ matched logs/*.npy and -f deleted it: the
    trainer records its logs' names in the marker, the others are foreign."""
    experiments = _user_files(tmp_path)
    old = _copy_experiment(data, experiments / "exp")
    with open(os.path.join(old, MARKER_FILE)) as f:
        written = json.load(f)["written"]
    assert written == sorted(f"logs/{name}" for name in
                             os.listdir(os.path.join(old, "logs")))
    assert "logs/train_loss.npy" in written
    np.save(os.path.join(old, "logs", "my_own_metric.npy"), np.arange(3))
    before = snapshot(tmp_path)
    message = run_refused(train_main, _train(experiments, "exp", data, "-f"),
                          capsys)
    assert ("but also holds 'logs/my_own_metric.npy', which is not part of "
            "one: -f removes only what dwi_ml wrote") in message
    assert snapshot(tmp_path) == before
    # Without it, -f replaces the experiment, and the new one records its
    # own logs.
    os.remove(os.path.join(old, "logs", "my_own_metric.npy"))
    train_main(_train(experiments, "exp", data, "-f"))
    assert output_folders.foreign_entries(old, "experiment") == []


def test_experiments_without_recorded_logs_keep_the_logs_pattern(tmp_path):
    # Written before the logs were recorded: any .npy of logs/ is taken
    # for the trainer's, as before.
    folder = tmp_path / "exp"
    (folder / "logs").mkdir(parents=True)
    mark_output_folder(str(folder), "experiment")
    np.save(folder / "logs" / "train_loss.npy", np.ones(2))
    np.save(folder / "logs" / "other.npy", np.ones(2))
    assert output_folders.foreign_entries(str(folder), "experiment") == []
    output_folders.record_written_entries(str(folder),
                                          ["logs/train_loss.npy"])
    assert output_folders.foreign_entries(str(folder), "experiment") == [
        "logs/other.npy"]


@pytest.mark.parametrize("kind, own, script", [
    ("experiment", "logs", "train"), ("demo_output", "synthetic", "demo"),
    ("attention_views", "attention_layer0_head0.png", None)])
def test_f_refuses_a_marked_folder_holding_a_users_file(
        tmp_path, data, capsys, kind, own, script):
    folder = tmp_path / "out"
    folder.mkdir()
    mark_output_folder(str(folder), kind)
    (folder / own).mkdir()
    (folder / "tracked_by_me.trk").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(DwiMLUserError, match="but also holds "
                       "'tracked_by_me.trk'"):
        check_output_folder(str(folder), kind, overwrite=True)
    with pytest.raises(DwiMLUserError, match="tracked_by_me.trk"):
        output_folders.reset_output_folder(str(folder), kind)
    if script == "train":
        message = run_refused(train_main, _train(tmp_path, "out", data, "-f"),
                              capsys)
        assert "'tracked_by_me.trk'" in message
    elif script == "demo":
        message = run_refused(demo_main, [str(folder), "-f"], capsys)
        assert "'tracked_by_me.trk'" in message
    assert snapshot(tmp_path) == before


def test_demo_f_keeps_the_experiments_trained_next_to_the_demos(
        tmp_path, capsys):
    """The docs train experiments into demo_output/experiments (ddp_run,
    mlp, comet_run): rerunning the demo with -f deleted them."""
    out = tmp_path / "demo_output"
    (out / "experiments" / "demo").mkdir(parents=True)
    (out / "experiments" / "mlp" / "logs").mkdir(parents=True)
    (out / "experiments" / ".demo.x1y2z3w4.tmp").mkdir()   # a killed write
    mark_output_folder(str(out), "demo_output")
    assert output_folders.foreign_entries(str(out), "demo_output") == [
        "experiments/mlp"]
    before = snapshot(tmp_path)
    message = run_refused(demo_main, [str(out), "-f"], capsys)
    assert "but also holds 'experiments/mlp'" in message
    assert snapshot(tmp_path) == before
    shutil.rmtree(out / "experiments" / "mlp")
    assert output_folders.foreign_entries(str(out), "demo_output") == []
    shutil.rmtree(out / "experiments")
    (out / "experiments").write_text("a file where the demo's folder goes")
    assert output_folders.foreign_entries(str(out), "demo_output") == [
        "experiments"]


def test_demo_outputs_are_all_its_own(tmp_path, capsys):
    out = tmp_path / "demo"
    demo_main([str(out), "--epochs", "1", "2", "--nb_streamlines", "30",
               "-v", "WARNING"])
    printed = capsys.readouterr().out
    assert "3. Training for 1 epoch\n" in printed   # not '1 epochs'
    assert sorted(os.listdir(out)) == [
        ".dwi_ml_output.json", "dataset.hdf5", "experiments", "logs_plot.png",
        "synthetic", "tracking_subj-02.trk", "tracking_subj-02.trk.json"]
    assert output_folders.foreign_entries(str(out), "demo_output") == []
    experiment = out / "experiments" / "demo"
    assert output_folders.foreign_entries(str(experiment), "experiment") == []
    # The user's files inside its folders, or named like its outputs: -f
    # deleted them all without a word.
    mine = ["experiments/demo/my_notes.txt", "logs_plot_mine.png",
            "synthetic/data.hdf5", "synthetic/dwi_ml_ready/my-subj",
            "synthetic/my_subjs.txt", "tracking_subj-03_handmade.trk"]
    for name in mine:
        (out / name).write_text("mine")
    assert output_folders.foreign_entries(str(out), "demo_output") == mine
    before = snapshot(tmp_path)
    message = run_refused(demo_main, [str(out), "-f"], capsys)
    assert ("but also holds 'experiments/demo/my_notes.txt', "
            "'logs_plot_mine.png', 'synthetic/data.hdf5', "
            "'synthetic/dwi_ml_ready/my-subj', 'synthetic/my_subjs.txt' and "
            "1 more, which are not part of one") in message
    assert snapshot(tmp_path) == before


def test_demo_f_removes_the_plots_and_evaluations_of_its_experiment(
        tmp_path, capsys):
    """A plot and an evaluation written into the demo's experiment, as the
    docs do, are the experiment's own: the demo's -f refused them as
    foreign, while the experiment's own -f removed them."""
    out = tmp_path / "demo"
    args = [str(out), "--epochs", "1", "2", "--nb_streamlines", "30",
            "-v", "WARNING"]
    demo_main(args)
    experiment = str(out / "experiments" / "demo")
    plot_main([experiment, "-v", "WARNING"])
    evaluate_main([experiment, str(out / "dataset.hdf5"), "-v", "WARNING"])
    added = ["logs_plot.png", "evaluation_testing_best.json"]
    for name in added:
        assert os.path.isfile(os.path.join(experiment, name))
    assert output_folders.foreign_entries(str(out), "demo_output") == []
    # The user's figure saved over the experiment's plot is theirs.
    with open(os.path.join(experiment, "logs_plot.png"), "ab") as f:
        f.write(b"my annotations")
    assert output_folders.foreign_entries(str(out), "demo_output") == [
        "experiments/demo/logs_plot.png"]
    before = snapshot(tmp_path)
    message = run_refused(demo_main, [*args, "-f"], capsys)
    assert "but also holds 'experiments/demo/logs_plot.png'" in message
    assert snapshot(tmp_path) == before
    plot_main([experiment, "-f", "-v", "WARNING"])
    demo_main([*args, "-f"])
    for name in added:
        assert not os.path.exists(os.path.join(experiment, name))


def test_synthetic_f_refuses_a_users_subject_or_list_inside(tmp_path,
                                                           capsys):
    out = tmp_path / "syn"
    synthetic_main([str(out), *TINY_SYNTHETIC])
    (out / "dwi_ml_ready" / "my-real-subject").mkdir()
    (out / "dwi_ml_ready" / "my-real-subject" / "dwi.nii.gz").write_text("x")
    (out / "my_training_subjs.txt").write_text("my-real-subject")
    before = snapshot(tmp_path)
    message = run_refused(synthetic_main, [str(out), "-f", *TINY_SYNTHETIC],
                          capsys)
    assert ("holds 'dwi_ml_ready/my-real-subject', 'my_training_subjs.txt', "
            "which are not part of one") in message
    assert snapshot(tmp_path) == before
    # What it wrote alone is replaced.
    shutil.rmtree(out / "dwi_ml_ready" / "my-real-subject")
    os.remove(out / "my_training_subjs.txt")
    synthetic_main([str(out), "-f", *TINY_SYNTHETIC])


def test_synthetic_f_refuses_files_the_user_changed(tmp_path, capsys):
    """A group added to config.json and a subject to a list: -f replaced
    both (the marker named the files, not what they held)."""
    out = tmp_path / "syn"
    synthetic_main([str(out), *TINY_SYNTHETIC])
    config = json.loads((out / "config.json").read_text())
    config["my_fa"] = {"type": "volume", "files": ["fa.nii.gz"]}
    (out / "config.json").write_text(json.dumps(config))
    with open(out / "training_subjs.txt", "a") as f:
        f.write("my-subject\n")
    assert output_folders.changed_entries(str(out)) == [
        "config.json", "training_subjs.txt"]
    before = snapshot(tmp_path)
    message = run_refused(synthetic_main, [str(out), "-f", *TINY_SYNTHETIC],
                          capsys)
    assert message.endswith(
        f"output folder '{out}' is a dwi_ml synthetic dataset, but "
        "'config.json', 'training_subjs.txt' changed since dwi_ml wrote "
        "them: -f removes only what dwi_ml wrote; keep a copy elsewhere and "
        "remove the folder yourself, or give a new folder.")
    assert snapshot(tmp_path) == before
    # An edit that keeps the size is seen too (the content's hash).
    synthetic_main([str(tmp_path / "fresh"), *TINY_SYNTHETIC])
    shutil.copy(tmp_path / "fresh" / "training_subjs.txt",
                out / "training_subjs.txt")
    text = (tmp_path / "fresh" / "config.json").read_text()
    (out / "config.json").write_text(text.replace('"', "'", 1)
                                     if '"' in text else text + " ")
    assert output_folders.changed_entries(str(out)) == ["config.json"]
    # The demo's own synthetic dataset, inside its output: seen from there.
    demo = tmp_path / "demo"
    demo.mkdir()
    mark_output_folder(str(demo), "demo_output")
    shutil.copytree(out, demo / "synthetic")
    before = snapshot(tmp_path)
    message = run_refused(demo_main, [str(demo), "-f"], capsys)
    assert ("is a dwi_ml demo output, but 'synthetic/config.json' changed "
            "since dwi_ml wrote it") in message
    assert snapshot(tmp_path) == before
    # The same bytes again (an edit undone): replaced.
    for name in ("config.json", "training_subjs.txt"):
        shutil.copy(tmp_path / "fresh" / name, out / name)
    assert output_folders.changed_entries(str(out)) == []
    synthetic_main([str(out), "-f", *TINY_SYNTHETIC])


def _experiment_marked_before_outputs(tmp_path):
    """An experiment folder whose marker records no outputs (older)."""
    folder = tmp_path / "exp"
    folder.mkdir()
    mark_output_folder(str(folder), "experiment")
    marker = json.loads((folder / MARKER_FILE).read_text())
    del marker["outputs"]
    (folder / MARKER_FILE).write_text(json.dumps(marker))
    return folder


def test_experiment_patterns_are_the_scripts_names_only(tmp_path):
    """In an experiment marked before outputs were recorded: names the
    scripts write into it, not a user's look-alikes
    (evaluation_my_notes.json, logs_plot_for_paper.png were deleted)."""
    folder = _experiment_marked_before_outputs(tmp_path)
    for name in ("evaluation_testing_best.json", "logs_plot.png",
                 "logs_plot_2.png", "evaluation_my_notes.json",
                 "logs_plot_for_paper.png",
                 "logs_correlation_my_annotated_copy.png",
                 "logs_correlation_train_loss_valid_loss.png"):
        (folder / name).write_text("x")
    # A correlation plot is the script's when named after two of its logs.
    (folder / "logs").mkdir()
    for log in ("train_loss", "valid_loss"):
        np.save(folder / "logs" / f"{log}.npy", np.zeros(2))
    assert output_folders.foreign_entries(str(folder), "experiment") == [
        "evaluation_my_notes.json", "logs_correlation_my_annotated_copy.png",
        "logs_plot_for_paper.png"]


def test_f_removes_only_the_evaluations_and_plots_the_scripts_wrote(
        tmp_path, data, capsys):
    """A file of a script's name that the script did not write (a user's
    figure saved as logs_plot_7.png) was deleted by train -f; so was our
    plot once the user saved theirs over it."""
    experiments = tmp_path / "exps"
    experiments.mkdir()
    old = _copy_experiment(data, experiments / "exp")
    plot_main([old])
    evaluate_main([old, data["hdf5"], "--subset", "validation"])
    assert output_folders.foreign_entries(old, "experiment") == []
    for name in ("logs_plot_7.png", "evaluation_testing_best.json"):
        with open(os.path.join(old, name), "w") as f:
            f.write("mine")
    before = snapshot(experiments)
    message = run_refused(train_main, _train(experiments, "exp", data, "-f"),
                          capsys)
    assert "evaluation_testing_best.json" in message
    assert snapshot(experiments) == before
    for name in ("logs_plot_7.png", "evaluation_testing_best.json"):
        os.remove(os.path.join(old, name))
    # The user's figure over ours: theirs now.
    with open(os.path.join(old, "logs_plot.png"), "ab") as f:
        f.write(b"my annotations")
    assert output_folders.foreign_entries(old, "experiment") == [
        "logs_plot.png"]
    # Written again by the script: ours again, and -f removes it.
    plot_main([old, "-f"])
    assert output_folders.foreign_entries(old, "experiment") == []
    train_main(_train(experiments, "exp", data, "-f"))
    assert not os.path.exists(os.path.join(old, "logs_plot.png"))
    assert not os.path.exists(
        os.path.join(old, "evaluation_validation_best.json"))


def _write_output(path, text):
    with atomic_output_file(str(path)) as tmp_path:
        with open(tmp_path, "w") as f:
            f.write(text)


def test_an_older_experiment_keeps_its_outputs_when_one_is_recorded(
        tmp_path):
    """Marked before outputs were recorded, its evaluation (its own by
    name) became foreign once a plot was recorded: -f refused it."""
    folder = _experiment_marked_before_outputs(tmp_path)
    (folder / "evaluation_testing_best.json").write_text("{}")
    _write_output(folder / "logs_plot.png", "plot")
    assert output_folders.foreign_entries(str(folder), "experiment") == []
    # Recorded now: changed, it is no longer the experiment's.
    (folder / "evaluation_testing_best.json").write_text("{} mine")
    assert output_folders.foreign_entries(str(folder), "experiment") == [
        "evaluation_testing_best.json"]


def test_a_large_recorded_plot_replaced_by_one_of_its_size_is_foreign(
        tmp_path):
    """Above 1 MiB a fingerprint was the size alone: a user's figure of the
    same size saved over ours counted as ours, and -f deleted it."""
    folder = tmp_path / "exp"
    folder.mkdir()
    mark_output_folder(str(folder), "experiment")
    size = 2 * 1024 * 1024
    _write_output(folder / "logs_plot.png", "a" * size)
    assert output_folders.foreign_entries(str(folder), "experiment") == []
    (folder / "logs_plot.png").write_text("b" * size)
    assert output_folders.foreign_entries(str(folder), "experiment") == [
        "logs_plot.png"]


def test_a_reset_stopped_midway_keeps_the_outputs_it_left(tmp_path,
                                                           monkeypatch):
    """-f marks the folder anew before emptying it: stopped then, the plot
    it had not removed yet was no longer recorded, and the next -f refused
    it."""
    folder = tmp_path / "exp"
    folder.mkdir()
    mark_output_folder(str(folder), "experiment")
    (folder / "checkpoint").mkdir()
    _write_output(folder / "logs_plot.png", "plot")

    def stopped(path, *args, **kwargs):
        raise KeyboardInterrupt
    # Stopped at its first removal, whichever entry it takes first.
    monkeypatch.setattr(output_folders.shutil, "rmtree", stopped)
    monkeypatch.setattr(output_folders.os, "remove", stopped)
    with pytest.raises(KeyboardInterrupt):
        reset_output_folder(str(folder), "experiment")
    monkeypatch.undo()
    assert (folder / "logs_plot.png").exists()
    assert output_folders.foreign_entries(str(folder), "experiment") == []
    reset_output_folder(str(folder), "experiment")
    assert sorted(os.listdir(folder)) == [MARKER_FILE]
    assert json.loads((folder / MARKER_FILE).read_text())["outputs"] == {}


def test_demo_refuses_a_users_folder_and_bad_epochs(tmp_path, capsys):
    users = tmp_path / "my_folder"
    users.mkdir()
    (users / "data.txt").write_text("mine")
    before = snapshot(tmp_path)
    message = run_refused(demo_main, [str(users), "-f"], capsys)
    assert f"'{users}' is not empty and is not a dwi_ml demo output" in message
    # The resume step needs TOTAL > FIRST: said before any work, naming the
    # demo's own option (not resume's --new_max_epochs).
    message = run_refused(demo_main, [str(tmp_path / "new"), "--epochs", "4",
                                      "4"], capsys)
    assert "--epochs: expected FIRST >= 1 and TOTAL > FIRST, got 4 4" \
        in message and "--new_max_epochs" not in message
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# Output files: -f replaces a file, never a folder; unwritable outputs are
# refused before any work.
def test_output_file_checks():
    with pytest.raises(DwiMLUserError, match="is a folder; expected a file"):
        check_output_free(".", True)
    with pytest.raises(DwiMLUserError, match="is a folder; expected a file"):
        check_output_free(os.path.expanduser("~"), True)


def test_parent_that_is_a_file_is_named_as_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for path in (tmp_path / "a_file" / "out.trk",
                 tmp_path / "a_file" / "sub" / "out.trk"):
        with pytest.raises(DwiMLUserError) as raised:
            check_output_free(str(path), False)
        message = str(raised.value)
        assert f"'{tmp_path / 'a_file'}' is a file, expected a folder" \
            in message and "does not exist" not in message
    with pytest.raises(DwiMLUserError, match="does not exist"):
        check_output_free(str(tmp_path / "missing" / "out.trk"), False)
    # It said "output folder folder '...' for '...' does not exist."
    with pytest.raises(DwiMLUserError) as raised:
        check_output_folder(str(tmp_path / "missing" / "out"),
                            "synthetic_dataset", False, what="output folder")
    assert str(raised.value) == (
        f"output folder '{tmp_path / 'missing' / 'out'}': folder "
        f"'{tmp_path / 'missing'}' does not exist.")
    with pytest.raises(DwiMLUserError, match="is a file, expected a folder"):
        check_output_folder(str(tmp_path / "a_file" / "out"), "experiment",
                            True)
    with pytest.raises(DwiMLUserError, match="is a file; expected a folder"):
        check_output_folder(str(tmp_path / "a_file"), "demo_output", True)


def test_unwritable_folder_is_refused(tmp_path):
    # In a process that file modes bind (root drops its capabilities).
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    checks = f"""
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import check_output_folder, check_output_free
for check, args in ((check_output_free, ({str(locked / "out.trk")!r}, False)),
                    (check_output_folder,
                     ({str(locked / "new")!r}, "experiment", False))):
    try:
        check(*args)
    except DwiMLUserError as error:
        print(error)
    else:
        print("accepted")
"""
    try:
        process = subprocess.run(
            [*without_write_permission(), sys.executable, "-c", checks],
            capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o700)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.strip().splitlines()
    assert len(lines) == 2, process.stdout
    assert all("is not writable" in line for line in lines), lines
    assert str(locked) in lines[0] and str(locked) in lines[1]
    assert sorted(os.listdir(locked)) == []


def test_track_refuses_bad_outputs_before_loading_anything(tmp_path, capsys):
    # Inputs that exist but cannot be read: the output is checked first.
    experiment = tmp_path / "exp"
    experiment.mkdir()
    hdf5_file = tmp_path / "fake.hdf5"
    hdf5_file.write_text("not hdf5")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "out.trk").mkdir()
    (tmp_path / "out.trk" / "inside.txt").write_text("keep")
    before = snapshot(tmp_path)
    base = [str(experiment), str(hdf5_file), "subj-01", "input"]
    cases = [
        (str(tmp_path / "out.trk"), "is a folder; expected a file name"),
        (str(tmp_path / "a_file" / "out.trk"), "is a file, expected a folder"),
        (str(tmp_path / "nope" / "out.trk"), "does not exist"),
    ]
    for out, expected in cases:
        message = run_refused(track_main, [*base, out, "--tracking_mask_group",
                                           "wm_mask", "-f"], capsys)
        assert expected in message
    assert snapshot(tmp_path) == before


def test_evaluate_refuses_bad_outputs_before_evaluating(tmp_path, data,
                                                        capsys):
    experiment = _copy_experiment(data, tmp_path / "exp")
    (tmp_path / "a_file").write_text("x")
    before = snapshot(tmp_path)
    for out, expected in ((tmp_path / "a_file" / "eval.json",
                           "is a file, expected a folder"),
                          (tmp_path / "exp", "is a folder")):
        message = run_refused(evaluate_main, [experiment, data["hdf5"],
                                              "--out", str(out), "-f"], capsys)
        assert expected in message and str(out) in message
    assert snapshot(tmp_path) == before


def test_plot_refuses_bad_outputs_before_plotting(tmp_path, data, capsys):
    experiment = _copy_experiment(data, tmp_path / "exp")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "values.csv").mkdir()
    before = snapshot(tmp_path)
    cases = [
        (["--out", str(tmp_path / "a_file" / "plot")],
         "is a file, expected a folder"),
        (["--save_to_csv", str(tmp_path / "values.csv")], "is a folder"),
    ]
    for options, expected in cases:
        message = run_refused(plot_main, [experiment, *options, "-f"], capsys)
        assert expected in message
    assert snapshot(tmp_path) == before


def test_hdf5_creation_never_replaces_a_folder(tmp_path, data, capsys):
    synthetic = data["folder"] / "synthetic"
    out = tmp_path / "out.hdf5"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    before = snapshot(tmp_path)
    message = run_refused(create_main, [
        str(synthetic / "dwi_ml_ready"), str(out), str(synthetic / "config.json"),
        *(str(synthetic / f"{split}_subjs.txt")
          for split in ("training", "validation", "testing")), "-f"], capsys)
    assert f"output '{out}' is a folder; expected a file name" in message
    assert snapshot(tmp_path) == before


def test_an_output_of_another_format_is_refused_even_with_f(tmp_path, data,
                                                             capsys):
    """`--out_json tracked.trk -f` replaced the input tractogram with JSON,
    and an HDF5 written over the config.json it was made from."""
    from scoring_data import hand_tracked, save_nifti, save_trk

    from dwi_ml.cli.dwiml_compute_connectivity_score import (
        main as connectivity_score_main,
    )
    from dwi_ml.cli.dwiml_score_tractogram import main as score_main

    nifti = save_nifti(tmp_path / "mask.nii.gz")
    tracked = save_trk(tmp_path / "tracked.trk", hand_tracked(), nifti)
    matrix = str(tmp_path / "matrix.npy")
    np.save(matrix, np.eye(3))
    synthetic = tmp_path / "synthetic"
    synthetic_main([str(synthetic), *TINY_SYNTHETIC])
    config = str(synthetic / "config.json")
    lists = [str(synthetic / f"{s}_subjs.txt")
             for s in ("training", "validation", "testing")]
    csv_input = tmp_path / "values.txt"
    csv_input.write_text("mine")
    before = snapshot(tmp_path)
    for main, argv, expected in [
            (score_main, [tracked, tracked, nifti, "--out_json", tracked],
             f"output '{tracked}' is also an input (in_tractogram); give "
             "another path."),
            (connectivity_score_main, [matrix, matrix, "--out_json", matrix],
             f"output '{matrix}' is also an input (predicted_matrix)"),
            (create_main, [str(synthetic / "dwi_ml_ready"), config, config,
                           *lists],
             f"output '{config}': expected one of the extensions .hdf5, "
             ".h5, found '.json'"),
            (evaluate_main, [data["experiment"], data["hdf5"], "--out",
                             str(tmp_path / "mask.nii.gz")],
             "expected the extension .json, found '.nii.gz'"),
            (plot_main, [data["experiment"], "--out", str(tmp_path / "p"),
                         "--save_to_csv", str(csv_input)],
             "expected the extension .csv, found '.txt'")]:
        assert expected in run_refused(main, [*argv, "-f"], capsys)
    assert snapshot(tmp_path) == before


def _record_many(folder, role, start):
    """Child process: once ``start`` is set, record plots in ``folder``'s
    marker as visualize_logs.py does, or log entries as a training run
    does."""
    start.wait()
    if role == "plots":
        for i in range(100):  # logs_plot_0.png to logs_plot_99.png
            _write_output(os.path.join(folder, f"logs_plot_{i}.png"), str(i))
    else:
        for i in range(300):
            output_folders.record_written_entries(
                folder, [f"logs/{role}_{i}.npy"])


def test_concurrent_marker_updates_lose_no_record(tmp_path):
    """A training run recording its logs and a plot recorded at the same
    moment each wrote back the marker they had read: one record was lost,
    and -f then refused that plot as not dwi_ml's."""
    import multiprocessing
    folder = tmp_path / "exp"
    folder.mkdir()
    output_folders.mark_output_folder(str(folder), "experiment")
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    roles = ("plots", "train", "valid")
    children = [context.Process(target=_record_many,
                                args=(str(folder), role, start))
                for role in roles]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    with open(folder / output_folders.MARKER_FILE) as f:
        marker = json.load(f)
    assert sorted(marker["outputs"]) == sorted(
        f"logs_plot_{i}.png" for i in range(100))
    assert sorted(marker["written"]) == sorted(
        f"logs/{role}_{i}.npy" for role in roles[1:] for i in range(300))
