"""Creation of dwi_ml HDF5 files from tiny NIfTI and tractogram files."""
import filecmp
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import h5py
import nibabel as nib
import numpy as np
import pytest
from dipy.io.streamline import load_tractogram
from hdf5_test_data import (
    CONFIG,
    NB_STREAMLINES,
    SHAPE,
    VOXEL_SIZES,
    grid_affine,
    random_streamlines,
    save_nifti,
    save_streamlines,
    vox_to_mm_lengths,
    write_dataset,
    write_subject,
    write_subject_lists,
)

from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from dwi_ml.cli.dwiml_hdf5_print_architecture import main as print_main
from dwi_ml.data.hdf5 import layout, tractograms
from dwi_ml.data.hdf5 import writer as writer_module
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.writer import (
    STREAMLINE_CHUNK_ROWS,
    StreamlinePointsWriter,
)
from dwi_ml.data.packed import make_array_sequence
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.tolerances import EPS32, rounding_atol

SUBJECTS = ("sub-01", "sub-02", "sub-03")
DATE = "01 January 2000 00:00:00"

# A stored point went from the source file (float32, in mm or voxels)
# through affine maps both ways to float32 voxels: within ~8 roundings of
# values below |A| |x| + |t| mm, read back in voxels of >= 2 mm.
MAX_MM = max(np.multiply(SHAPE, VOXEL_SIZES)) + np.abs(grid_affine()[:3, 3]).max()
POINT_ATOL_MM = rounding_atol(MAX_MM, 8)
POINT_ATOL_VOX = POINT_ATOL_MM / min(VOXEL_SIZES)


