"""A NIfTI whose qform and sform differ: nibabel and dipy take the sform as
its grid, while its pixdim (the header's voxel sizes) follows the qform.
Its tractograms, ours and dipy's, must be accepted against it."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import save_tractogram

from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_labels import (
    main as labels_main,
)
from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.cli.dwiml_score_tractogram import main as score_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.hdf5.tractograms import grid_difference, reference_info
from tests.tolerances import rounding_atol

SHAPE = (10, 12, 8)
SFORM = np.array([[1.2, 0, 0, -4], [0, 1.5, 0, -8], [0, 0, 2.5, -9],
                  [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("qform_sform")
    folder = root / "s1"
    os.makedirs(folder)
    image = nib.Nifti1Image(np.ones(SHAPE, np.float32), SFORM)
    image.set_sform(SFORM, code=2)
    image.set_qform(np.diag([2., 2., 2., 1.]), code=1)
    nifti = str(folder / "vol.nii.gz")
    nib.save(image, nifti)
    # Labels 1 (i < 5) and 2 (i >= 5) on the same grid.
    labels = np.ones(SHAPE, np.int16)
    labels[5:] = 2
    nib.save(nib.Nifti1Image(labels, image.affine, image.header),
             str(folder / "labels.nii.gz"))
    points_vox = np.linspace([1., 2., 2.], [8., 9., 5.], 8)
    rasmm = nib.affines.apply_affine(SFORM, points_vox)
    sft = StatefulTractogram([rasmm], nifti, Space.RASMM,
                             origin=Origin.NIFTI)
    for extension in ("trk", "trx"):
        save_tractogram(sft, str(folder / f"s.{extension}"))
    return {"root": root, "folder": folder, "nifti": nifti, "rasmm": rasmm}


def test_the_file_is_what_the_test_means():
    """pixdim 2 x 2 x 2, the grid's voxels 1.2 x 1.5 x 2.5 mm."""
    # Built in the fixture's way, without writing it.
    image = nib.Nifti1Image(np.ones(SHAPE, np.float32), SFORM)
    image.set_sform(SFORM, code=2)
    image.set_qform(np.diag([2., 2., 2., 1.]), code=1)
    np.testing.assert_array_equal(image.header.get_zooms(), [2., 2., 2.])
    np.testing.assert_allclose(nib.affines.voxel_sizes(image.affine),
                               [1.2, 1.5, 2.5])


@pytest.mark.parametrize("extension", ["trk", "trx"])
def test_dipy_tractograms_of_the_subject_match_its_grid(subject, extension):
    tractogram = str(subject["folder"] / f"s.{extension}")
    assert grid_difference(reference_info(tractogram),
                           reference_info(subject["nifti"]),
                           subject["nifti"]) is None


def test_another_grid_is_still_refused_with_its_voxel_sizes(subject,
                                                            tmp_path):
    other = SFORM.copy()
    other[0, 0] = 1.3
    path = str(tmp_path / "other.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), other), path)
    text = grid_difference(reference_info(path),
                           reference_info(subject["nifti"]), subject["nifti"])
    assert "voxel sizes [1.3, 1.5, 2.5] here, [1.2, 1.5, 2.5] there" in text


@pytest.mark.parametrize("extension", ["trk", "trx"])
def test_created_extracted_scored_and_connected(subject, tmp_path, extension):
    root = subject["root"]
    hdf5_file = str(tmp_path / "data.hdf5")
    create_hdf5_dataset(str(root), hdf5_file, {
        "input": {"type": "volume", "files": ["vol.nii.gz"],
                  "standardization": "none"},
        "sl": {"type": "streamlines", "files": [f"s.{extension}"]}},
        ["s1"], [], [])
    extracted = str(tmp_path / "x.trk")
    extract_main([hdf5_file, "s1", "sl", extracted])
    points = nib.streamlines.load(extracted).streamlines[0]
    # float32 points through ~16 roundings (file space, voxels, mm).
    atol = rounding_atol(np.abs(subject["rasmm"]).max(), 16)
    np.testing.assert_allclose(points, subject["rasmm"], rtol=0, atol=atol)

    out_json = str(tmp_path / "scores.json")
    score_main([extracted, str(subject["folder"] / "s.trk"),
                subject["nifti"], "--out_json", out_json])
    with open(out_json) as file:
        scores = json.load(file)
    assert scores["points_within_1_vox"] == 1.0

    matrix_path = str(tmp_path / "m.npy")
    labels_main([extracted, str(subject["folder"] / "labels.nii.gz"),
                 matrix_path])
    matrix = np.load(matrix_path)
    # One streamline from label 1 (voxel i = 1) to label 2 (i = 8).
    assert matrix.sum() == 1
    assert matrix[0, 1] + matrix[1, 0] == 1
