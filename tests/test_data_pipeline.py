"""Synthetic subjects -> HDF5 -> MultiSubjectDataset, eager and lazy.

The dataset must give back the source .trk streamlines (in voxel space,
corner origin) and the standardized volumes, computed here independently.
"""
import os

import nibabel as nib
import numpy as np
import pytest
from dipy.io.streamline import load_tractogram
from training_data import make_training_hdf5

from dwi_ml.data.dataset import MultiSubjectDataset
from tests.tolerances import EPS32, rounding_atol


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pipeline"))
    return folder, make_training_hdf5(folder, nb_streamlines=80, seed=4)


def _source_streamlines(subject_folder):
    bundles = sorted(os.listdir(os.path.join(subject_folder, "bundles")))
    streamlines = []
    for name in bundles:
        sft = load_tractogram(os.path.join(subject_folder, "bundles", name),
                              "same", bbox_valid_check=True)
        sft.to_vox()
        sft.to_corner()
        streamlines.extend(np.asarray(s) for s in sft.streamlines)
    return streamlines


def _expected_input(subject_folder):
    """The standardized input volume, its affine, and the float32 error
    bound of the HDF5's copy: the raw values, mean and std rounded to
    float32 (3 roundings in values < max |raw|, divided by the std), then
    the quotient (1 rounding)."""
    dwi = nib.load(os.path.join(subject_folder, "dwi.nii.gz"))
    raw = np.asarray(dwi.dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(os.path.join(subject_folder,
                                            "wm_mask.nii.gz")).dataobj) > 0
    values = raw[mask]
    std = np.where(values.std(axis=0) > 0, values.std(axis=0), 1)
    data = (raw - values.mean(axis=0)) / std  # every voxel, as the reference
    atol = (rounding_atol(np.abs(raw).max() / std.min(), 3)
            + rounding_atol(np.abs(data).max(), 1))
    return data, dwi.affine, atol


@pytest.mark.parametrize("lazy", [False, True])
def test_dataset_gives_back_sources(data_folder, lazy):
    folder, hdf5_file = data_folder
    dataset = MultiSubjectDataset(hdf5_file, lazy=lazy)
    dataset.load_data()
    assert dataset.volume_groups == ["input", "wm_mask"]
    assert dataset.streamline_groups == ["streamlines"]
    assert dataset.nb_features == [45, 1]
    splits = {"training": dataset.training_set,
              "validation": dataset.validation_set,
              "testing": dataset.testing_set}
    assert [s.subjects for s in splits.values()] == [["subj-01"], ["subj-02"],
                                                      ["subj-03"]]
    for subset in splits.values():
        subject_folder = os.path.join(folder, "synthetic", "dwi_ml_ready",
                                      subset.subjects[0])
        subject = subset.get_subject(0)
        expected = _source_streamlines(subject_folder)
        sft_data = subject.sft_data_list[0]
        assert sft_data.nb_streamlines == len(expected)
        order = np.random.default_rng(0).permutation(len(expected))
        got = sft_data.get_streamlines(order)
        volume, affine, volume_atol = _expected_input(subject_folder)
        # Both sides convert the .trk's float32 mm to float32 voxels (dipy's
        # way and ours: up to 8 roundings), in mm values < the largest
        # coordinate times the largest voxel size, read back in voxels of
        # the smallest.
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        magnitude_vox = max(np.abs(s).max() for s in expected)
        atol_vox = rounding_atol(magnitude_vox * zooms.max() / zooms.min(), 8)
        for index, streamline in zip(order, got):
            np.testing.assert_allclose(streamline, expected[index], rtol=0,
                                       atol=atol_vox)
        assert np.array_equal(subset.get_lengths(0, 0),
                              [len(s) for s in expected])

        mri = subject.mri_data_list[0]
        # The NIfTI's float32 sform, read twice.
        np.testing.assert_allclose(mri.affine, affine, rtol=EPS32)
        tensor = mri.as_tensor("cpu")
        assert tensor.dtype.is_floating_point and tensor.shape == volume.shape
        np.testing.assert_allclose(tensor.numpy(), volume, rtol=0,
                                   atol=volume_atol)


def test_lengths_mm_are_in_mm_not_voxels(data_folder):
    _, hdf5_file = data_folder
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_validation=False, load_testing=False)
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    streamlines = sft_data.get_streamlines(np.arange(5))
    affine = sft_data.space_attributes[0]
    zoom = np.linalg.norm(affine[:3, :3], axis=0).max()
    for streamline, length_mm in zip(streamlines, sft_data.lengths_mm[:5]):
        steps_mm = np.linalg.norm(np.diff(streamline, axis=0)
                                  @ affine[:3, :3].T, axis=1)
        # Each float32 point is within EPS32 / 2 of its coordinates: each
        # step within that (times 2, in mm) relatively to its length; the
        # stored float32 length rounds once more.
        rel = rounding_atol(np.abs(streamline).max() * zoom / steps_mm.min(),
                            1) + EPS32
        assert length_mm == pytest.approx(steps_mm.sum(), rel=rel)
        steps_vox = np.linalg.norm(np.diff(streamline, axis=0), axis=1).sum()
        assert abs(length_mm - steps_vox) > 0.1
