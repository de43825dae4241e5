"""Voxel grids that point their axes alike, and the warning when a model
is tracked or evaluated on a subject whose grid is unlike every training
subject's (its voxel-space directions point elsewhere in the world)."""
import logging
import os

import h5py
import nibabel as nib
import numpy as np
import pytest

from dwi_ml.cli.dwiml_evaluate_model import main as evaluate_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.data.processing.grid_frames import (
    describe_grid,
    grid_frame_difference,
    grids_alike,
)
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.training.training_file import grids_unlike_training

RAS_2MM = np.diag([2., 2., 2., 1.])


def _rotation_z(degrees):
    angle = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)],
                        [np.sin(angle), np.cos(angle)]]
    return rotation


def test_origin_and_isotropic_size_do_not_change_the_frame():
    moved = np.diag([1., 1., 1., 1.])
    moved[:3, 3] = [-90., 40., 7.5]
    assert grid_frame_difference(RAS_2MM, moved) == (0.0, 0.0)
    assert grids_alike(RAS_2MM, moved)


@pytest.mark.parametrize("other, angle, change", [
    # y flipped (LPS-like): that axis points the other way.
    (RAS_2MM @ np.diag([-1., -1., 1., 1.]), 180.0, 0.0),
    # Axes permuted: x takes y's direction, 90 degrees from its own.
    (RAS_2MM[[1, 0, 2, 3]], 90.0, 0.0),
    (_rotation_z(12.) @ RAS_2MM, 12.0, 0.0),
    # 2 x 2 x 2.5 mm: sides over their geometric mean 10 ** (1 / 3).
    (np.diag([2., 2., 2.5, 1.]), 0.0, 2.5 / 10 ** (1 / 3) - 1)])
def test_flips_permutations_rotations_and_voxel_shapes_are_measured(
        other, angle, change):
    found_angle, found_change = grid_frame_difference(RAS_2MM, other)
    # arccos of rounded cosines: near 0 and 180 degrees a rounding of
    # 1e-16 in a cosine is ~1e-6 degrees.
    assert found_angle == pytest.approx(angle, abs=1e-5)
    assert found_change == pytest.approx(change, abs=1e-12)
    assert not grids_alike(RAS_2MM, other)


def test_one_degree_and_one_percent_are_the_bounds():
    assert grids_alike(RAS_2MM, _rotation_z(0.9) @ RAS_2MM)
    assert not grids_alike(RAS_2MM, _rotation_z(1.1) @ RAS_2MM)
    # 0.5 % longer along z: sides over the geometric mean change by
    # 1.005 ** (2 / 3) - 1 = 0.33 %; 2 % longer: 1.33 %.
    assert grids_alike(RAS_2MM, np.diag([2., 2., 2.01, 1.]))
    assert not grids_alike(RAS_2MM, np.diag([2., 2., 2.04, 1.]))


def test_describe_grid_names_axes_and_voxel_sides():
    assert describe_grid(np.diag([-2., -2., 2.5, 1.])) == \
        "LPS, 2 x 2 x 2.5 mm voxels"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grids")
    paths = make_synthetic_dataset(str(folder / "synthetic"), nb_subjects=2,
                                   nb_streamlines=30, seed=0)
    hdf5_file = str(folder / "data.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, ["subj-01"], [],
                        ["subj-02"], step_size=1.5)
    os.makedirs(folder / "exps")
    train_main([str(folder / "exps"), "l2t", hdf5_file, "input",
                "streamlines", "--max_epochs", "1", "--rnn_layer_sizes", "8",
                "-v", "WARNING"])
    return str(folder / "exps" / "l2t"), hdf5_file


