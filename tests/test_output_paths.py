"""Nothing lost, by path: an output is never an input of the same script,
never inside what training rewrites, and never a link's target or a folder
named by a prefix.

Each refusal is checked for exit status 2, its one-line message, and a
snapshot of every file under the test's folder before and after.
"""
import os
import shutil

import pytest
from file_tree import run_refused, snapshot
from scoring_data import hand_tracked, save_nifti, save_trk
from training_data import TINY_TRAINING, make_trained_experiment

from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from dwi_ml.cli.dwiml_divide_volume_into_blocs import main as divide_main
from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.cli.dwiml_make_synthetic_dataset import main as synthetic_main
from dwi_ml.cli.dwiml_run_demo import main as demo_main
from dwi_ml.cli.dwiml_score_tractogram import main as score_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_input_importance import (
    main as importance_main,
)
from dwi_ml.cli.dwiml_visualize_loss import main as loss_main
from dwi_ml.cli.visualize_logs import main as plot_main
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import (
    check_output_free,
    mark_output_folder,
)
from dwi_ml.io_utils.script_args import check_inputs_exist

TINY_SYNTHETIC = ["--nb_subjects", "1", "--nb_streamlines", "10", "--shape",
                  "12", "12", "10", "--nb_directions", "6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny HDF5 and a trained experiment, outside each test's folder."""
    return make_trained_experiment(tmp_path_factory.mktemp("paths_data"))


def _error(main, argv, capsys):
    """The message of a refused run, after 'PROG: error: '."""
    return run_refused(main, argv, capsys).split(": error: ", 1)[1]


# ----------------------------------------------------------------------
# 1. An output that is also an input.
def test_divide_refuses_its_input_as_output_even_with_f(tmp_path, capsys):
    """The audit's case: `mask.nii.gz 2 2 2 mask.nii.gz -f` replaced the
    mask; a link to it, a hard link or another spelling did too."""
    mask = save_nifti(tmp_path / "mask.nii.gz")
    os.symlink(mask, tmp_path / "link.nii.gz")
    os.link(mask, tmp_path / "hard.nii.gz")
    before = snapshot(tmp_path)
    for out in (mask, str(tmp_path / "link.nii.gz"),
                str(tmp_path / "hard.nii.gz"),
                str(tmp_path / "x" / ".." / "mask.nii.gz")):
        os.makedirs(tmp_path / "x", exist_ok=True)
        for overwrite in ([], ["-f"]):
            message = _error(divide_main, [mask, "2", "2", "2", out,
                                           *overwrite], capsys)
            also = "" if out == mask else f" '{mask}'"
            assert message == (f"output '{out}' is also an input "
                               f"(IN_VOLUME{also}); give another path.")
        os.rmdir(tmp_path / "x")
    assert snapshot(tmp_path) == before


def test_extract_refuses_a_hard_link_to_the_hdf5_as_output(tmp_path, data,
                                                           capsys):
    hdf5_file = str(tmp_path / "data.hdf5")
    shutil.copyfile(data["hdf5"], hdf5_file)
    out = str(tmp_path / "input.nii.gz")
    os.link(hdf5_file, out)
    before = snapshot(tmp_path)
    message = _error(extract_main, [hdf5_file, "subj-01", "input", out, "-f"],
                     capsys)
    assert message == (f"output '{out}' is also an input (hdf5_file "
                       f"'{hdf5_file}'); give another path.")
    assert snapshot(tmp_path) == before


def test_score_refuses_an_out_json_linked_to_its_tractogram(tmp_path,
                                                            capsys):
    nifti = save_nifti(tmp_path / "mask.nii.gz")
    tracked = save_trk(tmp_path / "tracked.trk", hand_tracked(), nifti)
    os.symlink(tracked, tmp_path / "scores.json")
    out = str(tmp_path / "scores.json")
    before = snapshot(tmp_path)
    message = _error(score_main, [tracked, tracked, nifti, "--out_json", out,
                                  "-f"], capsys)
    assert message == (f"output '{out}' is also an input (in_tractogram "
                       f"'{tracked}'); give another path.")
    assert snapshot(tmp_path) == before


def test_visualize_loss_refuses_a_histogram_linked_to_the_hdf5(
        tmp_path, data, capsys):
    hdf5_file = str(tmp_path / "data.hdf5")
    shutil.copyfile(data["hdf5"], hdf5_file)
    histogram = str(tmp_path / "histogram.png")
    os.symlink(hdf5_file, histogram)
    before = snapshot(tmp_path)
    message = _error(loss_main, [data["experiment"], hdf5_file, "subj-01",
                                 str(tmp_path / "loss.trk"), "--out_histogram",
                                 histogram, "-f"], capsys)
    assert message == (f"--out_histogram '{histogram}' is also an input "
                       f"(HDF5 '{hdf5_file}'); give another path.")
    assert snapshot(tmp_path) == before


def test_train_refuses_f_over_its_pretrained_experiment(tmp_path, data,
                                                        capsys):
    experiments = tmp_path / "exps"
    shutil.copytree(data["experiment"], experiments / "exp")
    pretrained = str(experiments / "exp")
    before = snapshot(tmp_path)
    message = _error(train_main, [
        str(experiments), "exp", data["hdf5"], "input", "streamlines",
        "--pretrained", pretrained, "--max_epochs", "1", "-f"], capsys)
    assert message == (f"experiment '{pretrained}' is also an input "
                       "(--pretrained); give another path.")
    assert snapshot(tmp_path) == before


def test_library_calls_outside_a_script_record_nothing(tmp_path):
    """Only a script's run compares its inputs and outputs: a program that
    reads a file then writes it with dwi_ml's checks is its own judge."""
    path = str(tmp_path / "values.json")
    with open(path, "w") as f:
        f.write("{}")
    check_inputs_exist(path)
    check_output_free(path, overwrite=True)


def test_two_outputs_of_a_run_at_one_file_are_refused(tmp_path, data,
                                                      capsys):
    """--out_json a link to the figure: one output replaced the other."""
    (tmp_path / "fig.png").write_text("old figure")
    os.symlink(tmp_path / "fig.png", tmp_path / "values.json")
    before = snapshot(tmp_path)
    message = _error(importance_main, [
        data["experiment"], data["hdf5"], "subject", str(tmp_path / "fig.png"),
        "--out_json", str(tmp_path / "values.json"), "-f"], capsys)
    assert message == (
        f"--out_json '{tmp_path / 'values.json'}' is also the output "
        f"'{tmp_path / 'fig.png'}': one would replace the other; give each "
        "output its own path.")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# 2. Outputs in what training rewrites.
@pytest.mark.parametrize("folder", ["checkpoint", "best_model", "logs"])
def test_outputs_inside_experiment_folders_are_refused(tmp_path, data, capsys,
                                                       folder):
    """A resumed run swaps checkpoint/ (and best_model/, logs/) whole: a
    tractogram written there would be deleted silently."""
    experiment = tmp_path / "exp"
    shutil.copytree(data["experiment"], experiment)
    os.symlink(experiment / folder, tmp_path / "linked")
    before = snapshot(tmp_path)
    for out in (experiment / folder / "t.trk", tmp_path / "linked" / "t.trk"):
        for overwrite in ([], ["-f"]):
            message = _error(track_main, [
                str(experiment), data["hdf5"], "subj-01", "input", str(out),
                "--tracking_mask_group", "wm_mask", *overwrite], capsys)
            assert message == (
                f"output '{out}' is inside '{experiment / folder}', a folder "
                f"of experiment '{experiment}' that training rewrites (and "
                "removes what else it holds): give a path outside it.")
    assert snapshot(tmp_path) == before


def test_outputs_beside_those_folders_stay_allowed(tmp_path, data):
    experiment = tmp_path / "exp"
    shutil.copytree(data["experiment"], experiment)
    check_output_free(str(experiment / "evaluation_testing_best.json"), False)
    # A folder named logs/ outside any experiment is the user's own.
    (tmp_path / "logs").mkdir()
    check_output_free(str(tmp_path / "logs" / "t.trk"), False)


@pytest.mark.parametrize("name", ["parameters.json", "runs.json", ".lock",
                                  ".dwi_ml_output.json"])
@pytest.mark.parametrize("marked", [True, False])
def test_an_experiment_s_own_files_are_never_outputs(tmp_path, data, capsys,
                                                      name, marked):
    """`dwiml_score_tractogram.py ... --out_json exps/l2t/parameters.json -f`
    replaced the experiment's parameters by a score (exit 0): the
    experiment no longer evaluated, tracked or resumed. The same in an
    experiment written before markers (``marked`` False)."""
    experiment = tmp_path / "exp"
    shutil.copytree(data["experiment"], experiment)
    if not marked:
        os.remove(experiment / ".dwi_ml_output.json")
    mask = save_nifti(tmp_path / "mask.nii.gz")
    reference = save_trk(tmp_path / "ref.trk", hand_tracked(), mask)
    before = snapshot(tmp_path)
    out = experiment / name
    for overwrite in ([], ["-f"]):
        message = _error(score_main, [reference, reference, mask,
                                      "--out_json", str(out), *overwrite],
                         capsys)
        assert message == (
            f"output '{out}' is named like the marker by which dwi_ml "
            "recognises its folders: refused with or without -f; give "
            "another file name." if name == ".dwi_ml_output.json" else
            f"output '{out}' is a file of the dwi_ml experiment "
            f"'{experiment}', which dwi_ml wrote and reads back: refused "
            "with or without -f; give another file name.")
    assert snapshot(tmp_path) == before


def test_a_synthetic_dataset_s_config_is_never_an_output(tmp_path, capsys):
    synthetic_main([str(tmp_path / "syn"), *TINY_SYNTHETIC])
    config = tmp_path / "syn" / "config.json"
    before = snapshot(tmp_path)
    with pytest.raises(DwiMLUserError, match=(
            "is a file of the dwi_ml synthetic dataset .* refused with or "
            "without -f")):
        check_output_free(str(config), True, "--out_json")
    assert snapshot(tmp_path) == before
    # Another name in it, and an experiment's evaluation JSON, stay outputs.
    check_output_free(str(tmp_path / "syn" / "scores.json"), True)


# ----------------------------------------------------------------------
# 3. A prefix that names a folder.
@pytest.mark.parametrize("prefix", [".", "..", "vl/", "vl/.png", "~",
                                    "existing", ".png", "vl/.."])
def test_plot_refuses_a_folder_as_prefix(tmp_path, data, capsys, monkeypatch,
                                         prefix):
    """`--out .` wrote ./..png, `--out vl/` vl/.png, `--out ~` /root.png."""
    home = tmp_path / "home"
    work = home / "work"
    (work / "vl").mkdir(parents=True)
    (work / "existing").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    message = _error(plot_main, [data["experiment"], "--out", prefix, "-f"],
                     capsys)
    shown = str(home) if prefix == "~" else prefix
    assert message.startswith(
        "--out: expected a file name prefix (PREFIX.png is written), found "
        f"folder '{shown}'; give e.g. '")
    assert message.endswith("logs_plot'.")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# 4. A link to another output folder.
def test_train_f_refuses_an_experiment_that_is_a_link(tmp_path, data, capsys):
    """EXPS/NAME linking to another experiment: -f emptied the target."""
    experiments = tmp_path / "exps"
    experiments.mkdir()
    target = tmp_path / "precious"
    shutil.copytree(data["experiment"], target)
    os.symlink(target, experiments / "exp")
    link = str(experiments / "exp")
    before = snapshot(tmp_path)
    message = _error(train_main, [str(experiments), "exp", data["hdf5"],
                                  "input", "streamlines", *TINY_TRAINING,
                                  "-f"], capsys)
    assert message == (
        f"experiment '{link}' is a symbolic link to '{target}'; dwi_ml never "
        "writes into or replaces a link's target: give the real folder or "
        "another name.")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, own, main, options", [
    ("synthetic_dataset", "config.json", synthetic_main, TINY_SYNTHETIC),
    ("demo_output", "dataset.hdf5", demo_main, [])])
