"""Connectivity matrices in the HDF5: config keys, reference layout, reading."""
import copy
import os

import h5py
import numpy as np
import pytest
from hdf5_test_data import (
    CONFIG,
    SHAPE,
    grid_affine,
    save_nifti,
    write_dataset,
    write_subject_lists,
)

from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.connectivity import read_connectivity
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.io_utils.errors import DwiMLUserError

SUBJECTS = ("s1", "s2")


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "dwi_ml_ready"
    write_dataset(str(root), SUBJECTS)
    rng = np.random.default_rng(3)
    for subject in SUBJECTS:
        # 2 x 2 x 2 blocs: 8 nodes; a labels volume with labels 0..4.
        np.save(root / subject / "blocs.npy", rng.integers(0, 3, (8, 8)))
        np.save(root / subject / "labels.npy", rng.integers(0, 3, (5, 5)))
        np.save(root / subject / "small.npy", np.ones((3, 3)))
        labels = rng.integers(0, 5, SHAPE).astype(np.int16)
        save_nifti(str(root / subject / "labels.nii.gz"), labels,
                   grid_affine())
    return root


def _create(root, tmp_path, group_entry, name="out.hdf5"):
    config = copy.deepcopy(CONFIG)
    config["streamlines"].update(group_entry)
    lists = write_subject_lists(str(tmp_path), list(SUBJECTS))
    out = str(tmp_path / name)
    create_hdf5_dataset(str(root), out, config, *[
        [line for line in open(path).read().split() if line]
        for path in lists])
    return out


def test_blocs_are_stored_in_the_reference_layout(dataset_root, tmp_path):
    out = _create(dataset_root, tmp_path, {
        "connectivity_matrix": "blocs.npy", "connectivity_nb_blocs": 2})
    with h5py.File(out, "r") as f:
        for subject in SUBJECTS:
            group = f[subject]["streamlines"]
            expected = np.load(dataset_root / subject / "blocs.npy") > 0
            assert group["connectivity_matrix"].dtype == bool
            assert np.array_equal(group["connectivity_matrix"][()], expected)
            assert group.attrs["connectivity_matrix_type"] == "from_blocs"
            assert list(group.attrs["connectivity_nb_blocs"]) == [2, 2, 2]
            assert "connectivity_label_volume" not in group
            connectivity = read_connectivity(group)
            assert connectivity.nb_blocs == (2, 2, 2)
            assert np.array_equal(connectivity.matrix, expected)


@pytest.mark.parametrize("lazy", [False, True])
def test_labels_are_stored_and_read_back(dataset_root, tmp_path, lazy):
    import nibabel as nib

    out = _create(dataset_root, tmp_path, {
        "connectivity_matrix": "labels.npy",
        "connectivity_labels": "labels.nii.gz"})
    dataset = MultiSubjectDataset(out, lazy=lazy)
    dataset.load_data()
    subject = dataset.training_set.get_subject(0)
    connectivity = subject.sft_data_list[0].connectivity
    subject_id = dataset.training_set.subjects[0]
    assert connectivity.matrix_type == "from_labels"
    assert connectivity.nb_blocs is None
    assert np.array_equal(
        connectivity.matrix,
        np.load(dataset_root / subject_id / "labels.npy") > 0)
    assert np.array_equal(
        connectivity.label_volume,
        np.asarray(nib.load(dataset_root / subject_id
                            / "labels.nii.gz").dataobj))
    with h5py.File(out, "r") as f:
        group = f[subject_id]["streamlines"]
        assert group["connectivity_label_volume"].dtype == np.int32
        assert "connectivity_nb_blocs" not in group.attrs


@pytest.mark.parametrize("entry", [
    {"connectivity_matrix": "blocs.npy", "connectivity_nb_blocs": 2},
    {"connectivity_matrix": "labels.npy",
     "connectivity_labels": "labels.nii.gz"}])
