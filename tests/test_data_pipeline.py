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
    dwi = nib.load(os.path.join(subject_folder, "dwi.nii.gz"))
    data = np.asarray(dwi.dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(os.path.join(subject_folder,
                                            "wm_mask.nii.gz")).dataobj) > 0
    values = data[mask]
    std = values.std(axis=0)
    data = (data - values.mean(axis=0)) / np.where(std > 0, std, 1)
    data[~mask] = 0
    return data, dwi.affine


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
        for index, streamline in zip(order, got):
            np.testing.assert_allclose(streamline, expected[index], atol=1e-4)
        assert np.array_equal(subset.get_lengths(0, 0),
                              [len(s) for s in expected])

        volume, affine = _expected_input(subject_folder)
        mri = subject.mri_data_list[0]
        np.testing.assert_allclose(mri.affine, affine)
        tensor = mri.as_tensor("cpu")
        assert tensor.dtype.is_floating_point and tensor.shape == volume.shape
        np.testing.assert_allclose(tensor.numpy(), volume, atol=1e-4)


def test_lengths_mm_are_in_mm_not_voxels(data_folder):
    _, hdf5_file = data_folder
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_validation=False, load_testing=False)
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    streamlines = sft_data.get_streamlines(np.arange(5))
    affine = sft_data.space_attributes[0]
    for streamline, length_mm in zip(streamlines, sft_data.lengths_mm[:5]):
        steps_mm = np.diff(streamline, axis=0) @ affine[:3, :3].T
        assert length_mm == pytest.approx(
            np.linalg.norm(steps_mm, axis=1).sum(), rel=1e-4)
        steps_vox = np.linalg.norm(np.diff(streamline, axis=0), axis=1).sum()
        assert abs(length_mm - steps_vox) > 0.1
