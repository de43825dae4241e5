"""dwiml_hdf5_extract_data.py: round trip of volumes and streamlines."""
import os

import nibabel as nib
import numpy as np
import pytest
from dipy.io.streamline import load_tractogram
from hdf5_test_data import CONFIG, grid_affine, write_dataset

from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from tests.tolerances import rounding_atol

SUBJECTS = ("sub-01", "sub-02")
# The .trk files of the config's streamline group, in the order stored.
TRK_FILES = ("bundle_1.trk", "bundle_2.trk")


@pytest.fixture(scope="module")
def hdf5_and_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    written = write_dataset(str(root / "dwi_ml_ready"), SUBJECTS)
    hdf5_file = str(root / "data.hdf5")
    create_hdf5_dataset(str(root / "dwi_ml_ready"), hdf5_file, CONFIG,
                        [SUBJECTS[0]], [], [SUBJECTS[1]])
    return hdf5_file, written


def vox_corner_to_rasmm(points):
    return (np.asarray(points, np.float64) - 0.5) @ grid_affine()[:3, :3].T \
        + grid_affine()[:3, 3]


def test_volume_groups_come_back_with_values_and_affine(hdf5_and_sources,
                                                        tmp_path, capsys):
    hdf5_file, written = hdf5_and_sources
    source = written[SUBJECTS[1]]  # a testing subject: any split works
    out = str(tmp_path / "input.nii.gz")
    capsys.readouterr()
    extract_main([hdf5_file, SUBJECTS[1], "input", out])
    assert capsys.readouterr().out == (
        f"Group 'input' of subject '{SUBJECTS[1]}' written to {out}.\n")
    image = nib.load(out)
    np.testing.assert_array_equal(image.affine, grid_affine())
    # Scanner space in mm, in both the sform and the qform (a bare image
    # had sform code 2, qform code 0 and no units).
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1
    assert image.header.get_xyzt_units()[0] == "mm"
    # The qform is stored in float32: the quaternion (b, c, d: 1 rounding
    # each; the rotation's entries, sums of 2 products of them and a from
    # a square root: ~6 in all) times the voxel sizes (1), and the offsets
    # (1), on values below the largest voxel size and translation.
    qform, affine = image.get_qform(), grid_affine()
    np.testing.assert_allclose(
        qform[:3, :3], affine[:3, :3], rtol=0,
        atol=rounding_atol(np.abs(affine[:3, :3]).max(), 6 + 1) / 2)
    np.testing.assert_allclose(
        qform[:3, 3], affine[:3, 3], rtol=0,
        atol=rounding_atol(np.abs(affine[:3, 3]).max(), 1) / 2)
    np.testing.assert_array_equal(qform[3], [0, 0, 0, 1])
    # 'input' concatenates fa (1 feature) then peaks (3), standardization
    # 'none': the stored float32 values are the sources'.
    expected = np.concatenate([source["fa"][..., None], source["peaks"]], -1)
    assert image.get_fdata(dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), expected)

    out = str(tmp_path / "wm.nii")
    extract_main([hdf5_file, SUBJECTS[1], "wm_mask", out])
    image = nib.load(out)
    assert image.shape == source["wm"].shape  # one feature: 3-D
    np.testing.assert_array_equal(image.get_fdata(), source["wm"])
    np.testing.assert_array_equal(image.affine, grid_affine())


@pytest.mark.parametrize("extension", [".trk", ".trx", ".tck"])
def test_streamline_group_comes_back_in_subject_space(hdf5_and_sources,
                                                      tmp_path, extension,
                                                      capsys):
    hdf5_file, written = hdf5_and_sources
    source = written[SUBJECTS[0]]
    out = str(tmp_path / f"streamlines{extension}")
    reference = str(tmp_path / "ref.nii.gz")
    extract_main([hdf5_file, SUBJECTS[0], "wm_mask", reference])
    extract_main([hdf5_file, SUBJECTS[0], "streamlines", out])
    sft = load_tractogram(out, reference if extension == ".tck" else "same",
                          bbox_valid_check=False)
    expected = [vox_corner_to_rasmm(s) for name in TRK_FILES
                for s in source["streamlines"][name]]
    assert list(sft.streamlines._lengths) == [len(s) for s in expected]
    expected_points = np.concatenate(expected)
    # Each float32 write (source .trk, HDF5, output file) rounds by up to
    # eps * |coordinate|; VOX <-> RAS mm conversions add as much again.
    tolerance = 8 * np.finfo(np.float32).eps * np.abs(expected_points).max()
    np.testing.assert_allclose(sft.streamlines.get_data(), expected_points,
                               rtol=0, atol=tolerance)
    np.testing.assert_allclose(sft.affine, grid_affine())
    if extension == ".tck":
        assert "hold no data per streamline" in capsys.readouterr().err
        return
    # The config keeps only 'weight' as data_per_streamline.
    assert set(sft.data_per_streamline) == {"weight"}
    np.testing.assert_array_equal(
        np.asarray(sft.data_per_streamline["weight"]).ravel(),
        np.concatenate([source["dps"][name]["weight"]
                        for name in TRK_FILES]).ravel())


def test_bad_inputs_are_one_line_errors(hdf5_and_sources, tmp_path, capsys):
    hdf5_file, _ = hdf5_and_sources
    existing = tmp_path / "existing.nii.gz"
    existing.write_text("keep me")
    cases = [
        ([str(tmp_path / "missing.hdf5"), SUBJECTS[0], "input",
          str(tmp_path / "a.nii.gz")], "HDF5 file '"),
        ([hdf5_file, "sub-99", "input", str(tmp_path / "a.nii.gz")],
         "unknown subject id 'sub-99'"),
        ([hdf5_file, SUBJECTS[0], "typo", str(tmp_path / "a.nii.gz")],
         "no group 'typo'; available groups: input, wm_mask, streamlines"),
        ([hdf5_file, SUBJECTS[0], "input", str(tmp_path / "a.trk")],
         "a volume group is written to one of .nii, .nii.gz, found '.trk'"),
        ([hdf5_file, SUBJECTS[0], "streamlines", str(tmp_path / "a.nii")],
         "a streamline group is written to one of .trk, .tck, .trx"),
        ([hdf5_file, SUBJECTS[0], "input", str(tmp_path / "a.txt")],
         "found '.txt'"),
        ([hdf5_file, SUBJECTS[0], "streamlines", str(tmp_path / "a.npy")],
         "expected a stored connectivity matrix for a .npy output, found "
         "none"),
        ([hdf5_file, SUBJECTS[0], "input", str(existing)],
         "already exists; use -f"),
        ([hdf5_file, SUBJECTS[0], "input",
          str(tmp_path / "no_folder" / "a.nii")], "no_folder"),
        ([hdf5_file, SUBJECTS[0], "input", str(tmp_path)],
         f"output '{tmp_path}' is a folder; expected a .nii, .nii.gz, .trk, "
         ".tck, .trx or .npy file path."),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            extract_main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error, error
        assert error.count("\n") == 1, error
    assert existing.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["existing.nii.gz"]
    extract_main([hdf5_file, SUBJECTS[0], "input", str(existing), "-f"])
    assert nib.load(str(existing)).shape[-1] == 4
