"""Malformed reference-layout HDF5 files are refused at load, in one line
naming the file, the subject, the group and the key, with what was
expected and what was found (never read wrong, never a traceback)."""
import h5py
import numpy as np
import pytest
from reference_hdf5 import make_example_subject, write_reference_hdf5

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.architecture import describe_hdf5
from dwi_ml.data.hdf5.layout import parse_groups_config
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.training.training_file import _group_nb_features

S1 = "s1/streamlines"


def _write(path):
    rng = np.random.default_rng(7)
    subjects = {"s1": make_example_subject(rng)}
    write_reference_hdf5(path, subjects, training_subjs=["s1"])


def _load(path, lazy):
    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    return dataset


def _edited(tmp_path, change):
    """A valid file (s1: 20 streamlines, grid 8x9x10), then ``change``."""
    path = str(tmp_path / "bad.hdf5")
    _write(path)
    with h5py.File(path, "r+") as hdf:
        change(hdf)
    return path


def _replace(hdf, key, **kwargs):
    del hdf[key]
    hdf.create_dataset(key, **kwargs)


def _refused(path, lazy, message):
    with pytest.raises(DwiMLUserError) as error:
        _load(path, lazy)
    assert str(error.value) == message.format(path=path)
    assert "\n" not in str(error.value)


WHERE = "HDF5 file {path}: streamline group 's1/streamlines': "


@pytest.mark.parametrize("lazy", [False, True])
def test_dps_of_another_row_count_is_refused(tmp_path, lazy):
    """D2: lazy reads returned bytes past the dataset's end."""
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/data_per_streamline/seed_id",
        data=np.zeros((15, 1), np.float32)))
    _refused(path, lazy, WHERE + "expected 'data_per_streamline/seed_id' of "
             "20 rows (one per streamline), found 15 rows.")


@pytest.mark.parametrize("lazy", [False, True])
def test_dps_that_is_a_dataset_is_refused(tmp_path, lazy):
    """D6."""
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/data_per_streamline", data=np.zeros(3)))
    _refused(path, lazy, WHERE + "expected 'data_per_streamline' to be a "
             "group (one dataset per key), found a dataset of shape (3,).")


@pytest.mark.parametrize("lazy", [False, True])
def test_volume_data_that_is_a_group_is_refused(tmp_path, lazy):
    """D5: an AttributeError traceback before."""
    def change(hdf):
        del hdf["s1/input/data"]
        hdf.create_group("s1/input/data")
    path = _edited(tmp_path, change)
    _refused(path, lazy, "HDF5 file {path}: group 's1/input': expected "
             "'data' to be a dataset, found a group of 0 items.")
    assert any("'data' is a group (expected a dataset)" in line
               for line in describe_hdf5(path))


def test_zero_point_streamlines_are_refused(tmp_path):
    """D7: extraction divided by zero."""
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/lengths", data=np.zeros(20, np.int64)))
    _refused(path, False, WHERE + "expected 'lengths' >= 1 (a streamline "
             "has points), found 20 of 20 streamlines of 0 points (the "
             "first: 0).")


@pytest.mark.parametrize("attr, value, message", [
    ("dimensions", np.array([8, 9]), "expected attr 'dimensions' 3 positive "
     "integers, found shape (2,), dtype int64 ([8, 9])."),
    ("dimensions", "8 9 10", "expected attr 'dimensions' 3 positive "
     "integers, found shape (), dtype <U6 ('8 9 10')."),
    ("voxel_order", "XYZ", "expected attr 'voxel_order' 3 letters, one of "
     "L/R, P/A and I/S each (e.g. 'RAS'), found 'XYZ'."),
    ("voxel_order", 7, "expected attr 'voxel_order' 3 letters, one of "
     "L/R, P/A and I/S each (e.g. 'RAS'), found np.int64(7)."),
    ("voxel_sizes", np.array([2., 0., 2.]), "expected attr 'voxel_sizes' 3 "
     "positive finite numbers, found shape (3,), dtype float64 "
     "([2.0, 0.0, 2.0])."),
    ("affine", np.eye(3), "expected attr 'affine' a 4x4 array of finite "
     "numbers, found shape (3, 3), dtype float64."),
])
def test_bad_space_attributes_are_refused(tmp_path, attr, value, message):
    """D8, D10: accepted before, then a dipy or nibabel traceback."""
    path = _edited(tmp_path, lambda f: f[S1].attrs.__setitem__(attr, value))
    _refused(path, False, WHERE + message)


