"""A volume edited in place after creation is refused where it is read.

HDF5's fletcher32 is recomputed on every write, so ``data[...] = 1`` with
h5py leaves a file that reads as valid, and the experiment's fingerprint
(metadata only) is unchanged. Our writer stores the CRC-32 of each volume
group's data as the group's attr ``data_crc32``; eager loading checks it
on its read of every volume, lazy reading at the first read of each volume
per process. Files without the attr (the reference's, ours made before it)
load as before.
"""
import os
import shutil

import h5py
import numpy as np
import pytest
from bad_input_data import TRAIN_OPTIONS, make_error_test_data
from error_checks import assert_user_error
from reference_hdf5 import read_as_reference_reader

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.resume_training_from_checkpoint import main as resume_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.layout import VOLUME_CHECKSUM_ATTR, volume_checksum
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.tracking_io import load_subject_volumes

CHANGED = "changed since the file was created"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_error_test_data(tmp_path_factory.mktemp("volume_checksum"))


def _copy(path, folder):
    copy = str(folder / os.path.basename(path))
    shutil.copy(path, copy)
    return copy


def _training_subject(path):
    with h5py.File(path, "r") as hdf:
        return sorted(hdf.attrs["training_subjs"])[0]


def _edit_one_voxel(path, subject, group="input"):
    """Change one value in place, through h5py (fletcher32 follows)."""
    with h5py.File(path, "r+") as hdf:
        dataset = hdf[f"{subject}/{group}/data"]
        dataset[1, 2, 3, 0] = dataset[1, 2, 3, 0] + 1


def _drop_checksums(path):
    with h5py.File(path, "r+") as hdf:
        for subject in hdf.values():
            for group in subject.values():
                if VOLUME_CHECKSUM_ATTR in group.attrs:
                    del group.attrs[VOLUME_CHECKSUM_ATTR]


def _read_volumes(path, lazy):
    """Load the file and read every volume; return {key: array}."""
    dataset = MultiSubjectDataset(path, lazy=lazy)
    try:
        dataset.load_data()
        volumes = {}
        for subset in (dataset.training_set, dataset.validation_set,
                       dataset.testing_set):
            for index in range(subset.nb_subjects):
                subject = subset.get_subject(index)
                for name, volume in zip(subject.volume_groups,
                                        subject.mri_data_list):
                    volumes[f"{subject.subject_id}/{name}"] = \
                        volume.as_tensor().numpy().copy()
        return volumes
    finally:
        dataset.close()


def test_each_volume_group_stores_the_crc32_of_its_data(data):
    with h5py.File(data["data"], "r") as hdf:
        groups = [group for subject in hdf.values()
                  for group in subject.values()
                  if group.attrs["type"] == "volume"]
        assert {group.name.split("/")[-1] for group in groups} == \
            {"input", "wm_mask"}
        for group in groups:
            checksum = group.attrs[VOLUME_CHECKSUM_ATTR]
            assert checksum.dtype == np.uint32
            assert int(checksum) == volume_checksum(group["data"][()])
    # The reference's reader still reads the file (an attr it ignores).
    assert read_as_reference_reader(data["data"])


@pytest.mark.parametrize("lazy", [False, True])
def test_an_unedited_file_loads_as_stored(data, lazy):
    volumes = _read_volumes(data["data"], lazy)
    with h5py.File(data["data"], "r") as hdf:
        for key, volume in volumes.items():
            np.testing.assert_array_equal(volume, hdf[key + "/data"][()])


@pytest.mark.parametrize("lazy", [False, True])
def test_one_voxel_edited_in_place_is_refused_in_one_line(data, tmp_path,
                                                          lazy):
    path = _copy(data["data"], tmp_path)
    subject = data["subject"]
    _edit_one_voxel(path, subject)
    dataset = MultiSubjectDataset(path, lazy=lazy)
    with pytest.raises(DwiMLUserError) as refused:
        dataset.load_data()
        if lazy:  # metadata only: the volume is checked when read
            dataset.validation_set.get_subject(0).mri_data_list[0].as_tensor()
    dataset.close()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"HDF5 file '{path}', subject '{subject}', "
                              "group 'input': the volume data (dataset "
                              f"'{subject}/input/data') {CHANGED}")
    assert "CRC-32" in message