def test_extract_data_writes_the_stored_matrix(dataset_root, tmp_path, entry):
    out = _create(dataset_root, tmp_path, entry)
    matrix_path = tmp_path / "true.npy"
    extract_main([out, SUBJECTS[1], "streamlines", str(matrix_path)])
    expected = np.load(dataset_root / SUBJECTS[1]
                       / entry["connectivity_matrix"]) > 0
    extracted = np.load(matrix_path)
    assert extracted.dtype == bool and np.array_equal(extracted, expected)


def test_labels_of_shape_xyz1_are_stored_as_3d(dataset_root, tmp_path):
    """Some tools write a parcellation as (X, Y, Z, 1): the same labels."""
    import nibabel as nib

    for subject in SUBJECTS:
        image = nib.load(dataset_root / subject / "labels.nii.gz")
        save_nifti(str(dataset_root / subject / "labels_4d.nii.gz"),
                   np.asarray(image.dataobj)[..., None], image.affine)
    out = _create(dataset_root, tmp_path, {
        "connectivity_matrix": "labels.npy",
        "connectivity_labels": "labels_4d.nii.gz"})
    with h5py.File(out, "r") as f:
        for subject in SUBJECTS:
            stored = f[subject]["streamlines"]["connectivity_label_volume"]
            expected = np.asarray(nib.load(
                dataset_root / subject / "labels.nii.gz").dataobj)
            assert stored.shape == expected.shape
            np.testing.assert_array_equal(stored[()], expected)


def test_without_connectivity_nothing_is_added(dataset_root, tmp_path):
    out = _create(dataset_root, tmp_path, {})
    dataset = MultiSubjectDataset(out)
    dataset.load_data()
    assert dataset.training_set.get_subject(0).sft_data_list[0] \
        .connectivity is None
    with h5py.File(out, "r") as f:
        assert "connectivity_matrix" not in f["s1"]["streamlines"]


@pytest.mark.parametrize("entry, message", [
    ({"connectivity_nb_blocs": 2}, "need 'connectivity_matrix'"),
    ({"connectivity_matrix": "blocs.npy"}, "found neither"),
    ({"connectivity_matrix": "blocs.npy", "connectivity_nb_blocs": 2,
      "connectivity_labels": "labels.nii.gz"}, "found both"),
    ({"connectivity_matrix": "blocs.npy", "connectivity_nb_blocs": [2, 2]},
     "a positive integer or a list of 3"),
    ({"connectivity_matrix": "blocs.npy", "connectivity_nb_blocs": 3},
     "expected 27 x 27 for [3, 3, 3] blocs, found 8 x 8"),
    ({"connectivity_matrix": "missing.npy", "connectivity_nb_blocs": 2},
     "missing.npy"),
    ({"connectivity_matrix": "small.npy",
      "connectivity_labels": "labels.nii.gz"},
     "expected 5 x 5, one row per distinct label of the label volume (or "
     "4 x 4 without label 0), found 3 x 3"),
])
def test_bad_connectivity_config_is_one_clear_error(dataset_root, tmp_path,
                                                    entry, message):
    with pytest.raises(DwiMLUserError) as error:
        _create(dataset_root, tmp_path, entry)
    assert message in str(error.value)
    assert len(str(error.value).splitlines()) == 1
    assert not os.path.exists(tmp_path / "out.hdf5")