def _subject_on_another_grid(hdf5_file, path, subject, new_affine):
    """A copy of ``hdf5_file`` where every group of ``subject`` lies on the
    grid ``new_affine(affine)``: the same voxels, placed otherwise in the
    world."""
    with open(hdf5_file, "rb") as source, open(path, "wb") as copy:
        copy.write(source.read())
    with h5py.File(path, "a") as hdf:
        for group in hdf[subject].values():
            affine = new_affine(group.attrs["affine"])
            group.attrs["affine"] = affine.astype(group.attrs["affine"].dtype)
            sides = np.linalg.norm(affine[:3, :3], axis=0)
            for key in ("voxres", "voxel_sizes"):
                if key in group.attrs:
                    group.attrs[key] = sides.astype(group.attrs[key].dtype)
            if "voxel_order" in group.attrs:
                group.attrs["voxel_order"] = "".join(nib.aff2axcodes(affine))
    return path


def test_evaluation_on_a_flipped_subject_is_warned_of(experiment, tmp_path,
                                                      capsys):
    experiment_dir, hdf5_file = experiment
    training_affine = h5py.File(hdf5_file, "r")["subj-01/input"].attrs[
        "affine"]
    flipped = _subject_on_another_grid(
        hdf5_file, str(tmp_path / "flipped.hdf5"), "subj-02",
        lambda affine: affine @ np.diag([-1., 1., 1., 1.]))
    capsys.readouterr()
    evaluate_main([experiment_dir, flipped, "--out",
                   str(tmp_path / "flipped.json")])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "voxel grid unlike" in line]
    assert warnings == [
        "WARNING: Subject 'subj-02', input group 'input': a voxel grid unlike every "
        "training subject's (LAS, 2 x 2.5 x 3 mm voxels; nearest, training "
        "subject 'subj-01': RAS, 2 x 2.5 x 3 mm voxels; axes up to 180.0 "
        "degrees apart, voxel sides up to 0.0 % different): the model's "
        "directions are in voxel space, so here they point elsewhere in the "
        "world. Resample or reorient the subject's volumes like the training "
        "subjects' before creating the HDF5 (docs/models.md)."]
    assert describe_grid(training_affine) == "RAS, 2 x 2.5 x 3 mm voxels"


def test_a_subject_moved_or_scaled_alike_is_not_warned_of(experiment,
                                                          tmp_path, caplog):
    experiment_dir, hdf5_file = experiment
    moved = np.diag([1.5, 1.5, 1.5, 1.])  # isotropic scale
    moved[:3, 3] = [12., -30., 4.]
    path = _subject_on_another_grid(hdf5_file, str(tmp_path / "moved.hdf5"),
                                    "subj-02", lambda affine: moved @ affine)
    fingerprint = compute_hdf5_fingerprint(path)
    with caplog.at_level(logging.WARNING):
        assert grids_unlike_training(experiment_dir, ["subj-02"], "input",
                                     fingerprint) == []
        # Turned by 20 degrees in the world: named.
        rotated = _subject_on_another_grid(
            hdf5_file, str(tmp_path / "rotated.hdf5"), "subj-02",
            lambda affine: _rotation_z(20.) @ affine)
        assert grids_unlike_training(
            experiment_dir, ["subj-02", "subj-01"], "input",
            compute_hdf5_fingerprint(rotated)) == ["subj-02"]
    assert len(caplog.messages) == 1
    assert "axes up to 20.0 degrees apart" in caplog.messages[0]


def test_fine_tuning_on_subjects_of_another_grid_is_warned_of(
        experiment, tmp_path, capsys):
    experiment_dir, hdf5_file = experiment
    # Its training subject flipped (the testing one is not fine-tuned on).
    flipped = str(tmp_path / "all_flipped.hdf5")
    _subject_on_another_grid(hdf5_file, flipped, "subj-01",
                             lambda affine: affine @ np.diag([1., -1., 1., 1.]))
    capsys.readouterr()
    train_main([str(tmp_path), "tuned", flipped, "input", "streamlines",
                "--max_epochs", "1", "--pretrained", experiment_dir])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "voxel grid unlike" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "WARNING: Subject 'subj-01', input group 'input': a voxel grid "
        "unlike every training subject's (RPS, 2 x 2.5 x 3 mm voxels; "
        "nearest, training subject 'subj-01': RAS, 2 x 2.5 x 3 mm voxels; "
        "axes up to 180.0 degrees apart")
