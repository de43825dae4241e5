"""Bad inputs: one line naming the file or argument, status 2, nothing lost.

Issue 11, section 3: each case checks the exit status, the message and
what it names, that there is no traceback, and that the files of the
working folder are the same before and after (nothing left behind).
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from bad_input_data import TRAIN_OPTIONS, copy_experiment, make_error_test_data
from error_checks import assert_user_error, truncate, write_random_bytes
from hdf5_test_data import (
    CONFIG,
    random_streamlines,
    save_streamlines,
    write_dataset,
    write_subject_lists,
)
from reference_hdf5 import make_example_subject, write_reference_hdf5

from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_hdf5_print_architecture import main as print_main
from dwi_ml.cli.dwiml_make_synthetic_dataset import main as synthetic_main
from dwi_ml.cli.dwiml_run_demo import main as demo_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import build_parser, collect_params
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.resume_training_from_checkpoint import main as resume_main
from dwi_ml.cli.visualize_logs import main as visualize_main
from dwi_ml.data.hdf5.file_check import check_dwiml_hdf5
from dwi_ml.data.hdf5.fingerprint import (
    compute_hdf5_fingerprint,
    first_fingerprint_difference,
)
from dwi_ml.data.hdf5.layout import decode_str


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_error_test_data(tmp_path_factory.mktemp("bad_inputs"))


def _train_argv(data, hdf5_file, *extra):
    return [data["experiments"], "new", hdf5_file, "input", "streamlines",
            *TRAIN_OPTIONS, *extra]


# ------------------------------------------------------ no training subject --

def test_training_refuses_a_file_without_training_subjects(data, capsys):
    assert_user_error(train_main, _train_argv(data, data["no_training"]),
                      capsys, data["folder"], data["no_training"],
                      "expected at least one training subject, found none")
    assert not os.path.exists(os.path.join(data["experiments"], "new"))


def test_resume_refuses_a_file_without_training_subjects(data, capsys,
                                                         tmp_path):
    copy_experiment(data, tmp_path)
    assert_user_error(resume_main, [tmp_path, "exp", "--new_max_epochs", "2",
                                    "--hdf5_file", data["no_training"],
                                    "--accept_different_hdf5"],
                      capsys, tmp_path, data["no_training"],
                      "at least one training subject")


# ---------------------------------------------------------- integer options --

@pytest.mark.parametrize("extra, expected", [
    (["--batch_size_training", "2.5"],
     ["--batch_size_training", "integer number of streamlines", "2.5"]),
    (["--batch_size_validation", "7.25"],
     ["--batch_size_validation", "integer", "7.25"]),
    (["--batch_size_training", "nan"], ["--batch_size_training", "finite"]),
    (["--max_epochs", "2.5"], ["--max_epochs", "invalid int value: '2.5'"]),
    (["--rnn_layer_sizes", "8", "0"], ["--rnn_layer_sizes", ">= 1", "0"]),
    (["--nb_cpu_threads", "0"], ["--nb_cpu_threads", ">= 1", "0"]),
    (["--cache_size", "-1"], ["--cache_size", ">= 0", "-1"]),
    (["--lr_step_size", "0"], ["--lr_step_size", ">= 1"]),
    (["--nb_workers", "-2"], ["--nb_workers", ">= 0"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    # torch.manual_seed's overflow, a traceback.
    (["--seed", str(2 ** 64)], ["--seed", "< 2 ** 64"]),
])
def test_train_refuses_bad_integer_options(data, capsys, extra, expected):
    assert_user_error(train_main, _train_argv(data, data["data"], *extra),
                      capsys, data["folder"], *expected)
    assert not os.path.exists(os.path.join(data["experiments"], "new"))


def test_a_zero_batch_size_is_shown_as_given(data, capsys):
    """Parsed as a float (sizes in mm may be fractional), 0 was shown as
    0.0."""
    message = assert_user_error(
        train_main, _train_argv(data, data["data"], "--batch_size_training",
                                "0"), capsys, data["folder"])
    assert message == ("argument '--batch_size_training': expected a finite, "
                       "positive integer number of streamlines, got 0.")


@pytest.mark.parametrize("extra, expected", [
    (["--learning_rate", "-1"], ["learning_rate", "> 0", "-1.0"]),
    (["--weight_decay", "-1"], ["weight_decay", ">= 0", "-1.0"]),
    (["--clip_grad", "0"], ["clip_grad", "> 0", "0.0"]),
    (["--patience_delta", "-0.5"], ["patience_delta", ">= 0", "-0.5"]),
    # torch raised a ValueError (a traceback) for these two ...
    (["--optimizer", "SGD", "--momentum", "-1"], ["momentum", ">= 0", "-1.0"]),
    (["--lr_scheduler", "plateau", "--lr_gamma", "2"],
     ["lr_gamma", "(0, 1)", "'plateau'", "2.0"]),
    # ... and trained with a negative learning rate after lr_step_size
    # epochs for this one.
    (["--lr_scheduler", "step", "--lr_gamma", "-1"], ["lr_gamma", "> 0"]),
])
def test_train_refuses_bad_trainer_options_before_creating_the_experiment(
        data, capsys, extra, expected):
    """Checked when the trainer was built, after the experiment folder was
    made: the folder stayed, and the corrected command was refused."""
    assert_user_error(train_main, _train_argv(data, data["data"], *extra),
                      capsys, data["folder"], *expected)
    assert not os.path.exists(os.path.join(data["experiments"], "new"))


def test_train_refuses_f_with_resume_if_exists(data, capsys, tmp_path):
    """With a checkpoint, --resume_if_exists resumed and -f was ignored."""
    copy_experiment(data, tmp_path)
    assert_user_error(train_main, [tmp_path, "exp", data["data"], "input",
                                   "streamlines", *TRAIN_OPTIONS, "-f",
                                   "--resume_if_exists"],
                      capsys, tmp_path, "-f/--overwrite and --resume_if_exists",
                      "found both")


def test_batch_sizes_in_mm_may_be_fractional(data):
    args = build_parser().parse_args(_train_argv(
        data, data["data"], "--batch_size_units", "length_mm",
        "--batch_size_training", "250.5"))
    assert collect_params(args)["sampler"]["batch_size_training"] == 250.5
    args = build_parser().parse_args(_train_argv(data, data["data"]))
    sampler = collect_params(args)["sampler"]
    assert sampler["batch_size_training"] == 30
    assert isinstance(sampler["batch_size_training"], int)


@pytest.mark.parametrize("extra, expected", [
    ([], 1.0), (["--clip_grad", "none"], None), (["--clip_grad", "None"], None),
    (["--clip_grad", "0.5"], 0.5)])
def test_gradients_are_clipped_at_1_unless_told(data, extra, expected):
    """The default clips (docs/training.md); 'none' turns it off."""
    args = build_parser().parse_args(_train_argv(data, data["data"], *extra))
    assert collect_params(args)["trainer"]["clip_grad"] == expected


def test_train_refuses_a_clip_grad_that_is_no_number(data, capsys):
    assert_user_error(train_main, _train_argv(data, data["data"],
                                              "--clip_grad", "off"),
                      capsys, data["folder"], "--clip_grad",
                      "a number or 'none'", "'off'")
    assert not os.path.exists(os.path.join(data["experiments"], "new"))


def _other_script_cases():
    return [
        ("resume", ["--new_max_epochs", "2.5"],
         ["--new_max_epochs", "invalid int value"]),
        ("resume", ["--nb_cpu_threads", "0"], ["--nb_cpu_threads", ">= 1"]),
        ("resume", ["--new_patience", "0"], ["--new_patience", ">= 1"]),
        ("evaluate", ["--batch_size", "2.5"], ["--batch_size", "invalid int"]),
        ("evaluate", ["--batch_size", "0"], ["--batch_size", "0"]),
        ("track", ["--npv", "1.5"], ["--npv", "invalid int value: '1.5'"]),
        ("track", ["--seed", "-3"], ["--seed", ">= 0", "-3"]),
        ("synthetic", ["--nb_subjects", "2.5"], ["--nb_subjects", "invalid"]),
        ("create", ["--nb_points", "2.5"], ["--nb_points", "invalid int"]),
        ("demo", ["--epochs", "4", "2"], ["--epochs", "TOTAL > FIRST"]),
        ("demo", ["--nb_streamlines", "0"], ["--nb_streamlines", ">= 3"]),
        ("visualize", ["--smooth", "1.5"], ["--smooth", "invalid int"]),
    ]


@pytest.mark.parametrize("script, extra, expected", _other_script_cases())
def test_every_script_refuses_bad_integer_options(data, capsys, script, extra,
                                                  expected):
    folder = data["folder"]
    synthetic = os.path.join(folder, "synthetic")
    commands = {
        "resume": (resume_main, [data["experiments"], "exp"]),
        "evaluate": (evaluate_main, [data["experiment"], data["data"]]),
        "track": (track_main, [data["experiment"], data["data"],
                               data["subject"], "input",
                               os.path.join(folder, "out.trk"),
                               "--tracking_mask_group", "wm_mask"]),
        "synthetic": (synthetic_main, [os.path.join(folder, "new_synth")]),
        "create": (create_main, [os.path.join(synthetic, "dwi_ml_ready"),
                                 os.path.join(folder, "new.hdf5"),
                                 os.path.join(synthetic, "config.json"),
                                 *(os.path.join(synthetic, f"{s}_subjs.txt")
                                   for s in ("training", "validation",
                                             "testing"))]),
        "demo": (demo_main, [os.path.join(folder, "demo")]),
        "visualize": (visualize_main, [data["experiment"]]),
    }
    main, argv = commands[script]
    assert_user_error(main, [*argv, *extra], capsys, folder, *expected)


# ------------------------------------------- a file for a folder, or reverse --

def test_a_folder_given_for_a_file_and_the_reverse_are_named(data, capsys):
    """The messages said 'does not exist' of a path that exists."""
    folder = data["folder"]
    synthetic = os.path.join(folder, "synthetic")
    ready = os.path.join(synthetic, "dwi_ml_ready")
    config = os.path.join(synthetic, "config.json")
    lists = [os.path.join(synthetic, f"{s}_subjs.txt")
             for s in ("training", "validation", "testing")]
    out = os.path.join(folder, "new.hdf5")
    for argv, expected in [
            ([config, out, config, *lists],
             f"dwi_ml_ready folder '{config}' is a file; expected a folder."),
            ([ready, out, ready, *lists],
             f"config '{ready}' is a folder; expected a file."),
            ([ready, out, config, ready, *lists[1:]],
             f"subject list '{ready}' is a folder; expected a file.")]:
        assert_user_error(create_main, argv, capsys, folder, expected)
    assert_user_error(print_main, [synthetic], capsys, folder,
                      f"HDF5 file '{synthetic}' is a folder; expected a file.")


# ---------------------------------------------------- resume, other dataset --

def test_resume_refuses_another_hdf5_and_names_the_difference(data, capsys,
                                                              tmp_path):
    copy_experiment(data, tmp_path)
    message = assert_user_error(
        resume_main, [tmp_path, "exp", "--new_max_epochs", "2",
                      "--hdf5_file", data["other"]],
        capsys, tmp_path, data["other"], "is not the one experiment",
        "first difference: subjects/", "--accept_different_hdf5")
    # --step_size 2.0 gave fewer points: a shape of the streamline group.
    assert "/streamlines/datasets/" in message and "shape" in message


def test_resume_of_moved_data_names_hdf5_file(data, tmp_path, capsys):
    """It said only "HDF5 file '...' does not exist"."""
    experiment = copy_experiment(data, tmp_path)
    path = os.path.join(experiment, "parameters.json")
    with open(path) as f:
        params = json.load(f)
    moved = str(tmp_path / "moved" / "data.hdf5")
    params["dataset"]["hdf5_file"] = moved
    with open(path, "w") as f:
        json.dump(params, f)
    assert_user_error(resume_main, [tmp_path, "exp", "--new_max_epochs", "2"],
                      capsys, tmp_path, f"HDF5 file '{moved}'", "does not exist",
                      "if it moved, give its new path with --hdf5_file")
    assert_user_error(resume_main, [tmp_path, "exp", "--new_max_epochs", "2",
                                    "--hdf5_file", moved], capsys, tmp_path,
                      f"--hdf5_file '{moved}' does not exist.")


def test_resume_accepts_another_hdf5_when_asked(data, tmp_path, capsys):
    experiment = copy_experiment(data, tmp_path)
    resume_main([str(tmp_path), "exp", "--new_max_epochs", "2",
                 "--hdf5_file", data["other"], "--accept_different_hdf5",
                 "-v", "WARNING"])
    assert "Resuming on a different HDF5 file" in capsys.readouterr().err
    with open(os.path.join(experiment, "parameters.json")) as f:
        params = json.load(f)
    assert params["dataset"]["hdf5_file"] == os.path.abspath(data["other"])
    # The new file's fingerprint is now the experiment's.
    assert params["dataset"]["fingerprint"]["creation"]["step_size"] == 2.0
    assert len(np.load(os.path.join(experiment, "logs",
                                    "train_loss.npy"))) == 2


def test_old_experiment_without_fingerprint_resumes_with_a_warning(
        data, tmp_path, capsys):
    experiment = copy_experiment(data, tmp_path)
    path = os.path.join(experiment, "parameters.json")
    with open(path) as f:
        params = json.load(f)
    del params["dataset"]["fingerprint"]
    with open(path, "w") as f:
        json.dump(params, f)
    resume_main([str(tmp_path), "exp", "--new_max_epochs", "2",
                 "-v", "WARNING"])
    assert ("has no fingerprint of its training HDF5 file"
            in capsys.readouterr().err)
    assert len(np.load(os.path.join(experiment, "logs",
                                    "train_loss.npy"))) == 2


def test_fingerprint_describes_the_file_without_reading_data(data):
    fingerprint = compute_hdf5_fingerprint(data["data"])
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    subject = fingerprint["subjects"][data["subject"]]
    assert subject["input"]["attrs"]["nb_features"] == 45
    assert subject["input"]["datasets"]["data"]["dtype"] == "float32"
    assert subject["streamlines"]["datasets"]["lengths"]["shape"] == [45]
    assert fingerprint["splits"]["validation"] == [data["subject"]]
    saved = json.loads(json.dumps(fingerprint))
    assert first_fingerprint_difference(saved, fingerprint) is None
    other = compute_hdf5_fingerprint(data["other"])
    difference = first_fingerprint_difference(fingerprint, other)
    assert difference.startswith("subjects/")


# -------------------------------------------------- not a dwi_ml HDF5 file --

@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    other_tool = str(folder / "other_tool.hdf5")
    with h5py.File(other_tool, "w") as hdf:
        hdf.attrs["creator"] = "another tool"
        hdf.create_group("input").create_dataset("data", data=np.zeros(3))
    no_subjects = str(folder / "no_subjects.hdf5")
    write_reference_hdf5(no_subjects, {})
    return {"other_tool": (other_tool, "lacks the dwi_ml layout: expected "
                           "root attrs"),
            "no_subjects": (no_subjects, "its split attrs list no subject")}


@pytest.mark.parametrize("kind", ["other_tool", "no_subjects"])
@pytest.mark.parametrize("script", ["train", "evaluate", "track", "print",
                                    "resume"])
def test_every_script_says_a_file_is_not_a_dwi_ml_hdf5(data, foreign_files,
                                                        capsys, tmp_path,
                                                        script, kind):
    path, why = foreign_files[kind]
    copy_experiment(data, tmp_path)
    commands = {
        "train": (train_main, _train_argv(data, path)),
        "evaluate": (evaluate_main, [tmp_path / "exp", path]),
        "track": (track_main, [tmp_path / "exp", path, data["subject"],
                               "input", tmp_path / "out.trk",
                               "--tracking_mask_group", "wm_mask"]),
        "print": (print_main, [path]),
        "resume": (resume_main, [tmp_path, "exp", "--new_max_epochs", "2",
                                 "--hdf5_file", path]),
    }
    main, argv = commands[script]
    assert_user_error(main, argv, capsys, tmp_path.parent, path,
                      "is not a dwi_ml HDF5 file", why)


def test_reference_layout_files_are_still_dwi_ml_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "reference.hdf5")
    write_reference_hdf5(path, {"s1": make_example_subject(rng),
                                "s2": make_example_subject(rng)},
                         training_subjs=["s1"], validation_subjs=["s2"])
    assert check_dwiml_hdf5(path) == {"training": ["s1"],
                                      "validation": ["s2"], "testing": []}
    print_main([path])
    assert "training (1): s1" in capsys.readouterr().out


# ------------------------------------------- truncated files at creation --

SUBJECTS = ("sub-01", "sub-02", "sub-03")
ALL_TRACTOGRAMS = {**CONFIG, "streamlines": {
    "type": "streamlines", "files": ["tractograms/*.trk",
                                     "tractograms/bundle_3.tck",
                                     "tractograms/bundle_4.trx"]}}


@pytest.fixture(scope="module")
def creation_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("creation_inputs") / "dwi_ml_ready"
    write_dataset(str(root), SUBJECTS)
    return str(root)


def _nan_streamlines(path):
    streamlines = random_streamlines(np.random.default_rng(1), 3)
    streamlines[1][2] = np.nan
    save_streamlines(path, streamlines)


def _single_point_streamlines(path):
    streamlines = random_streamlines(np.random.default_rng(1), 3)
    streamlines[1] = streamlines[1][:1]
    save_streamlines(path, streamlines,
                     dps={"weight": np.ones((3, 1), np.float32)})


def _resaved_volume(convert):
    """Damage: save the volume again with its data made by ``convert``."""
    def damage(path):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(convert(np.asarray(image.dataobj)),
                                 image.affine), path)
    return damage


@pytest.mark.parametrize("file_name, damage, config, expected", [
    # Written, then refused by every reader; the real part kept silently.
    ("dwi/fa.nii.gz", _resaved_volume(lambda data: np.zeros(
        (*data.shape[:3], 0), np.float32)), CONFIG,
     ["expected at least one voxel and one feature, found shape"]),
    ("dwi/fa.nii.gz", _resaved_volume(lambda data: data.astype(
        np.complex64)), CONFIG, ["expected real values, found complex64"]),
    # Written as is (even with --step_size), then refused by training.
    ("tractograms/bundle_1.trk", _single_point_streamlines, CONFIG,
     ["1 of 3 streamlines have a single point, or all their points equal "
      "(expected at least 2 distinct); use "
      "--remove_invalid to drop them."]),
    ("dwi/peaks.nii.gz", truncate, CONFIG,
     ["its header reads but its data does not", "truncated or corrupt"]),
    ("dwi/fa.nii.gz", write_random_bytes, CONFIG,
     ["its data does not", "truncated or corrupt"]),
    ("masks/wm.nii.gz", truncate, CONFIG, ["truncated or corrupt"]),
    ("tractograms/bundle_2.trk", truncate, CONFIG,
     ["the file is truncated or corrupt"]),
    ("tractograms/bundle_3.tck", truncate, ALL_TRACTOGRAMS,
     ["the file is truncated or corrupt"]),
    ("tractograms/bundle_4.trx", truncate, ALL_TRACTOGRAMS,
     ["the file is truncated or corrupt"]),
    ("tractograms/bundle_1.trk", _nan_streamlines, CONFIG,
     ["NaN or Inf coordinate"]),
])
def test_creation_checks_every_file_before_writing(creation_inputs, tmp_path,
                                                   capsys, file_name, damage,
                                                   config, expected):
    root = str(tmp_path / "dwi_ml_ready")
    shutil.copytree(creation_inputs, root)
    # The last subject is damaged: nothing may be written for the others.
    damaged = os.path.join(root, "sub-03", file_name)
    damage(damaged)
    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    lists = write_subject_lists(str(tmp_path), SUBJECTS[:2], SUBJECTS[2:])
    out = tmp_path / "out.hdf5"
    group = "streamlines" if "tractograms" in file_name else (
        "wm_mask" if "masks" in file_name else "input")
    assert_user_error(create_main, [root, out, config_path, *lists], capsys,
                      tmp_path, damaged, "subject 'sub-03'", f"group '{group}'",
                      *expected)
    assert not out.exists()


@pytest.mark.parametrize("damaged, expected", [
    ("config", ["config '", "expected valid JSON", "truncated or corrupt"]),
    ("list", ["subject list '", "binary bytes"]),
])
def test_creation_names_a_corrupt_config_or_subject_list(
        creation_inputs, tmp_path, capsys, damaged, expected):
    config_path = str(tmp_path / "config.json")
    with open(config_path, "w") as f:
        json.dump(CONFIG, f)
    lists = write_subject_lists(str(tmp_path), SUBJECTS[:2], SUBJECTS[2:])
    if damaged == "config":
        path = config_path
        truncate(path, 0.5)
    else:
        path = lists[0]
        with open(path, "wb") as f:
            f.write(b"\x81\xfe\x00\xff" * 8)
    out = tmp_path / "out.hdf5"
    assert_user_error(create_main, [creation_inputs, out, config_path,
                                    *lists], capsys, tmp_path, path, *expected)
    assert not out.exists()


def test_creation_reads_files_with_a_byte_order_mark_pipes_and_dev_null(
        creation_inputs, tmp_path, capsys):
    # Before: a UTF-8 byte-order mark became part of the first subject ID
    # ("has no folder '.../\ufeffsub-01'"), UTF-16 (PowerShell's '>') was
    # "binary bytes", and /dev/null or <(...) "does not exist".
    config_path = tmp_path / "config.json"
    config_path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CONFIG).encode())
    training = tmp_path / "training.txt"
    training.write_bytes(b"\xef\xbb\xbfsub-01\r\nsub-02\r\n")
    validation = tmp_path / "validation.txt"
    validation.write_bytes("sub-03\r\n".encode("utf-16"))
    read_end, write_end = os.pipe()
    os.close(write_end)
    out = tmp_path / "out.hdf5"
    create_main([creation_inputs, str(out), str(config_path), str(training),
                 str(validation), f"/dev/fd/{read_end}"])
    os.close(read_end)
    # A device that never ends (it was read until memory ran out).
    message = assert_user_error(
        create_main, [creation_inputs, tmp_path / "o.hdf5", config_path,
                      training, validation, "/dev/zero"], capsys, tmp_path)
    assert message == ("subject list '/dev/zero': expected a file or a pipe, "
                       "found a device or socket.")
    with h5py.File(out, "r") as hdf:
        assert sorted(hdf.keys()) == list(SUBJECTS)
        assert [list(map(decode_str, hdf.attrs[split])) for split in (
            "training_subjs", "validation_subjs", "testing_subjs")] == [
                ["sub-01", "sub-02"], ["sub-03"], []]


def test_sizes_beyond_memory_are_one_line_not_a_traceback(tmp_path, capsys):
    """A --shape far too large ended in numpy's MemoryError traceback."""
    out = tmp_path / "huge"
    with pytest.raises(SystemExit) as stop:
        synthetic_main([str(out), "--shape", "1000000", "1000000", "1000000"])
    assert stop.value.code == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "error: out of memory (Unable to allocate" in message
    assert not out.exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--max_epochs", "6", "use --new_max_epochs"),
    ("--patience", "3", "use --new_patience"),
    ("--learning_rate", "0.001", "continue from the checkpoint"),
    ("--lr_scheduler=cosine", None, "continue from the checkpoint"),
    # The other options of training were "unrecognized arguments".
    ("--seed", "3", "the run continues with the value saved in its "
     "parameters.json; train a new experiment to change it."),
    ("--lazy", None, "the value saved in its parameters.json"),
    ("-f", None, "a resume never deletes its experiment; start it over with "
     "dwiml_train_model.py -f."),
])
def test_resume_says_which_training_options_it_takes_instead(
        tmp_path, capsys, option, value, expected):
    # They were 'unrecognized arguments': not what to give instead, nor
    # that the learning rate cannot change on resume.
    argv = [tmp_path, "exp", option] + ([value] if value else [])
    message = assert_user_error(resume_main, argv, capsys, tmp_path,
                                expected)
    assert message.startswith(f"argument {option.partition('=')[0]}: ")


# Holds an HDF5 file open for writing, as a process editing it would.
HDF5_WRITER = """
import sys, time
import h5py
with h5py.File(sys.argv[1], "a"):
    print("open", flush=True)
    time.sleep(120)
"""


def test_an_hdf5_file_locked_by_a_writer_is_named_as_locked(
        data, tmp_path, capsys):
    # It was called "truncated or corrupt" (HDF5's lock refused): a user
    # could rebuild a good file, or miss HDF5_USE_FILE_LOCKING on NFS.
    hdf5_file = tmp_path / "locked.hdf5"
    shutil.copy(data["data"], hdf5_file)
    writer = subprocess.Popen([sys.executable, "-c", HDF5_WRITER,
                               str(hdf5_file)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        message = assert_user_error(
            train_main, _train_argv(data, hdf5_file), capsys,
            data["experiments"])
    finally:
        writer.kill()
        writer.wait()
    assert message.startswith(
        f"HDF5 file '{hdf5_file}': cannot lock it to read it (")
    assert message.endswith(
        "): another process has it open for writing, or its file system "
        "(NFS, Lustre) has no file locks; for the latter, set "
        "HDF5_USE_FILE_LOCKING=FALSE in the environment.")
