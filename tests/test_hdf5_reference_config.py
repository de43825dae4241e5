"""A reference dwi_ml user's creation config, lists and command work here.

The reference is scil-vital/dwi_ml (``dwi_ml/data/hdf5/hdf5_creation.py``,
``dwi_ml/data/processing/dwi/dwi.py``, ``scripts_python/
dwiml_create_hdf5_dataset.py`` and its ``hdf5/utils.py``). Its
standardization is computed here independently, in float64, from its
documented maths: mean and std over the voxels of the mask (the union of
the ``std_mask`` files; without one, the voxels where every feature is
non-zero), applied to every voxel.
"""
import os

import h5py
import numpy as np
import pytest
from error_checks import assert_user_error
from hdf5_test_data import (
    DATA_BOX,
    save_nifti,
    write_dataset,
    write_subject_lists,
)

from dwi_ml.cli.dwiml_create_hdf5_dataset import REFERENCE_ONLY_OPTIONS
from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.tolerances import rounding_atol

SUBJECTS = ("sub-01", "sub-02")
DATE = "01 January 2000 00:00:00"
FILES = ["dwi/fa.nii.gz", "dwi/peaks.nii.gz", "dwi/sparse.nii.gz"]
MASKS = ["masks/wm.nii.gz", "masks/gm.nii.gz"]


def _write_sparse(root, subject, seed):
    """dwi/sparse.nii.gz: non-zero in the first half of the data box only,
    so that 'every feature non-zero' and 'a feature non-zero' differ."""
    rng = np.random.default_rng(seed)
    sparse = np.zeros((10, 12, 8), np.float32)
    box = sparse[DATA_BOX]
    box[: box.shape[0] // 2] = rng.uniform(50, 90, box[: box.shape[0] // 2]
                                           .shape)
    save_nifti(os.path.join(root, subject, "dwi", "sparse.nii.gz"), sparse)
    return sparse


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two subjects; tests must not change them."""
    root = str(tmp_path_factory.mktemp("data") / "dwi_ml_ready")
    written = write_dataset(root, SUBJECTS)
    for seed, subject in enumerate(SUBJECTS):
        written[subject]["sparse"] = _write_sparse(root, subject, seed)
    return root, written


def create(root, out, config, **options):
    create_hdf5_dataset(root, str(out), config, [SUBJECTS[0]],
                        [SUBJECTS[1]], [], _date_time=DATE, **options)
    return h5py.File(out, "r")


def reference_standardize(raw, mask, independent):
    """The reference's maths in float64 (a std of 0 becomes 1)."""
    if mask is None:
        mask = np.all(raw != 0, axis=-1)
    axis = 0 if independent else None
    mean = raw[mask].mean(axis=axis)
    std = raw[mask].std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    bound = (np.abs(raw).max(axis=(0, 1, 2) if independent else None)
             + np.abs(mean)) / std
    return (raw - mean) / std, bound


def expected_input(source, mode, masks):
    """The reference's standardized group, its statistics mask and, per
    feature, a bound on the values of the float32 computation (its inputs
    over the std)."""
    raws = [source["fa"][..., None].astype(np.float64),
            source["peaks"].astype(np.float64),
            source["sparse"][..., None].astype(np.float64)]
    group = np.concatenate(raws, axis=-1)
    mask = (np.all(group != 0, axis=-1) if masks is None
            else source["wm"] | source["gm"])
    if mode == "per_file":
        parts = [reference_standardize(raw, None if masks is None else mask,
                                       False) for raw in raws]
        data = np.concatenate([p[0] for p in parts], axis=-1)
        bound = np.concatenate([np.full(raw.shape[-1], p[1])
                                for raw, p in zip(raws, parts)])
    else:
        data, bound = reference_standardize(
            group, None if masks is None else mask, mode == "independent")
        bound = np.broadcast_to(bound, data.shape[-1])
    return data, mask, bound


@pytest.mark.parametrize("mode", ["all", "independent", "per_file"])
@pytest.mark.parametrize("masks", [MASKS, None])
def test_standardization_is_the_references_on_every_voxel(dataset, tmp_path,
                                                          mode, masks):
    root, written = dataset
    group = {"type": "volume", "files": FILES, "standardization": mode}
    if masks:
        group["std_mask"] = masks
    with create(root, tmp_path / "out.hdf5", {"input": group}) as hdf:
        data = hdf["sub-01/input/data"][:]
    expected, mask, bound = expected_input(written["sub-01"], mode, masks)
    assert data.dtype == np.float32 and data.shape == expected.shape
    # float32 mean, difference, std and quotient: 4 roundings of values
    # below the bound, i.e. rounding_atol(bound, 2); the float64 statistics
    # are within one more float32 rounding.
    error = np.abs(data - expected).max(axis=(0, 1, 2))
    assert np.all(error <= rounding_atol(bound, 3)), (error, bound)
    # Outside the mask, voxels keep their standardized values, not a
    # constant.
    assert len(np.unique(data[~mask][:, 0])) > 1


def test_zero_variance_feature_is_only_centred(tmp_path):
    root = str(tmp_path / "dwi_ml_ready")
    constant = np.zeros((4, 5, 6), np.float32)
    constant[1:3] = 7.0
    constant[0] = 2.0  # outside the mask
    mask = np.zeros((4, 5, 6), np.float32)
    mask[1:3] = 1
    for subject in SUBJECTS:
        save_nifti(os.path.join(root, subject, "c.nii.gz"), constant)
        save_nifti(os.path.join(root, subject, "m.nii.gz"), mask)
    config = {"input": {"type": "volume", "files": "c.nii.gz",
                        "standardization": "independent",
                        "std_mask": "m.nii.gz"}}
    with create(root, tmp_path / "out.hdf5", config) as hdf:
        data = hdf["sub-01/input/data"][..., 0]
    # 7 - 7 and 2 - 7 and 0 - 7 are exact in float32.
    np.testing.assert_array_equal(data[1:3], 0)
    np.testing.assert_array_equal(data[0], -5)
    np.testing.assert_array_equal(data[3], -7)