def test_euclidean_lengths_of_bytes_are_refused(tmp_path):
    """D10: 'corrupt or truncated' before."""
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/euclidean_lengths", data=np.array([b"x"] * 20)))
    _refused(path, True, WHERE + "expected dataset 'euclidean_lengths' of "
             "numbers (mm), found dtype |S1.")


@pytest.mark.parametrize("lazy", [False, True])
def test_offsets_or_lengths_that_are_not_integers_are_refused(tmp_path,
                                                              lazy):
    """'corrupt or truncated' before, for text."""
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/offsets", data=np.array([b"0"] * 20)))
    _refused(path, lazy, WHERE + "expected 'offsets' of integers, found "
             "dtype |S1.")
    # The refused load closed the file: it can be written again.
    path = _edited(tmp_path, lambda f: _replace(
        f, S1 + "/lengths", data=np.full(20, 2.5)))
    _refused(path, lazy, WHERE + "expected 'lengths' of integers, found "
             "dtype float64 holding values that are not whole.")


def test_whole_float_offsets_and_lengths_are_read(tmp_path):
    path = _edited(tmp_path, lambda f: None)
    expected = _load(path, False).training_set.get_subject(0)
    with h5py.File(path, "r+") as hdf:
        for key in ("offsets", "lengths"):
            values = hdf[f"{S1}/{key}"][()]
            _replace(hdf, f"{S1}/{key}", data=values.astype(np.float64))
    loaded = _load(path, False).training_set.get_subject(0)
    np.testing.assert_array_equal(loaded.sft_data_list[0].lengths,
                                  expected.sft_data_list[0].lengths)


def test_a_group_without_type_is_refused(tmp_path):
    """D10: said "found ''" before."""
    path = _edited(tmp_path, lambda f: f["s1/input"].attrs.__delitem__(
        "type"))
    _refused(path, False, "HDF5 file {path}: group 's1/input': expected attr"
             " 'type' ('volume' or 'streamlines'), found it missing.")


ROOT = "HDF5 file '{path}': root attr "


@pytest.mark.parametrize("attrs, message", [
    ({"step_size": "one mm"}, "'step_size': expected a positive finite "
     "number or 'Not defined by user', found text 'one mm'."),
    ({"step_size": np.array([1.0, 2.0])}, "'step_size': expected a positive "
     "finite number or 'Not defined by user', found an array of shape (2,) "
     "([1.0, 2.0])."),
    ({"step_size": -1.0}, "'step_size': expected a positive finite number "
     "or 'Not defined by user', found -1.0."),
    ({"compress": np.nan}, "'compress': expected a positive finite number "
     "or 'Not defined by user', found nan."),
    ({"nb_points": 20.7}, "'nb_points': expected an integer >= 2 or 'Not "
     "defined by user', found 20.7, not an integer."),
])
def test_bad_streamline_format_attrs_are_refused(tmp_path, attrs, message):
    """D3, D10, D11: a TypeError, 'corrupt or truncated', a blamed
    '--step_size' argument, or 20.7 read as 20, before."""
    path = _edited(tmp_path, lambda f: f.attrs.update(attrs))
    _refused(path, False, ROOT + message)


def test_a_step_size_written_as_text_is_read(tmp_path):
    """A number stored as text ('1.5') is that number, as it was read
    before the checks above."""
    path = _edited(tmp_path, lambda f: f.attrs.update({"step_size": "1.5"}))
    assert _load(path, False).step_size == 1.5


