"""Streamlines of exactly k steps of s mm, read from .trk, .tck and .trx on
an oblique grid with anisotropic voxels and a negative determinant, get the
same number of points whichever file they come from, and score the same.

Each format stores float32 points in its own space (.trk: voxel mm, .tck
and .trx: RAS mm), so a length of exactly ``k s`` reads back as ``k s``
plus a rounding error of either sign. ``ceil(L / s)`` must not let that
noise decide the number of points (which moves every resampled point, and
the voxels the scores count).
"""
import json

import nibabel as nib
import numpy as np
import pytest
from dipy.io.stateful_tractogram import Space, StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram

from dwi_ml.cli.dwiml_score_tractogram import main as score_main
from dwi_ml.data.packed import compact, lengths_mm
from dwi_ml.data.processing.length_rounding import length_rounding_bound_mm
from dwi_ml.data.processing.resampling import (
    resample_to_max_step,
    resample_to_step_size,
)
from dwi_ml.tracking.scoring import densify
from tests.tolerances import rounding_atol

SHAPE = (40, 24, 16)
STEP_MM = 0.5
FORMATS = ("trk", "tck", "trx")


def oblique_lps_affine():
    """1 x 2 x 3 mm voxels, rotated by 0.4 rad about z, x flipped."""
    c, s = np.cos(0.4), np.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) \
        @ np.diag([-1.0, 2.0, 3.0])
    affine[:3, 3] = [31.0, -47.0, 12.0]
    return affine


