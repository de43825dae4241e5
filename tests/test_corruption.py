"""Corrupt or truncated files are named, never misdiagnosed (issue 11, s. 3-4).

Experiments: ``checkpoint/`` and ``best_model/`` hold a sha256 manifest
checked before loading; without it (old experiments), torch and JSON
readers still give one line naming the file. HDF5 files: volumes and
per-streamline datasets carry HDF5's fletcher32 checksum, streamline points
a CRC-32 per chunk, checked eagerly and lazily.
"""
import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from bad_input_data import TRAIN_OPTIONS, copy_experiment, make_error_test_data
from error_checks import (
    assert_user_error,
    tree_snapshot,
    truncate,
    write_random_bytes,
)

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_hdf5_print_architecture import main as print_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.resume_training_from_checkpoint import main as resume_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.dataset.row_ranges import find_raw_chunks
from dwi_ml.data.hdf5.file_check import hdf5_read_errors
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.manifest import (
    MANIFEST_FILE,
    file_sha256,
    verify_manifest,
    write_manifest,
)
from dwi_ml.io_utils.safe_load import load_torch_file


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_error_test_data(tmp_path_factory.mktemp("corruption"))


# ------------------------------------------------------------- manifests --

def test_saved_folders_have_a_manifest_of_every_file(data):
    for folder in ("checkpoint", "best_model"):
        path = os.path.join(data["experiment"], folder)
        with open(os.path.join(path, MANIFEST_FILE)) as f:
            entries = dict(reversed(line.split()) for line in f)
        files = sorted(os.path.relpath(os.path.join(root, name), path)
                       for root, _, names in os.walk(path) for name in names
                       if name != MANIFEST_FILE)
        assert sorted(entries) == files
        assert "model/model_state.pt" in entries or folder == "best_model"
        for name, digest in entries.items():
            assert file_sha256(os.path.join(path, name)) == digest
        assert verify_manifest(path) is True


def test_manifest_names_the_changed_or_missing_file(tmp_path):
    folder = tmp_path / "saved"
    (folder / "model").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "model" / "b.bin").write_bytes(b"\x00" * 100)
    write_manifest(str(folder))
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    assert verify_manifest(str(folder)) is True
    write_random_bytes(str(folder / "model" / "b.bin"), nb_bytes=4)
    with pytest.raises(DwiMLUserError, match="b.bin' is corrupt: its sha256"):
        verify_manifest(str(folder))
    # Only the entries asked for are checked.
    assert verify_manifest(str(folder), ["a.txt"]) is True
    (folder / "a.txt").unlink()
    with pytest.raises(DwiMLUserError, match="a.txt'.*missing"):
        verify_manifest(str(folder), ["a.txt"])
    (folder / MANIFEST_FILE).write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DwiMLUserError, match="MANIFEST.sha256.*corrupt"):
        verify_manifest(str(folder))
    (folder / MANIFEST_FILE).unlink()
    assert verify_manifest(str(folder)) is False  # old folders: no check


# -------------------------------------------------------- experiment files --

def _resume(root):
    return [root, "exp", "--new_max_epochs", "2"]


def test_random_bytes_in_the_checkpoint_are_named_not_a_learning_rate(
        data, tmp_path, capsys):
    experiment = copy_experiment(data, tmp_path)
    state = os.path.join(experiment, "checkpoint", "checkpoint_state.pt")
    write_random_bytes(state)
    message = assert_user_error(resume_main, _resume(tmp_path), capsys,
                                tmp_path, state, "is corrupt: its sha256",
                                MANIFEST_FILE)
    assert "learning rate" not in message and "non-finite" not in message


def test_a_damaged_best_model_is_named_on_resume(data, tmp_path, capsys):
    # The resume went on without a word, and a run with no better epoch
    # ended "saved" with the damaged best model.
    experiment = copy_experiment(data, tmp_path)
    state = os.path.join(experiment, "best_model", "model_state.pt")
    truncate(state)
    resume_main(_resume(str(tmp_path)))
    warning = capsys.readouterr().err
    assert (f"'{state}'" in warning and "the run goes on, and replaces it at "
            "its next best epoch only." in warning)