def assert_lengths_mm_close(got, streamlines_vox, expected):
    """Lengths in mm equal up to rounding: each step is off by its two
    ends' errors, and the float32 length rounds twice (sum, store)."""
    nb_steps = np.array([len(s) - 1 for s in streamlines_vox])
    bound = 2 * POINT_ATOL_MM * nb_steps + rounding_atol(expected, 2)
    assert np.all(np.abs(np.asarray(got) - expected) <= bound)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three subjects written once; tests must not change them."""
    root = tmp_path_factory.mktemp("data") / "dwi_ml_ready"
    return str(root), write_dataset(str(root), SUBJECTS)


def create(root, out, config=CONFIG, training=SUBJECTS[:2],
           validation=SUBJECTS[2:], testing=(), **options):
    create_hdf5_dataset(root, str(out), config, list(training),
                        list(validation), list(testing), _date_time=DATE,
                        **options)
    return h5py.File(out, "r")


def read_streamlines(group):
    return make_array_sequence(group["data"][:], group["offsets"][:],
                               group["lengths"][:])


def config_with(**groups):
    config = json.loads(json.dumps(CONFIG))
    config.update(groups)
    return config


def test_layout_keys_attrs_and_dtypes(dataset, tmp_path):
    root, _ = dataset
    with create(root, tmp_path / "out.h5") as hdf:
        attrs = hdf.attrs
        for key, subjects in (("training_subjs", SUBJECTS[:2]),
                              ("validation_subjs", SUBJECTS[2:]),
                              ("chosen_subjs", SUBJECTS)):
            string_info = h5py.check_string_dtype(attrs.get_id(key).dtype)
            assert string_info.encoding == "utf-8" and string_info.length \
                is None
            assert list(attrs[key]) == list(subjects)
        assert layout.read_subject_list(attrs, "testing") == []
        for key in ("step_size", "nb_points", "compress"):
            assert attrs[key] == layout.NOT_DEFINED
        assert json.loads(attrs["groups_config"]) == CONFIG
        assert attrs["data_and_time"] == DATE
        assert attrs["version"] == layout.FORMAT_VERSION
        assert sorted(hdf.keys()) == list(SUBJECTS)

        volume = hdf["sub-01/input"]
        assert volume.attrs["type"] == layout.VOLUME_TYPE
        assert volume.attrs["affine"].dtype == np.float64
        # Sizes and translations exact in float32: stored exactly.
        np.testing.assert_array_equal(volume.attrs["affine"], grid_affine())
        assert volume.attrs["voxres"].dtype == np.float32
        np.testing.assert_array_equal(volume.attrs["voxres"], VOXEL_SIZES)
        assert volume.attrs["nb_features"] == 4
        assert volume["data"].shape == SHAPE + (4,)
        assert volume["data"].dtype == np.float32
        assert hdf["sub-01/wm_mask/data"].shape == SHAPE + (1,)

        group = hdf["sub-01/streamlines"]
        nb = NB_STREAMLINES["bundle_1.trk"] + NB_STREAMLINES["bundle_2.trk"]
        assert group.attrs["type"] == layout.STREAMLINES_TYPE
        assert group.attrs["space"] == layout.STREAMLINE_SPACE
        assert group.attrs["origin"] == layout.STREAMLINE_ORIGIN
        np.testing.assert_array_equal(group.attrs["affine"], grid_affine())
        assert list(group.attrs["dimensions"]) == list(SHAPE)
        np.testing.assert_array_equal(group.attrs["voxel_sizes"], VOXEL_SIZES)
        assert group.attrs["voxel_order"] == "RAS"
        assert group["data"].dtype == np.float32
        assert group["data"].shape == (group["lengths"][:].sum(), 3)
        assert group["data"].chunks[0] <= 4096
        assert group["data"].compression is None
        for key, dtype in (("offsets", np.int64), ("lengths", np.int64),
                           ("euclidean_lengths", np.float32)):
            assert group[key].dtype == dtype and group[key].shape == (nb,)
        assert list(group["data_per_streamline"].keys()) == ["weight"]
        assert group["data_per_streamline/weight"].shape == (nb, 1)


def test_streamlines_match_source_in_vox_corner(dataset, tmp_path):
    root, written = dataset
    with create(root, tmp_path / "out.h5") as hdf:
        for subject in SUBJECTS:
            group = hdf[f"{subject}/streamlines"]
            stored = read_streamlines(group)
            expected, expected_weights = [], []
            for name in ("bundle_1.trk", "bundle_2.trk"):
                sft = load_tractogram(os.path.join(root, subject,
                                                   "tractograms", name),
                                      "same")
                sft.to_vox()
                sft.to_corner()
                expected += list(sft.streamlines)
                expected_weights.append(written[subject]["dps"][name]["weight"])
            assert len(stored) == len(expected)
            for got, want in zip(stored, expected):
                np.testing.assert_allclose(got, want, rtol=0,
                                           atol=POINT_ATOL_VOX)
            np.testing.assert_allclose(group["data_per_streamline/weight"][:],
                                       np.concatenate(expected_weights),
                                       rtol=EPS32)   # one float32 store
            assert_lengths_mm_close(group["euclidean_lengths"][:], expected,
                                    vox_to_mm_lengths(expected))


def test_tck_with_reference_and_trx(dataset, tmp_path):
    root, written = dataset
    config = config_with(streamlines={
        "type": "streamlines", "reference": "wm_mask",
        "files": ["tractograms/bundle_3.tck", "tractograms/bundle_4.trx"]})
    with create(root, tmp_path / "out.h5", config) as hdf:
        stored = read_streamlines(hdf["sub-02/streamlines"])
        assert list(hdf["sub-02/streamlines/data_per_streamline"]) == []
    source = written["sub-02"]["streamlines"]
    expected = source["bundle_3.tck"] + source["bundle_4.trx"]
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=POINT_ATOL_VOX)


def test_upper_case_trx_is_a_one_line_error(dataset, tmp_path):
    """dipy reads '.trx' only: a '.TRX' passed our extension check, then
    dipy's load returned False and the creation failed on it."""
    root = str(tmp_path / "dwi_ml_ready")
    shutil.copytree(dataset[0], root)
    for subject in SUBJECTS:
        folder = os.path.join(root, subject, "tractograms")
        os.rename(os.path.join(folder, "bundle_4.trx"),
                  os.path.join(folder, "bundle_4.TRX"))
    config = config_with(streamlines={
        "type": "streamlines", "reference": "wm_mask",
        "files": ["tractograms/bundle_4.TRX"]})
    with pytest.raises(DwiMLUserError) as error:
        create(root, tmp_path / "out.h5", config)
    message = str(error.value)
    assert "\n" not in message and "bundle_4.TRX" in message
    assert "lower-case extension '.trx'" in message and "'.TRX'" in message
    assert not (tmp_path / "out.h5").exists()


def test_features_concatenated_in_order_and_none_keeps_values(dataset,
                                                              tmp_path):
    root, written = dataset
    config = config_with(input={
        "type": "volume", "files": ["dwi/peaks.nii.gz", "dwi/fa.nii.gz"],
        "standardization": "none"})
    with create(root, tmp_path / "out.h5", config) as hdf:
        data = hdf["sub-03/input/data"][:]
    # float32 NIfTI values copied without arithmetic.
    np.testing.assert_array_equal(data[..., :3], written["sub-03"]["peaks"])
    np.testing.assert_array_equal(data[..., 3], written["sub-03"]["fa"])