def test_tracking_refuses_an_edited_volume(data, tmp_path):
    path = _copy(data["data"], tmp_path)
    subject = data["subject"]
    _edit_one_voxel(path, subject, "wm_mask")
    assert set(load_subject_volumes(path, subject, "input")) == {"input"}
    with pytest.raises(DwiMLUserError, match=f"group 'wm_mask': .*{CHANGED}"):
        load_subject_volumes(path, subject, ["input", "wm_mask"])


def test_a_lazy_volume_is_checked_at_each_read_until_it_passes(data,
                                                               tmp_path):
    # Checked once per process once it passes; a refused read caches
    # nothing and is not remembered as checked: the next one refuses too.
    path = _copy(data["data"], tmp_path)
    subject = data["subject"]
    _edit_one_voxel(path, subject)
    dataset = MultiSubjectDataset(path, lazy=True)
    dataset.load_data()
    volume = dataset.validation_set.get_subject(0).mri_data_list[0]
    for _ in range(2):
        with pytest.raises(DwiMLUserError, match=CHANGED):
            volume.as_tensor()
    dataset.close()


@pytest.mark.parametrize("lazy", [False, True])
def test_files_without_the_attr_load_without_complaint(data, tmp_path, lazy,
                                                       caplog):
    # Ours made before the attr existed (the reference's files have none
    # either: test_corruption.py loads them): edits go unseen, as before.
    path = _copy(data["data"], tmp_path)
    _drop_checksums(path)
    _edit_one_voxel(path, data["subject"])
    volumes = _read_volumes(path, lazy)
    assert volumes[f"{data['subject']}/input"][1, 2, 3, 0] == pytest.approx(
        _read_volumes(data["data"], lazy)[f"{data['subject']}/input"][
            1, 2, 3, 0] + 1)
    assert not [r for r in caplog.records if r.levelname != "DEBUG"]


def test_resuming_after_an_edit_is_refused(data, tmp_path, capsys):
    # The fingerprint (metadata) is unchanged: the resume's load refuses.
    experiments = tmp_path / "experiments"
    shutil.copytree(data["experiments"], experiments)
    path = _copy(data["data"], tmp_path)
    subject = _training_subject(path)
    _edit_one_voxel(path, subject)
    assert_user_error(
        resume_main, [experiments, "exp", "--new_max_epochs", "2",
                      "--hdf5_file", path],
        capsys, tmp_path, f"HDF5 file '{path}', subject '{subject}', "
        f"group 'input': the volume data", CHANGED)


def test_lazy_training_and_evaluation_after_an_edit_are_refused(
        data, tmp_path, capsys):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    train_main([str(experiments), "lazy", data["data"], "input",
                "streamlines", *TRAIN_OPTIONS, "--lazy"])
    # An edited copy, given with --hdf5_file: its fingerprint is the
    # original's (and the run above may still hold the original open).
    (tmp_path / "edited").mkdir()
    path = _copy(data["data"], tmp_path / "edited")
    subject = _training_subject(path)
    _edit_one_voxel(path, subject)
    with h5py.File(path, "r") as hdf:
        validation = sorted(hdf.attrs["validation_subjs"])[0]
    _edit_one_voxel(path, validation)
    expected = (f"HDF5 file '{path}', subject '{subject}', group 'input'",
                CHANGED)
    # The resume fails at its first batch: the run's files may have moved
    # on (as for any error mid-run), so only the message is checked here.
    with pytest.raises(SystemExit) as raised:
        resume_main([str(experiments), "lazy", "--new_max_epochs", "2",
                     "--hdf5_file", path])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert all(text in err for text in expected)
    # The validation subset (evaluating the training one is warned of).
    assert_user_error(evaluate_main, [experiments / "lazy", path, "--subset",
                                      "validation"], capsys, tmp_path,
                      f"HDF5 file '{path}', subject '{validation}', group "
                      "'input'", CHANGED)