def test_f_refuses_other_output_folders_that_are_links(tmp_path, capsys, kind,
                                                       own, main, options):
    target = tmp_path / "target"
    target.mkdir()
    mark_output_folder(str(target), kind)
    (target / own).write_text("written by dwi_ml")
    link = tmp_path / "link"
    os.symlink(target, link)
    before = snapshot(tmp_path)
    for path in (str(link), str(link) + os.sep):
        message = _error(main, [path, *options, "-f"], capsys)
        assert message.startswith(
            f"output folder '{path}' is a symbolic link to '{target}'")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------
# 5. A folder where a file, or an experiment, is expected.
def test_an_existing_folder_as_output_file_is_named_a_folder(tmp_path, data,
                                                             capsys):
    """An existing folder OUT (no extension) was reported as "found
    'none'" instead of as a folder."""
    out = tmp_path / "OUT"
    out.mkdir()
    before = snapshot(tmp_path)
    message = _error(track_main, [
        data["experiment"], data["hdf5"], "subj-01", "input", str(out),
        "--tracking_mask_group", "wm_mask", "-f"], capsys)
    assert message == (f"output '{out}' is a folder; expected a .trk, .tck "
                       "or .trx file path.")
    message = _error(create_main, [str(tmp_path / "ready"), str(out),
                                   "config.json", "train.txt", "valid.txt",
                                   "test.txt", "-f"], capsys)
    assert message == (f"output '{out}' is a folder; expected a .hdf5 or "
                       ".h5 file path.")
    assert snapshot(tmp_path) == before