def test_step_size_nb_points_and_compress(dataset, tmp_path):
    root, _ = dataset
    with create(root, tmp_path / "raw.h5") as hdf:
        raw = read_streamlines(hdf["sub-01/streamlines"])
    with create(root, tmp_path / "step.h5", step_size=1.5) as hdf:
        assert hdf.attrs["step_size"] == 1.5
        group = hdf["sub-01/streamlines"]
        stored = read_streamlines(group)
        mm_lengths = group["euclidean_lengths"][:]
    for streamline, source, length_mm in zip(stored, raw, mm_lengths):
        # The reference's convention: ceil(L / 1.5) points, equally spaced
        # along the source curve (steps of L / (n - 1), about 1.5 mm).
        source_mm = vox_to_mm_lengths([source])[0]
        assert len(streamline) == max(np.ceil(source_mm / 1.5), 2)
        arc_step_mm = source_mm / (len(streamline) - 1)
        assert 1.5 <= arc_step_mm < 1.5 * len(streamline) / (len(streamline) - 2)
        steps_mm = np.linalg.norm(np.diff(streamline, axis=0) * VOXEL_SIZES,
                                  axis=1)
        # Each step is off by its two ends' errors.
        assert np.all(steps_mm <= arc_step_mm + 2 * POINT_ATOL_MM)  # chords
        np.testing.assert_allclose(np.median(steps_mm), arc_step_mm,
                                   rtol=0, atol=2 * POINT_ATOL_MM)
        assert_lengths_mm_close([length_mm], [streamline], steps_mm.sum())
        np.testing.assert_allclose(streamline[[0, -1]], source[[0, -1]],
                                   rtol=0, atol=POINT_ATOL_VOX)

    with create(root, tmp_path / "points.h5", nb_points=7) as hdf:
        assert hdf.attrs["nb_points"] == 7
        assert np.all(hdf["sub-01/streamlines/lengths"][:] == 7)

    out = tmp_path / "compress.h5"
    paths = write_subject_lists(tmp_path, SUBJECTS[:1])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    create_main([root, str(out), str(config), *paths, "--compress"])
    with h5py.File(out, "r") as hdf:
        assert hdf.attrs["compress"] == 0.01  # the reference's default
        group = hdf["sub-01/streamlines"]
        compressed = read_streamlines(group)
        lengths_mm = vox_to_mm_lengths(compressed)
        assert_lengths_mm_close(group["euclidean_lengths"][:], compressed,
                                lengths_mm)
    # Straight runs lose their inner points (segments up to 10 mm); the
    # corners stay, so the length in mm does not change.
    assert compressed._lengths.sum() < raw._lengths.sum() / 2
    for streamline, source in zip(compressed, raw):
        distances = np.linalg.norm(streamline[:, None] - source[None], axis=-1)
        # A subset of the points.
        assert np.all(distances.min(axis=1) <= np.sqrt(3) * POINT_ATOL_VOX)
        assert np.all(vox_to_mm_lengths(
            [streamline[i:i + 2] for i in range(len(streamline) - 1)])
            <= 10 + 2 * POINT_ATOL_MM)
    # Only (float32-)collinear points go: the length changes by rounding.
    assert_lengths_mm_close(lengths_mm, raw, vox_to_mm_lengths(raw))


def test_remove_invalid_drops_and_counts(tmp_path, caplog):
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    rng = np.random.default_rng(5)
    valid = random_streamlines(rng, 4)
    outside = [s + [0, 0, SHAPE[2]] for s in random_streamlines(rng, 2)]
    save_streamlines(os.path.join(root, "sub-01", "tractograms",
                                  "bundle_1.trk"),
                     [valid[0], outside[0], valid[1], valid[2], outside[1],
                      valid[3]],
                     dps={"weight": np.arange(6, dtype=np.float32)[:, None]})
    removed = create_hdf5_dataset(root, str(tmp_path / "out.h5"), CONFIG,
                                  ["sub-01"], [], [], remove_invalid=True)
    assert removed == {"sub-01": {"streamlines": 2}}
    assert "sub-01" in caplog.text and "removed 2 streamlines" in caplog.text
    with h5py.File(tmp_path / "out.h5", "r") as hdf:
        group = hdf["sub-01/streamlines"]
        stored = read_streamlines(group)
        weights = group["data_per_streamline/weight"][:, 0]
    nb_bundle_2 = NB_STREAMLINES["bundle_2.trk"]
    assert len(stored) == 4 + nb_bundle_2
    for got, want in zip(stored[:4], valid):
        np.testing.assert_allclose(got, want, rtol=0, atol=POINT_ATOL_VOX)
    np.testing.assert_array_equal(weights[:4], [0, 2, 3, 5])


