"""Both tools read both: files as the reference dwi_ml writes them, read by
ours (eager and lazy), and our files read as the reference's reader reads
them (the same accesses, with the same types: see
``reference_hdf5.read_as_reference_reader``).

What the reference writes and reads was taken from scil-vital/dwi_ml
(``dwi_ml/data/hdf5/hdf5_creation.py``, ``dwi_ml/data/dataset/*.py``); see
docs/hdf5_layout.md, "Reading the reference's files".
"""
import copy

import h5py
import numpy as np
import pytest
from hdf5_test_data import CONFIG, write_dataset
from reference_hdf5 import (
    make_example_subject,
    read_as_reference_reader,
    write_reference_hdf5,
)

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.packed import lengths_mm
from dwi_ml.io_utils.errors import DwiMLUserError


def _write(path):
    rng = np.random.default_rng(7)
    subjects = {"s1": make_example_subject(rng),
                "s2": make_example_subject(rng, nb_streamlines=9)}
    write_reference_hdf5(path, subjects, training_subjs=["s1"],
                         validation_subjs=["s2"], step_size=1.0)


def _replace(hdf, key, convert):
    """Store dataset ``key`` again as ``convert(values)``."""
    values = hdf[key][()]
    del hdf[key]
    hdf.create_dataset(key, data=convert(values))


def _set_attrs(key, **attrs):
    def change(hdf):
        hdf[key].attrs.update(attrs) if key else hdf.attrs.update(attrs)
    return change


def _delete_root_attrs(*names):
    def change(hdf):
        for name in names:
            del hdf.attrs[name]
    return change


S1 = "s1/streamlines/"
# What the reference's writer may store (source-dependent dtypes, older and
# newer versions), one change at a time on top of write_reference_hdf5.
VARIANTS = {
    "volume_float64": lambda f: _replace(f, "s1/input/data",
                                         lambda v: v.astype(np.float64)),
    "volume_float16": lambda f: _replace(f, "s1/input/data",
                                         lambda v: v.astype(np.float16)),
    "points_float16": lambda f: _replace(f, S1 + "data",
                                         lambda v: v.astype(np.float16)),
    "points_float64": lambda f: _replace(f, S1 + "data",
                                         lambda v: v.astype(np.float64)),
    "offsets_lengths_int32": lambda f: [
        _replace(f, S1 + key, lambda v: v.astype(np.int32))
        for key in ("offsets", "lengths")],
    "euclidean_lengths_float32": lambda f: _replace(
        f, S1 + "euclidean_lengths", lambda v: v.astype(np.float32)),
    "dps_1d_int16": lambda f: _replace(
        f, S1 + "data_per_streamline/seed_id",
        lambda v: v[:, 0].astype(np.int16)),
    "dps_float16": lambda f: _replace(
        f, S1 + "data_per_streamline/seed_id",
        lambda v: v.astype(np.float16)),
    "nb_features_array": _set_attrs("s1/input", nb_features=np.array([2])),
    # Versions that wrote HDF_DATABASE_VERSION = 2 and a root 'space'.
    "version_2_root_space": _set_attrs("", version=2, space="VOX"),
    "no_nb_points_no_compress": _delete_root_attrs("nb_points", "compress"),
    "no_step_size": _delete_root_attrs("step_size"),
    "step_size_float32": _set_attrs("", step_size=np.float32(1.0)),
    # Recent versions accept a subject in two lists (with a warning).
    "subject_in_two_splits": _set_attrs("", validation_subjs=["s2", "s1"]),
    # A root group that is no subject (a fork writes 'bundle_dict').
    "extra_root_group": lambda f: f.create_dataset("bundle_dict/ids",
                                                   data=np.arange(3)),
    # The reference's reader takes any case, with or without the prefix,
    # and dipy's Origin value 'corner'.
    "space_origin_plain": _set_attrs("s1/streamlines", space="vox",
                                     origin="corner"),
    "space_origin_upper": _set_attrs("s1/streamlines", space="SPACE.VOX",
                                     origin="TRACKVIS"),
    # str() of a config holding NaN (json.load takes it): no literal.
    "groups_config_with_nan": _set_attrs(
        "", groups_config="{'input': {'type': 'volume', 'x': nan}}"),
}


