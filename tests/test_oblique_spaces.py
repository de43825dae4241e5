"""Spaces on grids that are not axis-aligned: anisotropic 1 x 2 x 3 mm
voxels, rotated (oblique), or with a negative determinant (LPS-like).

Streamlines known in RAS mm go through .trk, .tck and .trx files, HDF5
creation, the dataset, extraction and tracking, and come out on the same
anatomy as dipy places them; inputs of a batch equal a manual trilinear
interpolation (scipy, voxel-centre origin) at the neighbours' voxel
positions. Most other tests use diagonal affines, where a transposed or
sign-flipped linear part would go unnoticed.
"""
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from scipy.ndimage import map_coordinates

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.batching.dataloaders import make_dataloader
from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.splits import Split
from dwi_ml.models.learn2track import Learn2TrackModel
from tests.tolerances import rounding_atol

SHAPE = (10, 12, 8)
FORMATS = ("trk", "tck", "trx")
MASK_BOX = (slice(2, 5), slice(6, 9), slice(3, 6))
NB_STREAMLINES = 5


def _rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _affine(linear, translation):
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = translation
    return affine


AFFINES = {
    "oblique": _affine(_rotation_z(0.3) @ np.diag([1.0, 2.0, 3.0]),
                       [-5, 10, 3]),
    "lps": _affine(np.diag([-1.0, -2.0, 3.0]), [20, 30, -4]),
    "oblique_flipped": _affine(_rotation_z(0.4) @ np.diag([1.0, -2.0, 3.0]),
                               [1, 2, 3]),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    rng = np.random.default_rng(0)
    mask = np.zeros(SHAPE, np.float32)
    mask[MASK_BOX] = 1
    written = {}
    for subject, affine in AFFINES.items():
        folder = root / subject
        os.makedirs(folder / "tractograms")
        volume = rng.uniform(size=SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, affine), str(folder / "fa.nii.gz"))
        nib.save(nib.Nifti1Image(mask, affine), str(folder / "mask.nii.gz"))
        # Random polylines inside the grid, placed in RAS mm by dipy.
        streamlines_vox = [
            rng.uniform(0.3, np.array(SHAPE) - 0.3, (7, 3)).astype(np.float32)
            for _ in range(NB_STREAMLINES)]
        sft = StatefulTractogram(streamlines_vox,
                                 str(folder / "fa.nii.gz"), Space.VOX,
                                 origin=Origin.TRACKVIS)
        sft.to_rasmm()
        sft.to_center()  # RAS mm as nibabel and dipy load them
        for extension in FORMATS:
            save_tractogram(sft, str(folder / "tractograms" /
                                     f"bundle.{extension}"))
        written[subject] = {"volume": volume,
                            "rasmm": [np.asarray(s, np.float64)
                                      for s in sft.streamlines],
                            "nifti": str(folder / "fa.nii.gz"),
                            # As stored: the NIfTI header holds float32.
                            "affine": nib.load(folder / "fa.nii.gz").affine}
    config = {"input": {"type": "volume", "files": ["fa.nii.gz"],
                        "standardization": "none"},
              "mask": {"type": "volume", "files": ["mask.nii.gz"]}}
    for extension in FORMATS:
        config[extension] = {"type": "streamlines",
                             "files": [f"tractograms/bundle.{extension}"]}
    hdf5_file = str(root / "data.hdf5")
    create_hdf5_dataset(str(root), hdf5_file, config, list(AFFINES), [], [])
    return {"root": root, "hdf5": hdf5_file, "written": written}


def _max_abs_mm(data):
    return max(np.abs(np.concatenate(w["rasmm"])).max()
               for w in data["written"].values())


@pytest.mark.parametrize("lazy", [False, True])
def test_hdf5_streamlines_land_where_dipy_puts_them(data, lazy):
    dataset = MultiSubjectDataset(data["hdf5"], lazy=lazy)
    dataset.load_data()
    subset = dataset.training_set
    # float32 points through ~16 roundings (the file's space, voxels, mm).
    atol_mm = rounding_atol(_max_abs_mm(data), 16)
    for index, subject_id in enumerate(subset.subjects):
        written = data["written"][subject_id]
        subject = subset.get_subject(index)
        mri = subject.mri_data_list[dataset.volume_groups.index("input")]
        np.testing.assert_array_equal(mri.affine, written["affine"])
        np.testing.assert_array_equal(mri.as_tensor("cpu").numpy()[..., 0],
                                      written["volume"])
        for group, sft_data in zip(dataset.streamline_groups,
                                   subject.sft_data_list):
            sft = sft_data.as_sft(list(range(NB_STREAMLINES)))
            sft.to_rasmm()
            sft.to_center()
            for got, expected in zip(sft.streamlines, written["rasmm"]):
                np.testing.assert_allclose(got, expected, rtol=0,
                                           atol=atol_mm, err_msg=group)
    dataset.close()


@pytest.mark.parametrize("extension", FORMATS)
def test_extracted_data_equals_the_sources(data, tmp_path, extension):
    atol_mm = rounding_atol(_max_abs_mm(data), 16)
    for subject_id, written in data["written"].items():
        out = str(tmp_path / f"{subject_id}.{extension}")
        extract_main([data["hdf5"], subject_id, extension, out])
        sft = load_tractogram(out, written["nifti"])
        np.testing.assert_array_equal(sft.affine, written["affine"])
        sft.to_rasmm()
        np.testing.assert_allclose(sft.streamlines.get_data(),
                                   np.concatenate(written["rasmm"]),
                                   rtol=0, atol=atol_mm)
        out = str(tmp_path / f"{subject_id}.nii.gz")
        extract_main([data["hdf5"], subject_id, "input", out, "-f"])
        image = nib.load(out)
        np.testing.assert_array_equal(image.affine, written["affine"])
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32),
                                      written["volume"])