def test_two_streamline_formats_in_the_file_are_refused(tmp_path):
    path = _edited(tmp_path, lambda f: f.attrs.update(
        {"step_size": 1.0, "nb_points": 20}))
    _refused(path, False, "HDF5 file '{path}': root attrs 'step_size' (1.0) "
             "and 'nb_points' (20) are all set; expected at most one "
             "(streamlines are resampled one way).")


def test_a_nb_points_that_is_an_integer_float_is_read(tmp_path):
    path = _edited(tmp_path, lambda f: f.attrs.update({"nb_points": 20.0}))
    assert _load(path, False).nb_points == 20


@pytest.mark.parametrize("text", ["5", "[1, 2]", "'input'"])
def test_a_groups_config_that_is_not_a_dict_is_absent(text):
    """D4: tracking called .get on it."""
    assert parse_groups_config(text) is None


@pytest.mark.parametrize("value", [np.array([2]), 45, "many"])
def test_nb_features_of_a_group_is_its_data_shape(tmp_path, value):
    """D1: int() of the attr crashed on 'many' and disagreed with the
    loader on 45; the data (8, 9, 10, 2) has 2 features."""
    path = _edited(tmp_path, lambda f: f["s1/input"].attrs.__setitem__(
        "nb_features", value))
    assert _group_nb_features(path, "input") == 2
    assert _load(path, False).nb_features == [2]


def _blocs(matrix, nb_blocs=None, matrix_type="from_blocs"):
    def change(hdf):
        hdf[S1 + "/connectivity_matrix"] = matrix
        hdf[S1].attrs["connectivity_matrix_type"] = matrix_type
        if nb_blocs is not None:
            hdf[S1].attrs["connectivity_nb_blocs"] = nb_blocs
    return change


@pytest.mark.parametrize("change, message", [
    (_blocs(np.eye(8, dtype=bool)), "'connectivity_matrix' of type "
     "'from_blocs' expects attr 'connectivity_nb_blocs', found none."),
    (_blocs(np.eye(5, dtype=bool), [2, 2, 2]), "expected dataset "
     "'connectivity_matrix' of 8 x 8 (one row per bloc of "
     "'connectivity_nb_blocs' [2, 2, 2]), found 5 x 5."),
    (_blocs(np.eye(8, dtype=bool), [2, 4]), "expected attr "
     "'connectivity_nb_blocs' 1 or 3 integers >= 1, found [2, 4] (int64)."),
    (_blocs(np.ones((8, 4), dtype=bool), [2, 2, 2]), "expected dataset "
     "'connectivity_matrix' square (M, M), found shape (8, 4)."),
    (_blocs(np.eye(8, dtype=bool), [2, 2, 2], "from_atlas"), "expected attr "
     "'connectivity_matrix_type' 'from_blocs' or 'from_labels', found "
     "'from_atlas'."),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_bad_connectivity_is_refused_at_load(tmp_path, change, message,
                                             lazy):
    """D9: found only at the first tracking validation, without the file
    or the subject."""
    _refused(_edited(tmp_path, change), lazy, WHERE + message)


def test_a_label_volume_off_the_grid_is_refused(tmp_path):
    def change(hdf):
        _blocs(np.eye(2, dtype=bool), matrix_type="from_labels")(hdf)
        hdf[S1 + "/connectivity_label_volume"] = np.ones((8, 9, 9), np.int32)
    _refused(_edited(tmp_path, change), True, WHERE + "expected dataset "
             "'connectivity_label_volume' of integers on the subject's grid "
             "(8, 9, 10), found shape (8, 9, 9), dtype int32.")


def test_architecture_lists_only_listed_subjects(tmp_path):
    """D12: a root group that no split lists is no subject."""
    path = _edited(tmp_path, lambda f: f.create_dataset(
        "bundle_dict/ids", data=np.arange(3)))
    lines = describe_hdf5(path)
    assert "Other root items (not subjects): bundle_dict" in lines
    assert "Subjects (1):" in lines