def test_no_voxel_with_every_feature_non_zero_is_refused(tmp_path):
    folder = str(tmp_path / "disjoint")
    left = np.zeros((3, 3, 3), np.float32)
    left[:2] = [[[1.0]], [[2.0]]]
    right = np.zeros((3, 3, 3), np.float32)
    right[2] = 3.0
    for subject in SUBJECTS:
        save_nifti(os.path.join(folder, subject, "left.nii.gz"), left)
        save_nifti(os.path.join(folder, subject, "right.nii.gz"), right)
    config = {"input": {"type": "volume",
                        "files": ["left.nii.gz", "right.nii.gz"],
                        "standardization": "all"}}
    with pytest.raises(DwiMLUserError, match="add a 'std_mask'"):
        create(folder, tmp_path / "out.hdf5", config)
    assert not os.path.exists(tmp_path / "out.hdf5")


def test_reference_value_forms(dataset, tmp_path):
    """Single strings for files, std_mask and dps_keys; no
    standardization key; a wildcard (expanded in sorted order)."""
    root, written = dataset
    config = {
        "input": {"type": "volume", "files": "dwi/*.nii.gz",
                  "standardization": "none"},
        "wm_mask": {"type": "volume", "files": "masks/wm.nii.gz"},
        "target": {"type": "streamlines", "files": "tractograms/*.trk",
                   "dps_keys": "weight"},
    }
    with create(root, tmp_path / "out.hdf5", config) as hdf:
        data = hdf["sub-02/input/data"][:]
        target = hdf["sub-02/target"]
        weights = target["data_per_streamline/weight"][:]
        nb_streamlines = len(target["lengths"])
    source = written["sub-02"]
    # fa, peaks, sparse: the sorted matches, values as written.
    np.testing.assert_array_equal(data[..., 0], source["fa"])
    np.testing.assert_array_equal(data[..., 1:4], source["peaks"])
    np.testing.assert_array_equal(data[..., 4], source["sparse"])
    dps = source["dps"]
    np.testing.assert_array_equal(weights, np.concatenate(
        [dps["bundle_1.trk"]["weight"], dps["bundle_2.trk"]["weight"]]))
    assert nb_streamlines == len(weights)


def test_folder_all_is_every_file_of_the_folder(dataset, tmp_path):
    """The older reference's 'folder/ALL'."""
    root, written = dataset
    config = {"target": {"type": "streamlines", "files": ["tractograms/ALL"]},
              "input": {"type": "volume", "files": ["dwi/fa.nii.gz"]}}
    with create(root, tmp_path / "all.hdf5", config) as hdf:
        lengths_all = hdf["sub-01/target/lengths"][:]
    config["target"]["files"] = ["tractograms/*"]
    with create(root, tmp_path / "star.hdf5", config) as hdf:
        lengths_star = hdf["sub-01/target/lengths"][:]
    streamlines = written["sub-01"]["streamlines"]
    expected = [len(s) for name in sorted(streamlines)
                for s in streamlines[name]]
    np.testing.assert_array_equal(lengths_all, expected)
    np.testing.assert_array_equal(lengths_star, expected)


def test_a_folder_in_files_says_how_to_take_its_files(dataset, tmp_path):
    root, _ = dataset
    config = {"input": {"type": "volume", "files": ["dwi/fa.nii.gz"]},
              "target": {"type": "streamlines", "files": ["tractograms"]}}
    with pytest.raises(DwiMLUserError, match=r"found a folder; write "
                                             r"'tractograms/\*'"):
        create(root, tmp_path / "out.hdf5", config)


def _command(root, tmp_path, config_path, *options):
    lists = write_subject_lists(str(tmp_path), [SUBJECTS[0]], [SUBJECTS[1]])
    return [root, str(tmp_path / "out.hdf5"), str(config_path), *lists,
            *options]


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"input": {"type": "volume", "files": ["dwi/fa.nii.gz"],'
                    ' "standardization": "all", "std_mask": ["masks/wm.nii.gz"]'
                    '}, "target": {"type": "streamlines", "files": '
                    '["tractograms/*.trk"]}}')
    return path


def test_reference_command_line(dataset, tmp_path, config_file):
    """--compress alone is the reference's 0.01 mm; --enforce_files_presence
    True is accepted."""
    root, _ = dataset
    create_main(_command(root, tmp_path, config_file, "--compress",
                         "--enforce_files_presence", "True"))
    with h5py.File(tmp_path / "out.hdf5", "r") as hdf:
        assert hdf.attrs["compress"] == 0.01


@pytest.mark.parametrize("option", sorted(REFERENCE_ONLY_OPTIONS))
def test_reference_only_options_say_what_to_use(dataset, tmp_path,
                                                config_file, capsys, option):
    root, _ = dataset
    assert_user_error(create_main, _command(root, tmp_path, config_file,
                                            option, "x"),
                      capsys, str(tmp_path), option, "reference",
                      REFERENCE_ONLY_OPTIONS[option])


def test_enforce_files_presence_false_is_refused(dataset, tmp_path,
                                                 config_file, capsys):
    root, _ = dataset
    assert_user_error(create_main, _command(
        root, tmp_path, config_file, "--enforce_files_presence", "False"),
        capsys, str(tmp_path), "--enforce_files_presence",
        "a missing file is always an error")