def exact_step_streamlines(rng, affine, nb_streamlines=200):
    """Straight and bent lines of exactly k steps of STEP_MM (RAS mm,
    float64), inside the grid; returns them and their numbers of steps."""
    centre_mm = affine[:3, :3] @ (np.asarray(SHAPE) / 2 - 0.5) + affine[:3, 3]
    streamlines, nb_steps = [], rng.integers(6, 30, nb_streamlines)
    for k in nb_steps:
        directions = rng.normal(size=(k, 3))
        directions[1:] = directions[0] + 0.3 * directions[1:]
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        steps = np.concatenate([np.zeros((1, 3)), STEP_MM * directions])
        start = centre_mm + rng.uniform(-2, 2, 3)
        streamlines.append(start + np.cumsum(steps, axis=0))
    return streamlines, nb_steps


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    affine = oblique_lps_affine()
    reference = str(folder / "grid.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine), reference)
    rng = np.random.default_rng(0)
    streamlines, nb_steps = exact_step_streamlines(rng, affine)
    labels = (np.arange(len(streamlines)) % 4)[:, None].astype(np.float32)
    sft = StatefulTractogram(streamlines, reference, Space.RASMM,
                             data_per_streamline={"bundle": labels})
    save_tractogram(sft, str(folder / "reference.trk"))
    # The tracked tractogram: the same lines moved by up to 1.5 mm.
    moved = [s + rng.normal(0, 0.5, 3) for s in streamlines]
    moved_sft = StatefulTractogram(moved, reference, Space.RASMM)
    paths = {}
    for extension in FORMATS:
        paths[extension] = str(folder / f"tracked.{extension}")
        save_tractogram(moved_sft, paths[extension], bbox_valid_check=False)
    return {"folder": folder, "reference": reference, "paths": paths,
            "nb_steps": nb_steps, "affine": affine}


def load_vox_corner(path, reference):
    sft = load_tractogram(path, reference, bbox_valid_check=False)
    sft.to_vox()
    sft.to_corner()
    return sft.streamlines


@pytest.mark.parametrize("extension", FORMATS)
def test_exact_k_steps_give_the_same_counts_from_every_format(files,
                                                              extension):
    streamlines = load_vox_corner(files["paths"][extension],
                                  files["reference"])
    k = files["nb_steps"]
    affine = files["affine"]
    # The reference convention: ceil(L / s) points for L = k s.
    resampled = resample_to_step_size(streamlines, affine, STEP_MM)
    np.testing.assert_array_equal(resampled._lengths, k)
    # Densifying: ceil(L / s) + 1 points, steps of exactly s.
    dense = resample_to_max_step(streamlines, affine, STEP_MM)
    np.testing.assert_array_equal(dense._lengths, k + 1)
    # The scoring's densify, 0.5 voxel of the 1 mm axis: the same.
    np.testing.assert_array_equal(densify(streamlines, affine)._lengths,
                                  k + 1)


@pytest.mark.parametrize("extension", FORMATS)
def test_length_rounding_bound_holds_and_is_small(files, extension):
    streamlines = load_vox_corner(files["paths"][extension],
                                  files["reference"])
    affine = files["affine"]
    points, first_rows, nb_points = compact(streamlines)
    measured_mm = lengths_mm(points, first_rows, nb_points, affine,
                             dtype=np.float64)
    error_mm = np.abs(measured_mm - STEP_MM * files["nb_steps"])
    bound_mm = length_rounding_bound_mm(points, first_rows, nb_points,
                                        affine)
    assert np.all(error_mm <= bound_mm)
    # Far below a step: the count can only lose the noise, not a step.
    assert bound_mm.max() < STEP_MM / 100


def test_scores_do_not_depend_on_the_format(files):
    scores = {}
    for extension, path in files["paths"].items():
        out = str(files["folder"] / f"scores_{extension}.json")
        score_main([path, str(files["folder"] / "reference.trk"),
                    files["reference"], "--bundle_key", "bundle",
                    "--out_json", out, "-f"])
        with open(out) as file:
            scores[extension] = json.load(file)
    assert 0 < scores["trk"]["VC"] < 1  # a case where voxels matter
    for extension in ("tck", "trx"):
        for key, value in scores["trk"].items():
            if key in ("inputs", "options", "argv", "dwi_ml_version"):
                continue   # the record of the run: its own input file
            if "length" in key:
                # Lengths in mm of float32 points (~40 mm from the origin),
                # each step through ~8 roundings at both ends, summed over
                # up to 30 steps.
                atol_mm = 30 * 2 * rounding_atol(60.0, 8)
                assert scores[extension][key] == pytest.approx(value,
                                                               abs=atol_mm)
            else:
                assert scores[extension][key] == value, (extension, key)


def test_the_exact_bound_is_computed_where_it_can_change_a_count():
    # resample_to_step_size computes the exact bound only for the
    # streamlines whose count a coarse bound could change: its counts equal
    # those of the exact bound applied to every streamline.
    from dwi_ml.data.packed import make_array_sequence, offsets_from_lengths
    from dwi_ml.data.processing.resampling import nb_points_for_step_size
    rng = np.random.default_rng(3)
    affine = oblique_lps_affine()
    exact, _ = exact_step_streamlines(rng, affine, 100)
    # Voxel space, float32 (as read from a file), mixed with streamlines
    # of random lengths.
    to_vox = np.linalg.inv(affine)
    streamlines = [((s @ to_vox[:3, :3].T + to_vox[:3, 3]) + 0.5).astype(
        np.float32) for s in exact]
    streamlines += [(streamlines[i][0] + np.cumsum(rng.normal(
        0, 0.3, (n, 3)), axis=0)).astype(np.float32)
        for i, n in enumerate(rng.integers(2, 40, 100))]
    lengths = np.array([len(s) for s in streamlines])
    packed = make_array_sequence(np.concatenate(streamlines),
                                 offsets_from_lengths(lengths), lengths)
    points, first_rows, lengths = compact(packed)
    length_mm = lengths_mm(points, first_rows, lengths, affine)
    expected = nb_points_for_step_size(
        length_mm, STEP_MM, length_atol_mm=length_rounding_bound_mm(
            points, first_rows, lengths, affine))
    resampled = resample_to_step_size(packed, affine, STEP_MM)
    np.testing.assert_array_equal(resampled._lengths, expected)
    # Some exact-step streamlines fell on the other side of k s: the
    # shortcut had something to decide.
    assert np.any(expected != nb_points_for_step_size(length_mm, STEP_MM))