def test_repeated_points_are_stored_once_and_far_faces_are_inside(
        tmp_path, caplog):
    # Before: a repeated point was kept (a zero target: class 0 for a
    # classification getter), a streamline of equal points stored with 1
    # point once resampled (then refused by training), and a point on a far
    # face (dipy's check accepts it) refused as outside.
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    rng = np.random.default_rng(6)
    valid = random_streamlines(rng, 2)
    repeated = np.repeat(valid[1], [1, 3] + [1] * (len(valid[1]) - 2), axis=0)
    # Exact in float32 through the affine: corner (10, 12, 4) is on the
    # far faces of x and y.
    far_face = np.array([[5., 6., 4.], [10., 12., 4.]])
    stuck = np.array([[5., 5., 5.]] * 3)
    path = os.path.join(root, "sub-01", "tractograms", "bundle_1.trk")
    weights = {"weight": np.zeros((3, 1), np.float32)}
    save_streamlines(path, [valid[0], repeated, far_face], dps=weights)
    out = str(tmp_path / "out.h5")
    create_hdf5_dataset(root, out, CONFIG, ["sub-01"], [], [])
    assert ("removed 2 repeated consecutive points" in caplog.text
            and "bundle_1.trk" in caplog.text)
    with h5py.File(out, "r") as hdf:
        stored = read_streamlines(hdf["sub-01/streamlines"])
    assert [len(streamline) for streamline in stored[:3]] == [
        len(valid[0]), len(valid[1]), 2]
    for got, want in zip(stored[:3], [valid[0], valid[1], far_face]):
        np.testing.assert_allclose(got, want, rtol=0, atol=POINT_ATOL_VOX)
    # All points equal: no direction, as a single point.
    save_streamlines(path, [valid[0], stuck, far_face], dps=weights)
    with pytest.raises(DwiMLUserError, match=(
            r"bundle_1.trk': 1 of 3 streamlines have a single point, or all "
            r"their points equal \(expected at least 2 distinct\); use "
            "--remove_invalid to drop them.")):
        create_hdf5_dataset(root, out + "2", CONFIG, ["sub-01"], [], [])
    removed = create_hdf5_dataset(root, out + "3", CONFIG, ["sub-01"], [], [],
                                  remove_invalid=True)
    assert removed == {"sub-01": {"streamlines": 1}}


def test_a_tractogram_mostly_off_the_volume_asks_for_its_space(
        tmp_path, caplog):
    # All 3 streamlines 100 voxels off: "use --remove_invalid to drop them"
    # dropped the whole file; the file is in another space.
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    path = os.path.join(root, "sub-01", "tractograms", "bundle_1.trk")
    shifted = [s + 100. for s in random_streamlines(
        np.random.default_rng(8), 3)]
    save_streamlines(path, shifted,
                     dps={"weight": np.zeros((3, 1), np.float32)})
    elsewhere = ("is the file in the space of the subject's reference volume "
                 "(a .tck has no header: its points must be in that volume's "
                 "RAS mm)?")
    with pytest.raises(DwiMLUserError) as error:
        create_hdf5_dataset(root, str(tmp_path / "out.h5"), CONFIG,
                            ["sub-01"], [], [])
    assert str(error.value).endswith(
        f"bundle_1.trk': 3 of 3 streamlines have points outside the volume "
        f"of shape {SHAPE}; {elsewhere}")
    # Dropped with --remove_invalid, the warning names the file and asks.
    create_hdf5_dataset(root, str(tmp_path / "out2.h5"), CONFIG,
                        ["sub-01"], [], [], remove_invalid=True)
    assert [record.getMessage().split("': ", 1)[1]
            for record in caplog.records if "dropping" in record.getMessage()
            and "bundle_1.trk" in record.getMessage()] == [
        f"dropping 3 of its 3 streamlines, outside the volume; {elsewhere}"]


def test_one_subject_id_is_one_subject_and_a_config_list_is_named(tmp_path):
    """A string was a list of its letters ("subject '-' has no folder");
    a config given as a list was a TypeError of os.stat."""
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    out = str(tmp_path / "out.h5")
    create_hdf5_dataset(root, out, CONFIG, "sub-01", [], [])
    with h5py.File(out, "r") as hdf:
        assert list(hdf.attrs["training_subjs"]) == ["sub-01"]
    with pytest.raises(DwiMLUserError, match=(
            r"^groups config: expected a JSON file's path or a dict, found "
            r"list \[")):
        create_hdf5_dataset(root, str(tmp_path / "out2.h5"), [CONFIG],
                            ["sub-01"], [], [])


def test_a_loop_resampled_to_one_point_is_refused_or_dropped(tmp_path):
    # At --nb_points 2 a streamline back at its start is 2 equal points:
    # stored as such (zero targets) before.
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    rng = np.random.default_rng(7)
    valid = random_streamlines(rng, 2)
    loop = np.array([[1., 1., 1.], [3., 1., 1.], [1., 1., 1.]])
    path = os.path.join(root, "sub-01", "tractograms", "bundle_1.trk")
    save_streamlines(path, [valid[0], loop, valid[1]],
                     dps={"weight": np.arange(3, dtype=np.float32)[:, None]})
    with pytest.raises(DwiMLUserError, match=(
            "bundle_1.trk': 1 streamlines have fewer than 2 distinct points "
            "once resampled")):
        create_hdf5_dataset(root, str(tmp_path / "out.h5"), CONFIG,
                            ["sub-01"], [], [], nb_points=2)
    out = str(tmp_path / "out2.h5")
    removed = create_hdf5_dataset(root, out, CONFIG, ["sub-01"], [], [],
                                  nb_points=2, remove_invalid=True)
    assert removed == {"sub-01": {"streamlines": 1}}
    with h5py.File(out, "r") as hdf:
        group = hdf["sub-01/streamlines"]
        stored = read_streamlines(group)
        weights = group["data_per_streamline/weight"][:, 0]
    nb_other = NB_STREAMLINES["bundle_2.trk"]
    assert len(stored) == 2 + nb_other and len(weights) == 2 + nb_other
    # The dps rows stay with their streamlines: the loop's (1) is gone.
    np.testing.assert_array_equal(weights[:2], [0, 2])
    for got, want in zip(stored[:2], valid):
        np.testing.assert_allclose(got[[0, -1]], want[[0, -1]], rtol=0,
                                   atol=POINT_ATOL_VOX)