def _empty(path):
    open(path, "wb").close()


# Without a manifest, random bytes inside tensor data can go unseen (torch
# does not check the zip's CRCs): that is what manifests are for. A
# truncated or empty file is still named.
@pytest.mark.parametrize("damage", [truncate, _empty])
def test_damaged_checkpoint_without_manifest_names_the_file(
        data, tmp_path, capsys, damage):
    experiment = copy_experiment(data, tmp_path)
    os.remove(os.path.join(experiment, "checkpoint", MANIFEST_FILE))
    state = os.path.join(experiment, "checkpoint", "checkpoint_state.pt")
    damage(state)
    assert_user_error(resume_main, _resume(tmp_path), capsys, tmp_path,
                      f"checkpoint state '{state}'",
                      "truncated or corrupt")


@pytest.mark.parametrize("damage", [truncate, write_random_bytes])
def test_damaged_experiment_parameters_name_the_file(data, tmp_path, capsys,
                                                      damage):
    experiment = copy_experiment(data, tmp_path)
    path = os.path.join(experiment, "parameters.json")
    damage(path)
    message = assert_user_error(resume_main, _resume(tmp_path), capsys,
                                tmp_path, f"experiment parameters '{path}'")
    assert "JSON" in message or "corrupt" in message


@pytest.mark.parametrize("folder, file_name, script", [
    ("best_model", "model_state.pt", "evaluate"),
    ("best_model", "parameters.json", "track"),
    ("checkpoint", "model/model_state.pt", "evaluate_latest"),
    ("checkpoint", "model/model_type.txt", "track_latest"),
])
def test_damaged_model_files_are_named_by_the_manifest(
        data, tmp_path, capsys, folder, file_name, script):
    experiment = copy_experiment(data, tmp_path)
    path = os.path.join(experiment, folder, *file_name.split("/"))
    write_random_bytes(path, nb_bytes=8)
    assert_user_error(*_model_command(data, experiment, tmp_path, script),
                      capsys, tmp_path, path, "is corrupt: its sha256")


def _model_command(data, experiment, tmp_path, script):
    latest = ["--use_latest_epoch"] if script.endswith("latest") else []
    if script.startswith("evaluate"):
        return evaluate_main, [experiment, data["data"], *latest]
    return track_main, [experiment, data["data"], data["subject"], "input",
                        tmp_path / "out.trk", "--tracking_mask_group",
                        "wm_mask", *latest]


@pytest.mark.parametrize("file_name, damage, expected", [
    ("model_state.pt", truncate, "truncated or corrupt"),
    ("model_state.pt", _empty, "truncated or corrupt"),
    ("parameters.json", truncate, "expected valid JSON"),
    ("parameters.json", write_random_bytes, "model parameters"),
])
def test_damaged_old_model_without_manifest_names_the_file(
        data, tmp_path, capsys, file_name, damage, expected):
    experiment = copy_experiment(data, tmp_path)
    os.remove(os.path.join(experiment, "best_model", MANIFEST_FILE))
    path = os.path.join(experiment, "best_model", file_name)
    damage(path)
    assert_user_error(*_model_command(data, experiment, tmp_path, "track"),
                      capsys, tmp_path, path, expected)