def test_a_folder_of_experiments_is_not_an_experiment(tmp_path, data,
                                                      capsys):
    """The experiments path given instead of an experiment: 'has no
    best_model/ folder', with no hint of what to give."""
    experiments = tmp_path / "exps"
    for name in ("b_run", "a_run", "c_run"):
        shutil.copytree(data["experiment"], experiments / name)
    out = tmp_path / "t.trk"
    before = snapshot(tmp_path)
    expected = (
        f"experiment '{experiments}' is not a dwi_ml experiment folder: "
        "expected parameters.json with best_model/ or checkpoint/, found no "
        f"parameters.json; it holds the experiments '{experiments / 'a_run'}'"
        f" and '{experiments / 'b_run'}' (and 1 more): give one of them.")
    assert _error(track_main, [
        str(experiments), data["hdf5"], "subj-01", "input", str(out),
        "--tracking_mask_group", "wm_mask"], capsys) == expected
    assert _error(evaluate_main, [str(experiments), data["hdf5"]],
                  capsys) == expected
    # A folder holding no experiment: no hint.
    assert _error(track_main, [
        str(tmp_path), data["hdf5"], "subj-01", "input", str(out),
        "--tracking_mask_group", "wm_mask"], capsys) == (
        f"experiment '{tmp_path}' is not a dwi_ml experiment folder: "
        "expected parameters.json with best_model/ or checkpoint/, found no "
        "parameters.json.")
    assert snapshot(tmp_path) == before
    # An experiment that lost its parameters.json: its best_model/ (which
    # holds one too) is not an experiment to give.
    broken = experiments / "a_run"
    os.remove(broken / "parameters.json")
    assert os.path.isfile(broken / "best_model" / "parameters.json")
    assert _error(evaluate_main, [str(broken), data["hdf5"]], capsys) == (
        f"experiment '{broken}' is not a dwi_ml experiment folder: "
        "expected parameters.json with best_model/ or checkpoint/, found no "
        "parameters.json.")