def test_remove_invalid_skips_an_empty_file_of_a_group(tmp_path, caplog):
    # A bundle found empty in one subject stopped the whole creation, with
    # or without --remove_invalid.
    root = str(tmp_path / "ready")
    write_subject(root, "sub-01")
    path = os.path.join(root, "sub-01", "tractograms", "bundle_2.trk")
    _empty_trk(path)
    with pytest.raises(DwiMLUserError, match=(
            "bundle_2.trk': the tractogram is empty \\(0 streamlines\\); use "
            "--remove_invalid to skip it.")):
        create_hdf5_dataset(root, str(tmp_path / "out.h5"), CONFIG,
                            ["sub-01"], [], [])
    out = str(tmp_path / "out2.h5")
    assert create_hdf5_dataset(root, out, CONFIG, ["sub-01"], [], [],
                               remove_invalid=True) == {"sub-01": {"streamlines": 0}}
    assert "bundle_2.trk': the tractogram is empty (0 streamlines); " \
        "skipped." in caplog.text
    with h5py.File(out, "r") as hdf:
        stored = read_streamlines(hdf["sub-01/streamlines"])
    assert len(stored) == NB_STREAMLINES["bundle_1.trk"]
    # Nothing left at all: the reasons, all of them (it named the volume's
    # bounds only).
    _empty_trk(os.path.join(root, "sub-01", "tractograms", "bundle_1.trk"))
    with pytest.raises(DwiMLUserError) as error:
        create_hdf5_dataset(root, str(tmp_path / "out3.h5"), CONFIG,
                            ["sub-01"], [], [], remove_invalid=True)
    assert str(error.value) == (
        "subject 'sub-01', group 'streamlines': no streamline left after "
        "removing 0 streamlines outside the volume or with fewer than 2 "
        "distinct points, and skipping empty files.")


def _replace_volume(path, shape=SHAPE + (3,), translation=None, value=None,
                    dtype=np.float32):
    data = np.ones(shape, dtype)
    if value is not None:
        data.flat[7] = value
    affine = None if translation is None else grid_affine(
        translation=translation)
    if dtype == np.float32:
        save_nifti(path, data, affine)
    else:
        nib.save(nib.Nifti1Image(data, grid_affine()), path)


def _other_grid_trk(path):
    other = nib.Nifti1Image(np.zeros((11, 12, 8), np.float32), grid_affine())
    save_streamlines(path, random_streamlines(np.random.default_rng(1), 3),
                     other)


def _remove_trk_files(folder):
    for name in os.listdir(folder):
        if name.endswith(".trk"):
            os.remove(os.path.join(folder, name))


def _empty_trk(path):
    save_streamlines(path, [])


def _outside_trk(path):
    streamlines = random_streamlines(np.random.default_rng(2), 3)
    save_streamlines(path, [streamlines[0] - [3, 0, 0]] + streamlines[1:],
                     dps={"weight": np.ones((3, 1), np.float32)})


