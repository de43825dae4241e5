"""Synthetic dataset: reproducible files that encode fibre directions."""
import glob
import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest
from dipy.io.gradients import read_bvals_bvecs
from dipy.io.streamline import load_tractogram
from nibabel.affines import apply_affine

from dwi_ml.cli.dwiml_make_synthetic_dataset import main
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.tolerances import EPS32, rounding_atol

TINY = dict(nb_subjects=3, nb_streamlines=150, shape=(20, 22, 14),
            voxel_size=(2.0, 2.5, 3.0), nb_directions=30)
SUBJECT_IDS = ["subj-01", "subj-02", "subj-03"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    return make_synthetic_dataset(str(out), seed=0, **TINY)


def _hash_files(folder):
    hashes = {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"),
                                 recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = \
                    hashlib.sha256(f.read()).hexdigest()
    return hashes


def _load_bundles(subject_paths, space_vox_corner):
    """Each bundle's sft, RAS mm (center) or voxel space with corner origin."""
    sfts = []
    for path in subject_paths.bundles:
        sft = load_tractogram(path, subject_paths.dwi, bbox_valid_check=True)
        if space_vox_corner:
            sft.to_vox()
            sft.to_corner()
        sfts.append(sft)
    return sfts


def test_same_seed_gives_identical_files_and_another_seed_differs(
        dataset, tmp_path):
    again = make_synthetic_dataset(str(tmp_path / "again"), seed=0, **TINY)
    other = make_synthetic_dataset(str(tmp_path / "other"), seed=1, **TINY)
    reference = _hash_files(dataset.out_folder)
    assert len(reference) == 3 + 1 + 3 * (4 + 3)
    assert _hash_files(again.out_folder) == reference

    other_hashes = _hash_files(other.out_folder)
    assert other_hashes.keys() == reference.keys()
    data_files = [name for name in reference
                  if name.endswith((".nii.gz", ".trk"))]
    assert len(data_files) == 3 * 5
    assert all(other_hashes[name] != reference[name] for name in data_files)


def test_subjects_made_in_processes_give_the_same_files(dataset, tmp_path):
    # Each subject depends only on (seed, index), not on who made it.
    parallel = make_synthetic_dataset(str(tmp_path / "parallel"), seed=0,
                                      nb_processes=2, **TINY)
    assert _hash_files(parallel.out_folder) == _hash_files(dataset.out_folder)


def test_subjects_differ(dataset):
    dwis = [nib.load(dataset.subjects[s].dwi) for s in SUBJECT_IDS]
    assert not np.allclose(dwis[0].affine, dwis[1].affine)
    masks = [nib.load(dataset.subjects[s].wm_mask).get_fdata()
             for s in SUBJECT_IDS]
    assert np.mean(masks[0] != masks[1]) > 0.02


def test_every_point_is_inside_the_volume_and_the_mask(dataset):
    for subject_id in SUBJECT_IDS:
        paths = dataset.subjects[subject_id]
        mask = np.asanyarray(nib.load(paths.wm_mask).dataobj)
        assert mask.dtype == np.uint8
        nb_streamlines = 0
        for sft in _load_bundles(paths, space_vox_corner=True):
            voxels = np.floor(sft.streamlines.get_data()).astype(int)
            assert np.all(voxels >= 0)
            assert np.all(voxels < np.array(mask.shape))
            assert np.all(mask[tuple(voxels.T)] == 1)
            nb_streamlines += len(sft)
        assert nb_streamlines == TINY["nb_streamlines"]
        # The mask is the crossed voxels dilated, not the whole volume.
        assert 0.05 < mask.mean() < 0.8


def test_grid_is_anisotropic_and_lengths_in_mm_differ_from_voxels(dataset):
    paths = dataset.subjects["subj-01"]
    dwi = nib.load(paths.dwi)
    mask = nib.load(paths.wm_mask)
    assert dwi.shape == TINY["shape"] + (1 + TINY["nb_directions"],)
    assert dwi.get_data_dtype() == np.float32
    assert mask.shape == TINY["shape"]
    np.testing.assert_array_equal(dwi.affine, mask.affine)
    np.testing.assert_array_equal(dwi.header.get_zooms()[:3],
                                  TINY["voxel_size"])   # exact in float32
    assert np.any(dwi.affine[:3, 3] != 0)

    rasmm = _load_bundles(paths, space_vox_corner=False)[0]
    # Both headers store the affine as float32.
    np.testing.assert_allclose(rasmm.affine, dwi.affine, rtol=EPS32)
    vox = _load_bundles(paths, space_vox_corner=True)[0]
    steps_mm = np.concatenate(
        [np.linalg.norm(np.diff(s, axis=0), axis=1) for s in rasmm.streamlines])
    steps_vox = np.concatenate(
        [np.linalg.norm(np.diff(s, axis=0), axis=1) for s in vox.streamlines])
    # Points every half of the smallest voxel size, measured in mm.
    assert abs(np.median(steps_mm) - 0.5 * min(TINY["voxel_size"])) < 0.1
    ratio = steps_mm / steps_vox
    # Each float32 point is within EPS32 / 2 of its coordinates: a step
    # relatively within that of the largest coordinate over the step, and
    # the ratio within the sum of both.
    ratio_rtol = sum(
        rounding_atol(np.abs(sft.streamlines.get_data()).max() / steps.min(), 1)
        for sft, steps in ((rasmm, steps_mm), (vox, steps_vox)))
    assert np.all(ratio >= min(TINY["voxel_size"]) * (1 - ratio_rtol))
    assert np.all(ratio <= max(TINY["voxel_size"]) * (1 + ratio_rtol))
    assert np.ptp(ratio) > 0.3
    # Lengths vary: streamlines start and end at different places.
    lengths = np.array([len(s) for s in rasmm.streamlines])
    assert lengths.min() < 0.85 * lengths.max()


def _single_bundle_voxel_tangents(sfts, affine, shape):
    """Principal direction of segment tangents (RAS mm) in one-bundle voxels."""
    nb_voxels = int(np.prod(shape))
    counts, outer_sums = [], []
    for sft in sfts:
        points = [s for s in sft.streamlines]
        segments = np.concatenate([np.diff(p, axis=0) for p in points])
        midpoints = np.concatenate([(p[1:] + p[:-1]) / 2 for p in points])
        voxels = np.floor(apply_affine(np.linalg.inv(affine), midpoints)
                          + 0.5).astype(int)
        flat = np.ravel_multi_index(voxels.T, shape)
        tangents = segments / np.linalg.norm(segments, axis=1, keepdims=True)
        outer = np.einsum("ni,nj->nij", tangents, tangents).reshape(-1, 9)
        counts.append(np.bincount(flat, minlength=nb_voxels))
        outer_sums.append(np.stack(
            [np.bincount(flat, weights=outer[:, k], minlength=nb_voxels)
             for k in range(9)], axis=1))
    counts = np.stack(counts)
    single = np.flatnonzero(((counts > 0).sum(axis=0) == 1)
                            & (counts.sum(axis=0) >= 3))
    tensors = np.stack(outer_sums).sum(axis=0)[single].reshape(-1, 3, 3)
    _, eigenvectors = np.linalg.eigh(tensors)
    return single, eigenvectors[:, :, -1]


def test_lowest_dwi_signal_is_along_the_local_streamline_tangent(dataset):
    for subject_id in SUBJECT_IDS:
        paths = dataset.subjects[subject_id]
        dwi = nib.load(paths.dwi)
        data = dwi.get_fdata().reshape(-1, dwi.shape[3])
        bvals, bvecs = read_bvals_bvecs(paths.bval, paths.bvec)
        weighted = bvals > 0
        voxels, tangents = _single_bundle_voxel_tangents(
            _load_bundles(paths, space_vox_corner=False), dwi.affine,
            dwi.shape[:3])
        assert len(voxels) > 100

        lowest = np.argmin(data[voxels][:, weighted], axis=1)
        cosines = np.abs(np.sum(bvecs[weighted][lowest] * tangents, axis=1))
        angles = np.degrees(np.arccos(np.clip(cosines, 0., 1.)))
        assert np.mean(angles < 25) >= 0.8

        # Directions vary: no single direction explains most voxels.
        close = np.abs(tangents @ tangents.T) > np.cos(np.radians(25))
        assert close.sum(axis=1).max() < 0.6 * len(voxels)

        # Outside the mask the signal is isotropic (flat over directions).
        mask = np.asanyarray(nib.load(paths.wm_mask).dataobj).ravel() > 0
        spread = np.ptp(data[:, weighted], axis=1) / data[:, ~weighted][:, 0]
        assert np.median(spread[~mask]) < 0.1
        assert np.median(spread[voxels]) > 0.4


def test_config_names_existing_files_and_lists_split_subjects(dataset):
    with open(dataset.config) as f:
        config = json.load(f)
    assert config == {
        "input": {"type": "volume", "files": ["dwi.nii.gz"],
                  "standardization": "independent",
                  "std_mask": ["wm_mask.nii.gz"]},
        "wm_mask": {"type": "volume", "files": ["wm_mask.nii.gz"],
                    "standardization": "none"},
        "streamlines": {"type": "streamlines", "files": ["bundles/*.trk"]}}
    subject_folders = sorted(glob.glob(
        os.path.join(dataset.out_folder, "dwi_ml_ready", "*")))
    assert [os.path.basename(f) for f in subject_folders] == SUBJECT_IDS
    for folder in subject_folders:
        for group in config.values():
            for pattern in group["files"] + group.get("std_mask", []):
                assert glob.glob(os.path.join(folder, pattern))
        assert len(glob.glob(os.path.join(folder, "bundles", "*.trk"))) == 3

    expected = {"training": ["subj-01"], "validation": ["subj-02"],
                "testing": ["subj-03"]}
    for split, ids in expected.items():
        path = os.path.join(dataset.out_folder, f"{split}_subjs.txt")
        assert dataset.subject_lists[split] == path
        with open(path) as f:
            assert f.read().split() == ids


@pytest.mark.parametrize("nb_subjects, expected", [
    (1, (["subj-01"], [], [])),
    (2, (["subj-01"], ["subj-02"], [])),
    (4, (["subj-01", "subj-02"], ["subj-03"], ["subj-04"]))])
def test_few_subjects_keep_one_for_training(tmp_path, nb_subjects, expected):
    paths = make_synthetic_dataset(
        str(tmp_path / "data"), nb_subjects=nb_subjects, nb_streamlines=20,
        shape=(12, 12, 10), nb_directions=6)
    for split, ids in zip(("training", "validation", "testing"), expected):
        with open(paths.subject_lists[split]) as f:
            assert f.read().split() == ids


def test_next_hint_is_the_readme_hdf5_command(tmp_path, monkeypatch,
                                              capsys):
    # The hint left out README.md's --step_size 1.0: a model trained on
    # that file could not track without a --step_size of its own.
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                          "README.md")
    with open(readme) as f:
        row = next(line for line in f if line.startswith("| HDF5 creation |"))
    readme_command = row.split("`")[1]
    monkeypatch.chdir(tmp_path)
    main(["example", "--nb_subjects", "1", "--nb_streamlines", "20",
          "--shape", "12", "12", "10", "--nb_directions", "6"])
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == f"Next: {readme_command}"


def test_cli_refuses_existing_folder_without_f_and_replaces_it_with_f(
        tmp_path, capsys):
    out = tmp_path / "data"
    tiny = ["--nb_subjects", "1", "--nb_streamlines", "20", "--shape", "12",
            "12", "10", "--nb_directions", "6"]
    main([str(out), *tiny])
    # It said nothing; now what it wrote, and the next command: README.md's,
    # with its step size (without one, tracking from a model trained on
    # the file failed, after the training, for want of --step_size).
    assert capsys.readouterr().out.splitlines() == [
        f"Wrote 1 subject(s) in {out} (training: subj-01; validation: none; "
        "testing: none).",
        f"Next: dwiml_create_hdf5_dataset.py {out}/dwi_ml_ready "
        f"{out}/data.hdf5 {out}/config.json {out}/training_subjs.txt "
        f"{out}/validation_subjs.txt {out}/testing_subjs.txt --step_size 1.0"]
    (out / "training_subjs.txt").write_text("from before")
    with pytest.raises(SystemExit) as error:
        main([str(out), *tiny])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "already exists" in message
    assert str(out) in message and "-f" in message
    assert (out / "training_subjs.txt").read_text() == "from before"
    # Nor with -f: the list changed since the script wrote it.
    with pytest.raises(SystemExit) as error:
        main([str(out), "-f", *tiny])
    assert error.value.code == 2
    assert ("'training_subjs.txt' changed since dwi_ml wrote it"
            in capsys.readouterr().err)
    assert (out / "training_subjs.txt").read_text() == "from before"

    # -f replaces it: it is a synthetic dataset (its marker file says so),
    # holding only what the script wrote.
    (out / "training_subjs.txt").write_text("subj-01\n")
    main([str(out), "-f", *tiny])
    assert (out / "training_subjs.txt").read_text() == "subj-01\n"
    dwi = nib.load(out / "dwi_ml_ready" / "subj-01" / "dwi.nii.gz")
    assert dwi.shape == (12, 12, 10, 7)


@pytest.mark.parametrize("option, value, name", [
    ("--nb_directions", "3", "argument --nb_directions: expected"),
    ("--nb_subjects", "0", "argument --nb_subjects: expected"),
    ("--shape", "4 30 30", "argument --shape: expected"),
    # An infinite size warned, then blamed the shape.
    ("--voxel_size", "inf 2 2", "argument --voxel_size: expected 3 finite "
                                "positive sizes in mm, found [inf, 2.0, 2.0]."),
    ("--nb_bundles", "0", "argument --nb_bundles: expected at least 1, "
                          "found 0."),
    ("--nb_streamlines", "2", "argument --nb_streamlines: expected at least "
                              "--nb_bundles (3), found 2."),
    ("--nb_processes", "0", "argument --nb_processes: expected at least 1, "
                            "found 0.")])
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, option,
                                               value, name):
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as error:
        main([str(out), option, *value.split()])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and name in message
    assert not out.exists()


def test_function_names_its_own_arguments(tmp_path):
    # The Python function names its arguments, the script its options.
    with pytest.raises(DwiMLUserError) as error:
        make_synthetic_dataset(str(tmp_path / "data"), nb_streamlines=2)
    assert str(error.value) == ("argument 'nb_streamlines': expected at "
                                "least 'nb_bundles' (3), found 2.")