def _stored(path):
    """Subject s1 as stored, read with h5py only: volume (float32),
    streamlines (float32), dps."""
    with h5py.File(path, "r") as hdf:
        group = hdf[S1]
        data = group["data"][()].astype(np.float32)
        streamlines = [data[o:o + n] for o, n in zip(group["offsets"][()],
                                                     group["lengths"][()])]
        dps = {key: values[()] for key, values in
               group["data_per_streamline"].items()}
        volume = hdf["s1/input/data"][()].astype(np.float32)
    return volume, streamlines, dps


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reads_what_the_reference_writes(tmp_path, variant, lazy):
    path = str(tmp_path / "reference.hdf5")
    _write(path)
    with h5py.File(path, "r+") as hdf:
        VARIANTS[variant](hdf)
    volume, streamlines, dps = _stored(path)

    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    assert dataset.nb_features == [2]
    subject = dataset.training_set.get_subject(0)
    assert subject.subject_id == "s1"
    assert np.array_equal(subject.mri_data_list[0].as_tensor().numpy(),
                          volume)
    sft_data = subject.sft_data_list[0]
    ids = np.array([5, 0, 5, 19, 3])
    got = sft_data.get_streamlines(ids)
    assert got._data.dtype == np.float32
    for points, i in zip(got, ids):
        assert np.array_equal(points, streamlines[i])
    # The lengths in mm are the stored ones (float32 here).
    with h5py.File(path, "r") as hdf:
        stored_mm = hdf[S1 + "euclidean_lengths"][()].astype(np.float32)
    assert np.array_equal(sft_data.lengths_mm, stored_mm)
    got_dps = sft_data.get_data_per_streamline(ids)
    assert sorted(got_dps) == sorted(dps)
    for key, values in dps.items():
        assert np.array_equal(got_dps[key], values[ids])
    assert len(sft_data.as_sft(ids)) == len(ids)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_label_matrix_without_the_background_is_read(tmp_path, lazy):
    """Some reference versions store one row per label other than 0. Eager
    loading refused such a file (lazy read it): it reads as the matrix with
    an empty row and column for label 0."""
    path = str(tmp_path / "reference.hdf5")
    _write(path)
    labels = np.zeros((8, 9, 10), np.int64)
    labels[:3], labels[5:] = 1, 2
    with h5py.File(path, "r+") as hdf:
        group = hdf[S1]
        group.attrs["connectivity_matrix_type"] = "from_labels"
        group["connectivity_label_volume"] = labels
        group["connectivity_matrix"] = np.array([[False, True],
                                                 [False, False]])
    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    connectivity = dataset.training_set.get_subject(0) \
        .sft_data_list[0].connectivity
    np.testing.assert_array_equal(connectivity.matrix, [
        [False, False, False], [False, False, True], [False, False, False]])
    np.testing.assert_array_equal(connectivity.label_volume, labels)


@pytest.mark.parametrize("lazy", [False, True])
def test_older_files_without_origin_are_refused(tmp_path, lazy):
    """Older reference versions stored points with dipy's default centre
    origin and no 'origin' attr: reading them as corner points would shift
    every point by half a voxel."""
    path = str(tmp_path / "old.hdf5")
    _write(path)
    with h5py.File(path, "r+") as hdf:
        del hdf[S1].attrs["origin"]
    dataset = MultiSubjectDataset(path, lazy=lazy)
    with pytest.raises(DwiMLUserError, match="'s1/streamlines'.*'origin'"):
        dataset.load_data()