class _Payload:
    """Pickles as a call that would create a marker file if ever loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("script", ["evaluate", "track"])
def test_model_file_with_pickled_code_is_refused_and_not_run(
        data, tmp_path, capsys, script):
    experiment = copy_experiment(data, tmp_path)
    best = os.path.join(experiment, "best_model")
    path = os.path.join(best, "model_state.pt")
    marker = tmp_path.parent / f"pwned_{script}"
    torch.save({"weight": _Payload(str(marker))}, path)
    write_manifest(best)  # whoever planted it also fixed the manifest
    assert_user_error(*_model_command(data, experiment, tmp_path, script),
                      capsys, tmp_path, path, "found pickled code",
                      "not a dwi_ml file and was not loaded")
    assert not marker.exists()


def test_safe_torch_load_refuses_pickled_code(tmp_path):
    path = str(tmp_path / "state.pt")
    marker = tmp_path / "pwned"
    torch.save([_Payload(str(marker))], path)
    with pytest.raises(DwiMLUserError) as error:
        load_torch_file(path, "model weights")
    assert "\n" not in str(error.value) and "pickled code" in str(error.value)
    assert not marker.exists()


# ------------------------------------------------------------- HDF5 files --

def _copy(path, tmp_path):
    copy = str(tmp_path / os.path.basename(path))
    shutil.copy(path, copy)
    return copy


def _damage_chunk(path, key, chunk=0):
    """Random bytes inside one stored chunk (or contiguous data) of ``key``."""
    with h5py.File(path, "r") as hdf:
        dataset = hdf[key]
        if dataset.chunks is None:
            offset, size = dataset.id.get_offset(), dataset.id.get_storage_size()
        else:
            info = dataset.id.get_chunk_info(chunk)
            offset, size = info.byte_offset, info.size
    write_random_bytes(path, offset + size // 2, nb_bytes=min(16, size // 2))


def test_created_files_are_checksummed_and_lazy_reads_stay_raw(data):
    subject = data["subject"]
    with h5py.File(data["data"], "r") as hdf:
        for key in ("input/data", "wm_mask/data", "streamlines/offsets",
                    "streamlines/lengths", "streamlines/euclidean_lengths",
                    "streamlines/data_crc32"):
            assert hdf[f"{subject}/{key}"].fletcher32, key
        points = hdf[f"{subject}/streamlines/data"]
        assert not points.fletcher32 and points.compression is None
        # Lazy streamline reads keep their os.pread path.
        assert find_raw_chunks(points) is not None


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("group, key", [("input", "input/data"),
                                        ("streamlines", "streamlines/data"),
                                        ("streamlines", "streamlines/lengths")])
def test_corrupt_hdf5_data_is_named_eager_and_lazy(data, tmp_path, lazy,
                                                   group, key):
    path = _copy(data["data"], tmp_path)
    subject = data["subject"]
    _damage_chunk(path, f"{subject}/{key}")
    dataset = MultiSubjectDataset(path, lazy=lazy)
    expected = f"HDF5 file '{path}', subject '{subject}', group '{group}'"
    with pytest.raises(DwiMLUserError) as error:
        dataset.load_data()
        subject_data = dataset.validation_set.get_subject(0)
        if group == "input":
            subject_data.mri_data_list[0].as_tensor()
        else:
            subject_data.sft_data_list[0].get_streamlines()
    message = str(error.value)
    assert "\n" not in message and expected in message
    assert "corrupt" in message
    dataset.close()


def test_training_on_corrupt_hdf5_data_is_one_line(data, tmp_path, capsys):
    path = _copy(data["data"], tmp_path)
    with h5py.File(path, "r") as hdf:
        training_subject = sorted(hdf.attrs["training_subjs"])[0]
    _damage_chunk(path, f"{training_subject}/streamlines/data")
    assert_user_error(train_main, [tmp_path, "exp", path, "input",
                                   "streamlines", *TRAIN_OPTIONS],
                      capsys, tmp_path, path, f"subject '{training_subject}'",
                      "group 'streamlines'", "CRC-32")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("script", ["train", "print", "evaluate", "resume"])
def test_truncated_hdf5_is_named(data, tmp_path, capsys, script):
    path = _copy(data["data"], tmp_path)
    truncate(path, 0.5)
    copy_experiment(data, tmp_path)
    commands = {
        "train": (train_main, [tmp_path, "new", path, "input", "streamlines",
                               *TRAIN_OPTIONS]),
        "print": (print_main, [path]),
        "evaluate": (evaluate_main, [tmp_path / "exp", path]),
        "resume": (resume_main, [*_resume(tmp_path), "--hdf5_file", path]),
    }
    main, argv = commands[script]
    assert_user_error(main, argv, capsys, tmp_path, path,
                      "truncated or corrupt")


def test_reference_files_without_checksums_still_load(tmp_path):
    from reference_hdf5 import make_example_subject, write_reference_hdf5

    rng = np.random.default_rng(3)
    path = str(tmp_path / "reference.hdf5")
    write_reference_hdf5(path, {"s1": make_example_subject(rng)},
                         training_subjs=["s1"])
    before = tree_snapshot(str(tmp_path))
    for lazy in (False, True):
        dataset = MultiSubjectDataset(path, lazy=lazy)
        dataset.load_data()
        sft = dataset.training_set.get_subject(0).sft_data_list[0]
        assert len(sft.get_streamlines([0, 3])) == 2
        dataset.close()
    assert tree_snapshot(str(tmp_path)) == before


def test_params_file_left_as_is_after_refused_resume(data, tmp_path, capsys):
    experiment = copy_experiment(data, tmp_path)
    with open(os.path.join(experiment, "parameters.json")) as f:
        before = json.load(f)
    state = os.path.join(experiment, "checkpoint", "checkpoint_state.pt")
    truncate(state)
    assert_user_error(resume_main, _resume(tmp_path), capsys, tmp_path, state)
    with open(os.path.join(experiment, "parameters.json")) as f:
        assert json.load(f) == before


def test_corrupt_lazy_data_read_in_a_worker_is_one_line(data, tmp_path,
                                                        capsys):
    # Lazy reads happen in the DataLoader worker, which re-raises with its
    # traceback as the message: the script still prints one line. (The
    # experiment started before the read: its folder stays, to resume.)
    path = _copy(data["data"], tmp_path)
    with h5py.File(path, "r") as hdf:
        training_subject = sorted(hdf.attrs["training_subjs"])[0]
    _damage_chunk(path, f"{training_subject}/streamlines/data")
    with pytest.raises(SystemExit) as raised:
        train_main([str(tmp_path), "exp", path, "input", "streamlines",
                    *TRAIN_OPTIONS, "--lazy", "--nb_workers", "1"])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert f"subject '{training_subject}', group 'streamlines'" in err
    assert "CRC-32" in err


def _read_everything(path, lazy):
    dataset = MultiSubjectDataset(path, lazy=lazy)
    try:
        dataset.load_data()
        for subset in (dataset.training_set, dataset.validation_set,
                       dataset.testing_set):
            for index in range(subset.nb_subjects):
                subject = subset.get_subject(index)
                for volume in subject.mri_data_list:
                    volume.as_tensor()
                for streamlines in subject.sft_data_list:
                    streamlines.get_streamlines()
    finally:
        dataset.close()


def test_random_bytes_anywhere_in_the_hdf5_give_a_user_error(data, tmp_path):
    # Metadata or data, eager or lazy: a one-line user error, never another
    # exception. Bytes landing in unused space (the free entries of HDF5's
    # chunk index nodes, e.g.) change nothing that is read, and go unseen.
    size = os.path.getsize(data["data"])
    nb_detected = 0
    offsets = np.linspace(0, size - 64, 16).astype(int).tolist()
    for index, offset in enumerate(offsets):
        path = str(tmp_path / f"damaged_{index}.hdf5")
        shutil.copy(data["data"], path)
        write_random_bytes(path, offset, nb_bytes=32, seed=index)
        for lazy in (False, True):
            try:
                _read_everything(path, lazy)
            except DwiMLUserError as error:
                assert "\n" not in str(error) and path in str(error)
                nb_detected += 1
    assert nb_detected >= len(offsets)


def test_a_stale_nfs_handle_is_named_not_called_corrupt():
    """NFS answers ESTALE to a read of a file removed on another host (no
    test machine can: the OS's error is raised here)."""
    stale = OSError(errno.ESTALE, os.strerror(errno.ESTALE))
    with pytest.raises(DwiMLUserError) as refused:
        with hdf5_read_errors("/data/d.hdf5", "s1/streamlines/data"):
            raise stale
    message = str(refused.value)
    assert message.startswith("HDF5 file '/data/d.hdf5': it was removed or "
                              "replaced from another host")
    assert "Stale file handle" in message and "corrupt" not in message