BAD_INPUTS = {
    "no_folder": ({"training": ["sub-01", "sub-09"]}, None,
                  ["sub-09", "no folder"]),
    "twice_in_list": ({"training": ["sub-01", "sub-01"]}, None,
                      ["sub-01", "twice", "training"]),
    "two_lists": ({"validation": ["sub-01"]}, None,
                  ["sub-01", "training", "validation"]),
    "missing_file": ({}, ("dwi/fa.nii.gz", os.remove),
                     ["sub-02", "'input'", "fa.nii.gz", "does not exist"]),
    "glob_nothing": ({}, ("tractograms", _remove_trk_files),
                     ["sub-02", "'streamlines'", "*.trk", "matches no"]),
    "other_shape": ({}, ("dwi/peaks.nii.gz", lambda p: _replace_volume(
        p, shape=(10, 12, 9, 3))), ["sub-02", "'input'", "peaks.nii.gz",
                                    "(10, 12, 9)", "(10, 12, 8)"]),
    "other_affine": ({}, ("dwi/peaks.nii.gz", lambda p: _replace_volume(
        p, translation=(0, 0, 0))), ["sub-02", "'input'", "peaks.nii.gz",
                                     "-10.0", "[0.0, 0.0, 3.0, 0.0]"]),
    # Same grid, another width: a model takes one input width.
    "other_features": ({}, ("dwi/peaks.nii.gz", lambda p: _replace_volume(
        p, shape=(10, 12, 8, 4))), ["sub-02", "'input'", "expected 4 "
                                    "features", "'sub-01'", "found 5",
                                    "peaks.nii.gz"]),
    "nan": ({}, ("dwi/peaks.nii.gz", lambda p: _replace_volume(
        p, value=np.nan)), ["sub-02", "'input'", "peaks.nii.gz", "NaN"]),
    "inf": ({}, ("dwi/fa.nii.gz", lambda p: _replace_volume(
        p, shape=SHAPE, value=np.inf)), ["sub-02", "'input'", "fa.nii.gz",
                                         "Inf"]),
    # It said "NaN or Inf", after numpy's overflow warning.
    "beyond_float32": ({}, ("dwi/fa.nii.gz", lambda p: _replace_volume(
        p, shape=SHAPE, value=1e39, dtype=np.float64)), [
            "sub-02", "fa.nii.gz", "found 1 value(s) beyond float32's range "
            "(|value| > 3.4e+38); expected finite values only."]),
    "trk_other_grid": ({}, ("tractograms/bundle_2.trk", _other_grid_trk),
                       ["sub-02", "'streamlines'", "bundle_2.trk",
                        "[11, 12, 8]", "[10, 12, 8]"]),
    "empty_trk": ({}, ("tractograms/bundle_2.trk", _empty_trk),
                  ["sub-02", "'streamlines'", "bundle_2.trk", "empty"]),
    "outside": ({}, ("tractograms/bundle_1.trk", _outside_trk),
                ["sub-02", "'streamlines'", "bundle_1.trk", "1 of 3",
                 "outside", "--remove_invalid"]),
    "unknown_key": ({"config": config_with(wm_mask={
        "type": "volume", "files": ["masks/wm.nii.gz"], "colour": 1})},
        None, ["'wm_mask'", "unknown key 'colour'"]),
    "unknown_type": ({"config": config_with(wm_mask={
        "type": "surface", "files": ["masks/wm.nii.gz"]})},
        None, ["'wm_mask'", "'surface'"]),
    "bad_standardization": ({"config": config_with(wm_mask={
        "type": "volume", "files": ["masks/wm.nii.gz"],
        "standardization": "zscore"})}, None, ["'wm_mask'", "'zscore'"]),
    "bad_reference": ({"config": config_with(streamlines={
        "type": "streamlines", "files": ["tractograms/bundle_3.tck"],
        "reference": "streamlines"})}, None,
        ["'streamlines'", "reference"]),
    # JSON keeps the last of two groups of one name: the first was lost.
    "duplicate_group": ({"config_text": json.dumps(CONFIG)[:-1] + ', "input":'
                         ' {"type": "volume", "files": ["masks/wm.nii.gz"]}}'},
                        None, ["config '", "expected each key once in an "
                               "object, found 'input' 2 times"]),
    # The std_mask entry was reported as the group's file.
    "missing_std_mask": ({"config": config_with(input={
        "type": "volume", "files": ["dwi/fa.nii.gz"],
        "standardization": "independent",
        "std_mask": ["masks/nope.nii.gz"]})}, None,
        ["subject 'sub-01', group 'input', std_mask file '",
         f"{os.path.join('masks', 'nope.nii.gz')}': file does not exist."]),
    # It said "found '.gz'".
    "nifti_as_streamlines": ({"config": config_with(streamlines={
        "type": "streamlines", "files": ["masks/wm.nii.gz"]})}, None,
        ["subject 'sub-01', group 'streamlines', file '",
         "wm.nii.gz': expected a tractogram ['.trk', '.tck', '.trx'], "
         "found '.nii.gz'."]),
    "missing_dps": ({"config": config_with(streamlines={
        "type": "streamlines", "files": ["tractograms/bundle_1.trk"],
        "dps_keys": ["seeds"]})}, None,
        ["sub-01", "'streamlines'", "bundle_1.trk", "'seeds'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_no_output(tmp_path, capsys, case):
    lists_and_config, change, expected = BAD_INPUTS[case]
    root = str(tmp_path / "ready")
    write_dataset(root, ["sub-01", "sub-02"])
    if change is not None:
        change[1](os.path.join(root, "sub-02", change[0]))
    config = tmp_path / "config.json"
    config.write_text(lists_and_config.get("config_text") or json.dumps(
        lists_and_config.get("config", CONFIG)))
    paths = write_subject_lists(
        tmp_path, lists_and_config.get("training", ["sub-01", "sub-02"]),
        lists_and_config.get("validation", []))
    out = tmp_path / "out" / "data.h5"
    out.parent.mkdir()
    with pytest.raises(SystemExit) as raised:
        create_main([root, str(out), str(config), *paths])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "error: " in error
    for piece in expected:
        assert piece in error, error
    assert os.listdir(out.parent) == []


def test_exclusive_options_and_bad_values(dataset, tmp_path):
    root, _ = dataset
    for options, expected in (
            ({"step_size": 1.0, "nb_points": 5}, "arguments step_size, "
             "nb_points: expected at most one of step_size, nb_points, "
             "compress, found 2."),
            ({"step_size": 0}, "argument 'step_size': expected a finite "
                               "number > 0, got 0."),
            ({"nb_points": 1}, "argument 'nb_points': expected an integer "
                               ">= 2, got 1."),
            ({"compress": -1.0}, "argument 'compress': expected a finite "
                                 "number > 0, got -1.0.")):
        with pytest.raises(DwiMLUserError) as error:
            create(root, tmp_path / "out.h5", **options)
        assert expected in str(error.value)
    assert not (tmp_path / "out.h5").exists()


def test_overwrite_needs_f(dataset, tmp_path, capsys):
    root, _ = dataset
    out = tmp_path / "out.h5"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    args = [root, str(out), str(config),
            *write_subject_lists(tmp_path, SUBJECTS[:1])]
    create_main(args)
    before = out.read_bytes()
    with pytest.raises(SystemExit) as raised:
        create_main(args + ["--nb_points", "4"])
    assert raised.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    create_main(args + ["--nb_points", "4", "-f"])
    with h5py.File(out, "r") as hdf:
        assert hdf.attrs["nb_points"] == 4


def test_bad_tractogram_of_the_last_subject_keeps_the_old_output(tmp_path,
                                                               capsys):
    # Tractograms are checked on the read that writes them, after the
    # other subjects: the failure must leave the previous output whole.
    root = str(tmp_path / "ready")
    write_dataset(root, SUBJECTS)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out" / "data.h5"
    out.parent.mkdir()
    args = [root, str(out), str(config),
            *write_subject_lists(tmp_path, SUBJECTS[:2], SUBJECTS[2:])]
    create_main(args)
    before = out.read_bytes()
    _outside_trk(os.path.join(root, SUBJECTS[2], "tractograms",
                              "bundle_2.trk"))
    with pytest.raises(SystemExit) as raised:
        create_main(args + ["--step_size", "1", "-f"])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "sub-03" in error and "bundle_2.trk" in error and "outside" in error
    assert os.listdir(out.parent) == ["data.h5"]
    assert out.read_bytes() == before


def test_same_inputs_give_identical_bytes(dataset, tmp_path):
    root, _ = dataset
    create(root, tmp_path / "a.h5", step_size=2.0).close()
    time.sleep(1.1)  # a timestamp, if any, would now differ
    create(root, tmp_path / "b.h5", step_size=2.0).close()
    assert filecmp.cmp(tmp_path / "a.h5", tmp_path / "b.h5", shallow=False)


def test_interrupted_creation_leaves_no_output(tmp_path):
    root = tmp_path / "ready"
    write_subject(str(root), "sub-000", shape=(48, 48, 32))
    subjects = [f"sub-{i:03d}" for i in range(3)]
    for subject in subjects[1:]:
        os.symlink(root / "sub-000", root / subject)
    config = config_with(streamlines={"type": "streamlines",
                                      "files": ["tractograms/*.trk"]})
    out = tmp_path / "out.h5"
    # The creation says when its first subject is in the temporary file,
    # then waits on its stdin: it is killed in the middle, deterministically.
    code = f"""
import sys
from dwi_ml.data.hdf5 import creation
write_subject = creation._write_subject
def write_then_wait(hdf_file, *args):
    removed = write_subject(hdf_file, *args)
    hdf_file.flush()
    print("written", flush=True)
    sys.stdin.read()  # until killed, or until the test closes stdin
    return removed
creation._write_subject = write_then_wait
creation.create_hdf5_dataset({str(root)!r}, {str(out)!r}, {config!r},
                             {subjects!r}, [], [])
"""
    process = subprocess.Popen([sys.executable, "-c", code],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        # Seconds, however slow the machine; the guard catches a hang only
        # (the suite has no timeout of its own).
        ready, _, _ = select.select([process.stdout], [], [], 600)
        assert ready, "no first subject after 600 s: a hang"
        assert process.stdout.readline() == "written\n", \
            "creation ended before writing its first subject"
        assert [p for p in tmp_path.glob(".out.h5.*.tmp")
                if p.stat().st_size > 0]
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        process.kill()
        process.communicate()
    assert not out.exists()


def test_print_architecture(dataset, tmp_path, capsys):
    root, _ = dataset
    create(root, tmp_path / "out.h5").close()
    print_main([str(tmp_path / "out.h5")])
    output = capsys.readouterr().out
    assert "training (2): sub-01, sub-02" in output
    assert "validation (1): sub-03" in output
    for subject in SUBJECTS:
        assert f"\n  {subject}\n" in output
    assert "input: type volume, nb_features 4" in output
    assert "data: shape (10, 12, 8, 4), dtype float32" in output
    assert "streamlines: type streamlines, nb_streamlines 10" in output
    assert "data_per_streamline/weight: shape (10, 1), dtype float32" in output
    assert f"version: {layout.FORMAT_VERSION}" in output


@pytest.mark.parametrize("content, message", [
    (b"not hdf5", "is not a dwi_ml HDF5 file: it is not an HDF5 file"),
    (None, "is not a dwi_ml HDF5 file: it is HDF5 but lacks the dwi_ml "
           "layout")])
def test_print_architecture_refuses_other_files(tmp_path, capsys, content,
                                                message):
    path = tmp_path / "file.h5"
    if content is None:
        with h5py.File(path, "w") as hdf:
            hdf.create_group("something")
    else:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as raised:
        print_main([str(path)])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err



@pytest.mark.parametrize("write_chunks", [2, None])
@pytest.mark.parametrize("run_sizes", [
    [0, 5, 4000, 90, 1], [4096], [4095, 1, 8192, 0, 10000, 3], [7],
    [0], [12000, 4096, 17]])
def test_points_writer_equals_writing_the_group_whole(tmp_path, run_sizes,
                                                      write_chunks,
                                                      monkeypatch):
    """Runs appended one by one give what writing the concatenation in one
    go gave (main's writer, inline here): values, chunks, filters, CRCs.
    With a buffer of 2 chunks, runs fill it, cross it and span several."""
    if write_chunks:
        monkeypatch.setattr(writer_module, "WRITE_ROWS",
                            write_chunks * STREAMLINE_CHUNK_ROWS)
    rng = np.random.default_rng(len(run_sizes))
    runs = [rng.uniform(0, 50, (n, 3)).astype(np.float32) for n in run_sizes]
    whole = np.concatenate(runs)
    with h5py.File(tmp_path / "a.h5", "w") as hdf:
        writer = StreamlinePointsWriter(hdf.create_group("g"))
        for run in runs:
            writer.append(run)
        dataset = writer.close()
        assert dataset.name == "/g/data"
        chunk_rows = min(STREAMLINE_CHUNK_ROWS, max(len(whole), 1))
        assert dataset.chunks == (chunk_rows, 3)
        assert dataset.dtype == np.float32 and dataset.shape == whole.shape
        assert dataset.compression is None and not dataset.fletcher32
        np.testing.assert_array_equal(dataset[:], whole)   # bitwise
        crc = hdf["g/data" + layout.CHECKSUM_SUFFIX]
        assert crc.fletcher32
        assert crc.attrs[layout.ROWS_PER_CHECKSUM_ATTR] == chunk_rows
        np.testing.assert_array_equal(
            crc[:], layout.row_block_checksums(whole, chunk_rows))


@pytest.mark.parametrize("step_size", [None, 0.5])
def test_group_of_files_is_the_concatenation_of_each_file_alone(
        tmp_path, monkeypatch, step_size):
    """Points go to the file one run at a time; a group of three files
    (several runs each, crossing chunk boundaries) stores bit for bit the
    concatenation of the three files, each created as a group alone."""
    monkeypatch.setattr(tractograms, "RESAMPLING_RUN_POINTS", 700)
    root = str(tmp_path / "dwi_ml_ready")
    write_subject(root, "sub-01")
    rng = np.random.default_rng(3)
    reference = os.path.join(root, "sub-01", "dwi", "fa.nii.gz")
    names = ("big_a.trk", "big_b.trk", "big_c.trk")
    for name, nb in zip(names, (300, 120, 250)):
        save_streamlines(os.path.join(root, "sub-01", "tractograms", name),
                         random_streamlines(rng, nb), reference,
                         {"weight": rng.uniform(0, 1, (nb, 1))
                          .astype(np.float32)})
    groups = {name: {"type": "streamlines", "dps_keys": ["weight"],
                     "files": [f"tractograms/{name}"]} for name in names}
    groups["all"] = {"type": "streamlines", "dps_keys": ["weight"],
                     "files": [f"tractograms/{name}" for name in names]}
    config = {"input": CONFIG["input"], **groups}
    with create(root, tmp_path / "out.h5", config, training=["sub-01"],
                validation=(), step_size=step_size) as hdf:
        alone = [hdf[f"sub-01/{name}"] for name in names]
        group = hdf["sub-01/all"]
        assert group["data"].shape[0] > 2 * STREAMLINE_CHUNK_ROWS
        for key in ("data", "lengths", "euclidean_lengths",
                    "data_per_streamline/weight"):
            np.testing.assert_array_equal(
                group[key][:], np.concatenate([g[key][:] for g in alone]))
        starts = np.cumsum([0] + [len(g["data"]) for g in alone[:-1]])
        np.testing.assert_array_equal(
            group["offsets"][:],
            np.concatenate([g["offsets"][:] + s
                            for g, s in zip(alone, starts)]))
        assert group["data"].chunks == (STREAMLINE_CHUNK_ROWS, 3)
        np.testing.assert_array_equal(
            group["data_crc32"][:],
            layout.row_block_checksums(group["data"][:],
                                       STREAMLINE_CHUNK_ROWS))
        for key in ("type", "space", "origin", "voxel_order"):
            assert group.attrs[key] == alone[0].attrs[key]
        for key in ("affine", "dimensions", "voxel_sizes"):
            np.testing.assert_array_equal(group.attrs[key],
                                          alone[0].attrs[key])