@pytest.mark.parametrize("lazy", [False, True])
def test_euclidean_lengths_of_another_count_are_recomputed(tmp_path, lazy):
    """Older reference versions removed invalid streamlines after
    computing their lengths: then the stored lengths match no streamline."""
    path = str(tmp_path / "old.hdf5")
    _write(path)
    with h5py.File(path, "r+") as hdf:
        _replace(hdf, S1 + "euclidean_lengths",
                 lambda v: np.concatenate([v, [1.0, 2.0]]))
        group = hdf[S1]
        affine = group.attrs["affine"].astype(np.float64)
        expected = lengths_mm(group["data"][()], group["offsets"][()],
                              group["lengths"][()], affine)
    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    got = dataset.training_set.get_lengths_mm(0, 0)
    assert np.array_equal(got, expected.astype(np.float32))


def _write_with_repeats(path, repeat):
    """A reference file whose s1 streamlines hold points repeated in a row
    (``repeat(streamlines)`` adds them), stored with gaps and shuffled.
    Returns the streamlines as they are without the repeats."""
    rng = np.random.default_rng(3)
    subject = make_example_subject(rng, gap_rows=2, shuffle_storage=True)
    distinct = [s.copy() for s in subject["streamlines"].streamlines]
    repeat(subject["streamlines"].streamlines)
    write_reference_hdf5(path, {"s1": subject}, training_subjs=["s1"])
    return distinct


def _seed_twice_and_a_point_three_times(streamlines):
    streamlines[0] = np.concatenate([streamlines[0][:1], streamlines[0]])
    points = streamlines[4]
    streamlines[4] = np.concatenate([points[:2], points[1:2], points[1:2],
                                     points[2:]])


@pytest.mark.parametrize("lazy", [False, True])
def test_points_repeated_in_a_row_are_used_once(tmp_path, lazy, caplog):
    """A tracker may write the seed twice; the reference stores such
    points as they are. Their zero-length segment has no direction (a zero
    target): they are read once, with a warning naming the group."""
    path = str(tmp_path / "repeats.hdf5")
    distinct = _write_with_repeats(path, _seed_twice_and_a_point_three_times)
    dataset = MultiSubjectDataset(path, lazy=lazy)
    dataset.load_data()
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    ids = np.array([4, 0, 1, 4])
    got = sft_data.get_streamlines(ids)
    assert [len(s) for s in got] == [len(distinct[i]) for i in ids]
    for points, i in zip(got, ids):
        assert np.array_equal(points, distinct[i])
    data, offsets, lengths = sft_data.read_points(ids)
    for i, (o, n) in enumerate(zip(offsets, lengths)):
        assert np.array_equal(data[o:o + n], distinct[ids[i]])
    # 1 repeat in streamline 0, 2 in streamline 4: the whole file when
    # eager; lazy, those of the first read (4, 0, 1, 4).
    expected = 5 if lazy else 3
    warnings = [r.getMessage() for r in caplog.records
                if "equal to the point before" in r.getMessage()]
    assert len(warnings) == 1
    assert (f"subject 's1', group 'streamlines': read without {expected} "
            "points") in warnings[0]


def _all_equal(streamlines):
    streamlines[7] = np.repeat(streamlines[7][:1], 4, axis=0)


def test_a_streamline_of_equal_points_is_one_point_when_eager(tmp_path):
    """Its length is then that of a 1-point streamline, which training
    checks against the model before any batch (test_trainer.py)."""
    path = str(tmp_path / "equal.hdf5")
    distinct = _write_with_repeats(path, _all_equal)
    dataset = MultiSubjectDataset(path)
    dataset.load_data()
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    assert sft_data.lengths[7] == 1
    assert np.array_equal(sft_data.get_streamlines([7])[0], distinct[7][:1])