@pytest.mark.parametrize("extension", FORMATS)
def test_tracked_streamlines_start_in_the_seeding_mask(data, extension):
    experiment = str(data["root"] / "untrained")
    if not os.path.exists(experiment):
        torch.manual_seed(0)
        model = Learn2TrackModel("untrained", nb_features=1, step_size=0.5,
                                 rnn_layer_sizes=[8])
        model.save_params_and_state(os.path.join(experiment, "best_model"))
    for subject_id, affine in AFFINES.items():
        out = str(data["root"] / f"tracked_{subject_id}.{extension}")
        track_main([experiment, data["hdf5"], subject_id, "input", out,
                    "--seeding_mask_group", "mask", "--nt", "30",
                    "--min_length", "0", "--track_forward_only"])
        sft = load_tractogram(out, data["written"][subject_id]["nifti"],
                              bbox_valid_check=True)
        assert len(sft) == 30
        np.testing.assert_allclose(sft.affine, affine, rtol=0,
                                   atol=rounding_atol(40.0, 1))
        sft.to_rasmm()
        sft.to_center()
        first_mm = np.array([s[0] for s in sft.streamlines])
        # Model-free: first points, in RAS mm, map back into the mask box
        # (voxel centres at integer indices, voxels half a voxel around).
        inverse = np.linalg.inv(affine)
        first_vox = first_mm @ inverse[:3, :3].T + inverse[:3, 3]
        atol_vox = rounding_atol(40.0, 16)
        low = np.array([b.start for b in MASK_BOX]) - 0.5 - atol_vox
        high = np.array([b.stop for b in MASK_BOX]) - 0.5 + atol_vox
        assert np.all((first_vox >= low) & (first_vox <= high))
        steps_mm = np.linalg.norm(np.diff(sft.streamlines.get_data(),
                                          axis=0), axis=1)
        inner = np.ones(len(steps_mm), bool)
        inner[np.cumsum(sft.streamlines._lengths)[:-1] - 1] = False
        np.testing.assert_allclose(steps_mm[inner], 0.5, rtol=0,
                                   atol=rounding_atol(40.0, 16))
        if extension != "tck":
            np.testing.assert_allclose(sft.data_per_streamline["seeds"],
                                       first_mm, rtol=0,
                                       atol=rounding_atol(40.0, 16))


def _batches(hdf5_file, lazy):
    dataset = MultiSubjectDataset(hdf5_file, lazy=lazy)
    dataset.load_data()
    sampler = BatchSampler(dataset, "trk", batch_size_training=4,
                           batch_size_validation=4,
                           batch_size_units="nb_streamlines", seed=0)
    sampler.set_epoch(0)
    spec = InputSpec.from_options(step_size=0.7, neighborhood_type="axes",
                                  neighborhood_radius=1,
                                  neighborhood_resolution=1.5)
    loader = BatchLoaderOneInput(dataset, "trk", "input", input_spec=spec,
                                 split_ratio=0.3, reverse_ratio=0.5,
                                 noise_gaussian_size_forward=0.2, seed=0)
    batches = list(make_dataloader(sampler, loader, Split.TRAINING,
                                   nb_workers=0))
    volumes = [dataset.training_set.get_subject(i).mri_data_list[0]
               for i in range(len(dataset.training_set.subjects))]
    return batches, volumes, dataset


def test_batch_inputs_equal_scipy_at_mm_neighbours_and_lazy_equals_eager(
        data):
    batches, volumes, dataset = _batches(data["hdf5"], lazy=False)
    # Centre, then +-x, +-y, +-z by 1.5 mm in RAS: in voxels through the
    # inverse of the oblique linear part.
    offsets_mm = np.concatenate([np.zeros((1, 3)),
                                 1.5 * np.repeat(np.eye(3), 2, axis=0)
                                 * np.tile([[1], [-1]], (3, 1))])
    for batch in batches:
        points = batch.input_points.numpy().astype(np.float64)
        subjects = np.repeat(batch.subject_indices.numpy(),
                             batch.lengths.numpy())
        expected = np.zeros((len(points), len(offsets_mm)))
        for index in np.unique(subjects):
            rows = subjects == index
            volume = volumes[index].as_tensor("cpu").numpy()[..., 0]
            linear_inverse = np.linalg.inv(volumes[index].affine[:3, :3])
            for k, offset_vox in enumerate(offsets_mm @ linear_inverse.T):
                # scipy's order=1 puts voxel i's value at coordinate i: the
                # corner-origin point p is at p - 0.5; 'nearest' is the
                # documented border replication.
                expected[rows, k] = map_coordinates(
                    volume.astype(np.float64),
                    (points[rows] + offset_vox - 0.5).T, order=1,
                    mode="nearest")
        # Values in [0, 1) through ~8 float32 roundings (weights, sums).
        np.testing.assert_allclose(batch.inputs.numpy(), expected, rtol=0,
                                   atol=rounding_atol(SHAPE[1] * 2.0, 8))
    dataset.close()
    lazy_batches, _, lazy_dataset = _batches(data["hdf5"], lazy=True)
    assert len(lazy_batches) == len(batches)
    for eager, lazy in zip(batches, lazy_batches):
        for field in ("target_points", "input_points", "lengths",
                      "subject_indices", "inputs"):
            assert torch.equal(getattr(eager, field), getattr(lazy, field))
    lazy_dataset.close()