@pytest.mark.parametrize("name, data, message", [
    ("fraction", 1.5, "non-integer values such as 1.5"),
    ("negative", -2, "negative values such as -2.0"),
    ("small", None, "expected the streamline group's grid"),
])
def test_bad_label_volume_is_one_clear_error(dataset_root, tmp_path, name,
                                             data, message):
    """The creation read labels with a shorter check than the scripts (it
    named the dtype and shape only); both read them with one function."""
    for subject in SUBJECTS:
        labels = np.zeros(SHAPE, dtype=np.float32)
        if data is None:
            labels = labels[:-1]
        else:
            labels[0, 0, 0] = data
        save_nifti(str(dataset_root / subject / f"{name}.nii.gz"), labels,
                   grid_affine())
    with pytest.raises(DwiMLUserError) as error:
        _create(dataset_root, tmp_path, {
            "connectivity_matrix": "small.npy",
            "connectivity_labels": f"{name}.nii.gz"})
    text = str(error.value)
    assert message in text and "connectivity labels '" in text
    assert f"{name}.nii.gz" in text and len(text.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out.hdf5")


@pytest.mark.parametrize("case, message", [
    ("nan", "expected finite counts, found 1 NaN or infinite entries"),
    ("negative", "expected counts >= 0, found 1 negative entries"),
    ("too_many_blocs", "'connectivity_nb_blocs': expected at most the "
                       "volume's size along each axis [10, 12, 8]"),
    ("shifted_labels", "expected the streamline group's affine"),
    ("other_parcellation", "with connections on label(s) [1, 2] that the label "
                           "volume does not have"),
])
def test_connectivity_that_would_score_wrongly_is_refused(
        dataset_root, tmp_path, case, message):
    """Each was stored as a plausible matrix (NaN and negative counts as
    "no connection", a label volume off the grid, more blocs than voxels,
    a connection on a label the volume lacks dropped), and the
    connectivity score of every epoch was silently wrong."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[5:] = 3  # labels {0, 3}
    matrix = np.zeros((4, 4))
    entry = {"connectivity_matrix": "case.npy",
             "connectivity_labels": "case.nii.gz"}
    affine = grid_affine()
    if case in ("nan", "negative"):
        matrix[0, 3] = np.nan if case == "nan" else -1
    elif case == "too_many_blocs":
        matrix = np.zeros((11 * 2 * 2,) * 2)
        entry = {"connectivity_matrix": "case.npy",
                 "connectivity_nb_blocs": [11, 2, 2]}
    elif case == "shifted_labels":
        affine = grid_affine(translation=(-5.0, 7.5, 3.0))
    else:
        matrix[0, 3] = matrix[1, 2] = 9  # labels 1, 2 are not in it
    for subject in SUBJECTS:
        np.save(dataset_root / subject / "case.npy", matrix)
        save_nifti(str(dataset_root / subject / "case.nii.gz"), labels,
                   affine)
    with pytest.raises(DwiMLUserError) as error:
        _create(dataset_root, tmp_path, entry)
    text = str(error.value)
    assert message in text and len(text.splitlines()) == 1
    assert "subject 's1', group 'streamlines'" in text
    assert not os.path.exists(tmp_path / "out.hdf5")


@pytest.mark.parametrize("layout", ["reference", "by_label_value"])
def test_sparse_labels_of_either_layout_score_streamlines(tmp_path, layout):
    """Labels 0, 4 and 9 (a parcellation's numbering has gaps): the
    reference dwi_ml stores a 3 x 3 matrix over the labels present; our
    earlier files a 10 x 10 one indexed by label value. Both read
    as the 3 x 3 matrix, and generated streamlines are scored on it."""
    from nibabel.streamlines import ArraySequence

    from dwi_ml.tracking.tracking_validation import nb_in_true_connections

    labels = np.zeros((10, 4, 4), dtype=np.int32)
    labels[:2], labels[8:] = 4, 9
    compact = np.zeros((3, 3), dtype=bool)
    compact[1, 2] = True                       # 4 <-> 9 is a true connection
    matrix = compact
    if layout == "by_label_value":
        matrix = np.zeros((10, 10), dtype=bool)
        matrix[4, 9] = True
    with h5py.File(tmp_path / "ref.hdf5", "w") as f:
        group = f.create_group("subj/streamlines")
        group.attrs["connectivity_matrix_type"] = "from_labels"
        group.create_dataset("connectivity_matrix", data=matrix)
        group.create_dataset("connectivity_label_volume", data=labels)
        connectivity = read_connectivity(group)
    np.testing.assert_array_equal(connectivity.matrix, compact)
    line = np.array([[0.5, 2.5, 2.5], [5.5, 2.5, 2.5], [9.5, 2.5, 2.5]])
    streamlines = ArraySequence([line, line[::-1], line[:2]])
    # The first two join labels 4 and 9; the third ends in the background.
    assert nb_in_true_connections(streamlines, connectivity,
                                  labels.shape) == 2