def test_a_streamline_of_equal_points_is_read_as_stored_when_lazy(
        tmp_path, caplog):
    """Lazy, the lengths checked before training are the stored ones: one
    point would reach a model that needs two in the middle of a run (it was
    refused there). It is read as stored, with a warning naming it; the
    repeats of the other streamlines are dropped as usual."""
    path = str(tmp_path / "equal.hdf5")

    def equal_and_seed_twice(streamlines):
        _all_equal(streamlines)
        _seed_twice_and_a_point_three_times(streamlines)

    distinct = _write_with_repeats(path, equal_and_seed_twice)
    dataset = MultiSubjectDataset(path, lazy=True)
    dataset.load_data()
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    got = sft_data.get_streamlines([7, 0, 4])
    assert np.array_equal(got[0], np.repeat(distinct[7][:1], 4, axis=0))
    assert np.array_equal(got[1], distinct[0])
    assert np.array_equal(got[2], distinct[4])
    assert ("subject 's1', group 'streamlines': streamline 7 has all its "
            "points equal (no direction to learn); read as stored") \
        in caplog.text


@pytest.fixture(scope="module")
def our_file(tmp_path_factory):
    """A file of our writer with connectivity from blocs and labels."""
    folder = tmp_path_factory.mktemp("ours")
    root = folder / "dwi_ml_ready"
    subjects = ["sub-01", "sub-02", "sub-03"]
    write_dataset(str(root), subjects)
    config = copy.deepcopy(CONFIG)
    config["streamlines"].update({"connectivity_matrix": "blocs.npy",
                                  "connectivity_nb_blocs": [2, 1, 2]})
    for subject in subjects:
        np.save(root / subject / "blocs.npy", np.eye(4, dtype=int))
    out = str(folder / "ours.hdf5")
    create_hdf5_dataset(str(root), out, config, subjects[:2], subjects[2:],
                        [], step_size=1.5)
    return out


def test_the_reference_reader_reads_our_files(our_file):
    read = read_as_reference_reader(our_file)
    assert read["splits"] == {"training": ["sub-01", "sub-02"],
                              "validation": ["sub-03"], "testing": []}
    assert read["step_size"] == 1.5 and read["compress"] is None
    assert read["volume_groups"] == ["input", "wm_mask"]
    assert read["nb_features"] == [4, 1]
    dataset = MultiSubjectDataset(our_file)
    dataset.load_data()
    for subset in (dataset.training_set, dataset.validation_set):
        for subj_idx, subject_id in enumerate(subset.subjects):
            ours = subset.get_subject(subj_idx).sft_data_list[0]
            theirs = read["subjects"][subject_id]["streamlines"]
            sft = theirs["sft"]
            assert len(sft) == ours.nb_streamlines
            for got, expected in zip(sft.streamlines, ours.get_streamlines()):
                assert np.array_equal(got, expected)
            assert np.array_equal(theirs["lengths_mm"], ours.lengths_mm)
            assert np.array_equal(sft.data_per_streamline["weight"],
                                  ours.get_data_per_streamline()["weight"])
            assert theirs["connectivity_nb_blocs"] == [2, 1, 2]
            assert np.array_equal(theirs["connectivity_matrix"],
                                  np.eye(4, dtype=int))


def test_the_reference_reader_check_catches_an_old_version(our_file,
                                                           tmp_path):
    """Reference versions that wrote 'version' (2) warn when a file's is
    below 2: the check fails on such a file."""
    path = tmp_path / "copy.hdf5"
    path.write_bytes(open(our_file, "rb").read())
    with h5py.File(path, "r+") as hdf:
        hdf.attrs["version"] = 1
    with pytest.raises(AssertionError, match="version"):
        read_as_reference_reader(str(path))


def test_architecture_counts_one_feature_in_a_3d_volume(tmp_path):
    """A volume stored as (X, Y, Z), without a feature axis, has one
    feature; its last axis is not a feature count."""
    from dwi_ml.data.hdf5.architecture import describe_hdf5

    subject = make_example_subject(np.random.default_rng(0), dims=(8, 9, 10),
                                   nb_features=3)
    path = tmp_path / "ref.hdf5"
    write_reference_hdf5(path, {"s1": subject}, training_subjs=["s1"])
    with h5py.File(path, "r+") as f:
        del f["s1/input/data"]
        f["s1/input/data"] = np.zeros((8, 9, 10), dtype=np.float32)
    lines = [line.strip() for line in describe_hdf5(str(path))]
    assert "input: type volume, nb_features 1" in lines
