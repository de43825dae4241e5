"""Scoring a tractogram against a reference: exact values on hand-built
cases, sanity checks on synthetic bundles, and the script."""
import json
import os
import shutil

import numpy as np
import pytest
from error_checks import assert_user_error
from nibabel.streamlines import ArraySequence
from scoring_data import (
    GRID,
    GRID_AFFINE,
    hand_reference,
    hand_tracked,
    line_along_x,
    random_lines,
    save_nifti,
    save_trk,
    save_trx_with_groups,
    synthetic_reference,
)

from dwi_ml.cli.dwiml_score_tractogram import main as score_main
from dwi_ml.data.packed import packed_arrays
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.bundle_scoring import (
    count_invalid_bundles,
    orient_like_first,
)
from dwi_ml.tracking.scoring import (
    DenseReference,
    densify,
    point_directions_mm,
    score_tractogram,
)
from dwi_ml.tracking.tracking_validation import whole_tractogram_overlap
from dwi_ml.tracking.voxel_masks import (
    dilate_voxel_set,
    point_voxel_indices,
    voxel_set,
)
from tests.tolerances import EPS64, rounding_atol

SYNTHETIC_SHAPE = (30, 30, 30)

# The hand-built case (see scoring_data.hand_tracked), 41 tracked points:
# - the copy of bundle 1 (10 points at distance 0, along x): a VC;
# - bundle 2 moved by 1.2 voxels along y (10 points at 1.2, along x): its
#   endpoints are in bundle 2's regions but none of its points in its
#   volume, an IC (of the bundle's own region pair, not counted in IB);
# - a diagonal in the plane x = 0.5 from bundle 1's head voxel to bundle
#   2's (6 points at 0, 1.41, 2.83, 2.83, 1.41 and 0 voxels, at 90 degrees
#   from the reference): an IC between two heads, the one invalid bundle;
# - a parallel line between the bundles (10 points at 4.24): an NC;
# - the first half of bundle 1 (5 points at 0, along x): an NC.
HAND_SCORES = {
    "nb_tracked": 5.0, "nb_reference": 2.0, "nb_tracked_points": 41.0,
    "points_within_1_vox": (10 + 2 + 5) / 41,
    "points_within_2_vox": (10 + 10 + 4 + 5) / 41,
    "points_aligned": (10 + 10 + 5) / 41,
    "VC": 0.2, "IC": 0.4, "NC": 0.4, "VB": 1.0, "IB": 1.0,
    "nb_bundles": 2.0,
    "bundle_1_nb_VC": 1.0, "bundle_1_OL": 1.0, "bundle_1_OR": 0.0,
    "bundle_1_F1": 1.0,
    "bundle_2_nb_VC": 0.0, "bundle_2_OL": 0.0, "bundle_2_OR": 0.0,
    "bundle_2_F1": 0.0,
    "mean_OL": 0.5, "mean_OR": 0.0, "mean_F1": 0.5,
}
HAND_LENGTHS_MM = [9., 9., 5 * np.sqrt(2), 9., 4.]


def _score_hand(tracked, affine=None):
    affine = np.eye(4) if affine is None else affine
    reference, labels = hand_reference()
    return score_tractogram(tracked, reference, GRID, affine, labels)


def test_hand_built_case_exact_values():
    scores = _score_hand(hand_tracked())
    lengths = {key: scores.pop(key) for key in ("mean_length_mm",
                                                "median_length_mm")}
    assert scores == HAND_SCORES
    # Lengths are stored as float32 (one rounding), then averaged in float64.
    assert lengths["mean_length_mm"] == pytest.approx(
        np.mean(HAND_LENGTHS_MM), rel=rounding_atol(1, 1))
    assert lengths["median_length_mm"] == 9.0


def test_hand_scores_do_not_depend_on_voxel_size():
    # Voxel counts and shares stay; lengths double with 2 mm voxels.
    scores = _score_hand(hand_tracked(), GRID_AFFINE)
    assert {k: scores[k] for k in HAND_SCORES} == HAND_SCORES
    assert scores["median_length_mm"] == pytest.approx(   # float32 lengths
        18.0, rel=rounding_atol(1, 1))


def test_reference_against_itself_is_perfect():
    reference, labels = hand_reference()
    scores = score_tractogram(reference, reference, GRID, np.eye(4), labels)
    perfect = {"points_within_1_vox": 1.0, "points_within_2_vox": 1.0,
               "points_aligned": 1.0, "VC": 1.0, "IC": 0.0, "NC": 0.0,
               "VB": 2.0, "IB": 0.0, "mean_OL": 1.0, "mean_OR": 0.0,
               "mean_F1": 1.0}
    assert {k: scores[k] for k in perfect} == perfect

    reference, labels = synthetic_reference()
    scores = score_tractogram(reference, reference, SYNTHETIC_SHAPE,
                              np.eye(4), labels)
    assert {k: scores[k] for k in perfect} == {**perfect, "VB": 3.0}
    for label in (1, 2, 3):
        assert scores[f"bundle_{label}_nb_VC"] == 60.0


def test_overlap_overreach_and_f1_count_voxels():
    # Bundle 2 holds two streamlines (20 voxels); tracking one of them
    # covers half of it. The tracked bundle 1 leaves its 10 voxels for the
    # row y = 3 between x = 2.5 and 6.5: 7 common voxels, 5 outside.
    reference = ArraySequence([line_along_x(2.5, 2.5), line_along_x(7.5, 7.5),
                               line_along_x(6.5, 7.5)])
    labels = np.array([1, 2, 2])
    detour = np.array([[0.5, 2.5, 2.5], [2.5, 2.5, 2.5], [2.5, 3.5, 2.5],
                       [6.5, 3.5, 2.5], [6.5, 2.5, 2.5], [9.5, 2.5, 2.5]])
    tracked = ArraySequence([detour, line_along_x(7.5, 7.5)])
    scores = score_tractogram(tracked, reference, GRID, np.eye(4), labels)
    assert scores["VC"] == 1.0
    assert (scores["bundle_1_OL"], scores["bundle_1_OR"],
            scores["bundle_1_F1"]) == (0.7, 0.5, 14 / 22)
    assert (scores["bundle_2_OL"], scores["bundle_2_OR"],
            scores["bundle_2_F1"]) == (0.5, 0.0, 20 / 30)
    # A float64 sum and division.
    assert scores["mean_OL"] == pytest.approx(
        0.6, abs=rounding_atol(1, 2, eps=EPS64))

    # Asking for more of the points in the volume than the detour has (12
    # of its 23 resampled points, or 14) makes it an IC.
    strict = score_tractogram(tracked, reference, GRID, np.eye(4), labels,
                              min_share_in_volume=0.9)
    assert (strict["VC"], strict["IC"], strict["bundle_1_OL"]) == \
        (0.5, 0.5, 0.0)


def test_streamlines_of_a_bundle_may_run_either_way():
    # The second reference streamline runs from x = 9.5 to 0.5: once
    # flipped, the head region is around x = 0 only, so a tracked loop with
    # both ends there is an IC (its two ends in one region), not a VC.
    reference = ArraySequence([line_along_x(2.5, 2.5),
                               line_along_x(3.5, 2.5)[::-1]])
    loop = np.array([[0.5, 2.5, 2.5], [1.5, 2.5, 2.5], [1.5, 3.5, 2.5],
                     [0.5, 3.5, 2.5]])
    tracked = ArraySequence([line_along_x(3.5, 2.5), loop])
    scores = score_tractogram(tracked, reference, GRID, np.eye(4),
                              np.array([4, 4]))
    assert (scores["VC"], scores["IC"], scores["VB"], scores["IB"],
            scores["bundle_4_OL"]) == (0.5, 0.5, 1.0, 1.0, 0.5)
    heads, tails = orient_like_first(np.array([[0., 0, 0], [9, 0, 0]]),
                                     np.array([[9., 0, 0], [1, 0, 0]]))
    np.testing.assert_array_equal(heads, [[0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(tails, [[9, 0, 0], [9, 0, 0]])


def test_shifted_copy_scores_lower():
    reference, labels = synthetic_reference()
    perfect = score_tractogram(reference, reference, SYNTHETIC_SHAPE,
                               np.eye(4), labels)
    shifted = ArraySequence([s + [3., 0., 0.] for s in reference])
    scores = score_tractogram(shifted, reference, SYNTHETIC_SHAPE,
                              np.eye(4), labels)
    for key in ("points_within_1_vox", "points_within_2_vox",
                "points_aligned", "VC", "mean_OL", "mean_F1"):
        assert scores[key] < perfect[key], key
    assert scores["IC"] + scores["NC"] > 0
    assert scores["mean_OR"] > perfect["mean_OR"]
    # Bundles are ~4 voxels wide: a few shifted streamlines stay valid.
    assert scores["VB"] <= perfect["VB"]


def test_random_lines_score_near_chance():
    reference, labels = synthetic_reference()
    lines = random_lines(300, np.array(SYNTHETIC_SHAPE),
                         np.random.default_rng(1))
    scores = score_tractogram(lines, reference, SYNTHETIC_SHAPE, np.eye(4),
                              labels)
    # ~5 % of the voxels are within 1 voxel of the bundles (10 % within 2);
    # random lines cross the centre, where the bundles meet, a bit more.
    assert scores["points_within_1_vox"] < 0.2
    assert scores["points_within_2_vox"] < 0.35
    assert scores["points_aligned"] < 0.1
    assert scores["VC"] <= 0.01
    assert scores["NC"] > 0.9
    assert scores["mean_F1"] <= 0.05


def test_dense_reference_scores_as_the_reference_itself():
    reference, labels = synthetic_reference()
    lines = random_lines(100, np.array(SYNTHETIC_SHAPE),
                         np.random.default_rng(2))
    tracked = ArraySequence(list(reference[::3]) + list(lines))
    dense = DenseReference(reference, np.eye(4))
    for reference_labels in (labels, None):
        expected = score_tractogram(tracked, reference, SYNTHETIC_SHAPE,
                                    np.eye(4), reference_labels)
        # Twice: the second call reuses the dense points and the tree.
        for _ in range(2):
            assert score_tractogram(tracked, dense, SYNTHETIC_SHAPE,
                                    np.eye(4), reference_labels) == expected
    assert whole_tractogram_overlap(tracked, dense, SYNTHETIC_SHAPE,
                                    np.eye(4)) == whole_tractogram_overlap(
        tracked, reference, SYNTHETIC_SHAPE, np.eye(4))
    # The reference's voxels: found once per grid, those of its dense points.
    voxels = dense.voxel_set(SYNTHETIC_SHAPE)
    assert dense.voxel_set(SYNTHETIC_SHAPE) is voxels
    np.testing.assert_array_equal(voxels, voxel_set(point_voxel_indices(
        packed_arrays(densify(reference, np.eye(4)))[0], SYNTHETIC_SHAPE)))
    assert len(voxels) > 0
    with pytest.raises(ValueError, match="max_step_vox"):
        score_tractogram(tracked, dense, SYNTHETIC_SHAPE, np.eye(4),
                         max_step_vox=0.25)
    with pytest.raises(ValueError, match="affine"):
        score_tractogram(tracked, dense, SYNTHETIC_SHAPE,
                         np.diag([2.0, 2.0, 2.0, 1.0]))


def test_without_labels_or_tracked_streamlines():
    reference, _ = hand_reference()
    scores = score_tractogram(list(hand_tracked()), list(reference), GRID,
                              np.eye(4))
    assert "VC" not in scores
    assert scores["points_within_1_vox"] == HAND_SCORES["points_within_1_vox"]

    empty = ArraySequence()
    scores = score_tractogram(empty, reference, GRID, np.eye(4),
                              np.array([1, 2]))
    assert scores["nb_tracked"] == 0.0
    assert all(scores[key] == 0.0 for key in (
        "points_within_1_vox", "points_aligned", "VC", "IC", "NC", "VB",
        "mean_OL", "mean_length_mm"))


def test_bad_arguments_are_user_errors():
    reference, _ = hand_reference()
    with pytest.raises(DwiMLUserError, match="one label per"):
        score_tractogram(reference, reference, GRID, np.eye(4),
                         np.array([1, 2, 3]))
    with pytest.raises(DwiMLUserError, match="integer bundle labels"):
        score_tractogram(reference, reference, GRID, np.eye(4),
                         np.array([1.5, 2]))
    with pytest.raises(DwiMLUserError, match="min_share_in_volume"):
        score_tractogram(reference, reference, GRID, np.eye(4),
                         min_share_in_volume=1.5)


def test_a_reference_off_the_grid_is_refused():
    """The reference scored against itself on a grid of 5^3 when it lies
    on 10^3 gave VC 0, NC 1, OL 0 with no word: the reference defines the
    bundles, so any point of it off the grid is refused, also when given
    as a DenseReference (tracking validation)."""
    reference, labels = hand_reference()
    for given in (reference, DenseReference(reference, np.eye(4))):
        with pytest.raises(DwiMLUserError) as error:
            score_tractogram(reference, given, (5, 5, 5), np.eye(4), labels)
        assert str(error.value) == (
            "score_tractogram argument reference: expected points on the "
            "grid of shape (5, 5, 5) (voxel space, corner origin: [0, size] "
            "along each axis), found points from (0.5, 2.5, 2.5) to (9.5, "
            "7.5, 7.5); is it in the space of this grid?")
    # On its grid: a perfect score, with no warning.
    assert score_tractogram(reference, reference, GRID, np.eye(4),
                            labels)["VC"] == 1.0


def test_tracked_points_off_the_grid_are_scored_with_one_warning(caplog):
    """A tracked tractogram left in RAS mm scored 0 everywhere silently;
    its points off the grid are now counted in one warning."""
    reference, _ = hand_reference()
    tracked = list(hand_tracked())
    in_rasmm = [points * 2.0 + 30.0 for points in tracked]
    # One point of the last streamline just off the grid.
    tracked[-1] = np.vstack([tracked[-1], [[10.25, 2.5, 2.5]]])
    for streamlines, nb_outside in ((tracked, 1), (in_rasmm, 41)):
        caplog.clear()
        scores = score_tractogram(streamlines, reference, GRID, np.eye(4))
        messages = [r.getMessage() for r in caplog.records
                    if r.levelname == "WARNING"]
        nb_points = int(scores["nb_tracked_points"])
        assert messages == [
            f"score_tractogram: {nb_outside} of the {nb_points} tracked "
            f"points lie outside the grid of shape {GRID} (voxel space, "
            f"corner origin); they count as far from the reference and in "
            f"no voxel. Is the tractogram in the space of this grid?"]
    assert scores["points_within_2_vox"] == 0.0


@pytest.mark.parametrize("change, expected", [
    ({"shape": (10, 0, 10)}, "argument shape: expected 3 integers >= 1 "
     "(the grid's size in voxels), found (10, 0, 10)."),
    ({"shape": (10, -10, 10)}, "argument shape: expected 3 integers >= 1 "
     "(the grid's size in voxels), found (10, -10, 10)."),
    ({"shape": (10, 10)}, "argument shape: expected 3 integers >= 1 "
     "(the grid's size in voxels), found (10, 10)."),
    ({"shape": (10, 10, 10.5)}, "argument shape: expected 3 integers >= 1 "
     "(the grid's size in voxels), found (10, 10, 10.5)."),
    ({"affine": np.diag([2.0, 2.0, 0.0, 1.0])}, "argument affine: expected "
     "a finite (4, 4) voxel-to-RAS mm matrix with an invertible linear "
     "part, found a singular one (singular values [2.0, 2.0, 0.0])."),
    ({"affine": np.full((4, 4), np.inf)}, "argument affine: expected a "
     "finite (4, 4) voxel-to-RAS mm matrix with an invertible linear part, "
     "found NaN or infinite values."),
    ({"affine": np.eye(3)}, "argument affine: expected a finite (4, 4) "
     "voxel-to-RAS mm matrix with an invertible linear part, found shape "
     "(3, 3)."),
    ({"tracked": [np.array([[1.5, 1.5, np.nan], [2.5, 1.5, 1.5]])]},
     "argument tracked: expected finite points, found 1 with NaN or "
     "infinite coordinates."),
    ({"reference": [np.array([[1.5, 1.5, 1.5], [np.inf, 1.5, 1.5]])]},
     "argument reference: expected finite points, found 1 with NaN or "
     "infinite coordinates."),
    ({"tracked": [np.ones((3, 2))]}, "argument tracked: expected "
     "streamlines of (n, 3) points, found points of shape (2,) "
     "(coordinates per point)."),
])
def test_bad_grid_and_points_are_one_line_errors(change, expected):
    """A zero size, NaN points (scipy's "'x' must be finite"), (n, 2)
    points (reshaped silently to (., 3)) and a singular affine (an error
    naming step_size_mm) are refused, naming the argument."""
    reference, _ = hand_reference()
    arguments = {"tracked": list(hand_tracked()), "reference": reference,
                 "shape": GRID, "affine": np.eye(4)}
    arguments.update(change)
    with pytest.raises(DwiMLUserError) as error:
        score_tractogram(**arguments)
    assert str(error.value) == f"score_tractogram {expected}"


def test_voxel_helpers():
    np.testing.assert_array_equal(
        point_voxel_indices(np.array([[0.5, 0.5, 0.5], [9.99, 0, 0],
                                      [10., 0, 0], [-0.1, 0, 0],
                                      [np.nan, 0, 0]]), GRID),
        [0, 900, -1, -1, -1])
    # A corner voxel has 7 neighbours in the grid, an inner one 26.
    assert len(dilate_voxel_set(np.array([0]), GRID)) == 8
    assert len(dilate_voxel_set(np.array([555]), GRID)) == 27
    assert count_invalid_bundles(np.array([0, 1, 0, 2, 2]),
                                 np.array([1, 0, 2, 0, 2])) == 2


def test_densify_and_directions():
    streamlines = ArraySequence([np.array([[0.5, 0.5, 0.5], [2.5, 0.5, 0.5],
                                           [2.5, 1.5, 0.5]]),
                                 np.array([[1., 1., 1.]])])
    dense = densify(streamlines, GRID_AFFINE)   # 2 mm voxels: 1 mm steps
    np.testing.assert_array_equal(dense._lengths, [7, 1])
    # Points within a few float32 roundings of coordinates < 3 voxels.
    assert np.max(np.linalg.norm(np.diff(dense[0], axis=0), axis=1)) \
        == pytest.approx(0.5, abs=rounding_atol(3, 4))
    directions = point_directions_mm(
        ArraySequence([streamlines[0], streamlines[1]]), GRID_AFFINE)
    np.testing.assert_array_equal(
        directions, [[4, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        point_directions_mm(ArraySequence([streamlines[0], streamlines[1]]),
                            GRID_AFFINE, np.array([3, 2, 0])),
        [[0, 0, 0], [0, 2, 0], [4, 0, 0]])


def test_densify_keeps_every_point_and_a_tractogram_aligns_with_itself():
    # Random bent streamlines crossing in the middle of a 10-voxel grid,
    # with points at uneven steps: resampled at equal steps, a point's nearest
    # reference point could be another streamline's, across a crossing.
    rng = np.random.default_rng(2)
    streamlines = []
    for _ in range(60):
        nb_points = int(rng.integers(2, 12))
        steps = rng.normal(size=(nb_points - 1, 3))
        # Steps of 0.3 - 1.6 mm, so some are cut; all points in the grid.
        steps *= rng.uniform(0.15, 0.4, size=(nb_points - 1, 1)) / (
            np.linalg.norm(steps, axis=1, keepdims=True))
        start = rng.uniform(4.5, 5.5, size=3)
        streamlines.append(np.vstack(
            [start, start + np.cumsum(steps, axis=0)]).astype(np.float32))
    streamlines.append(np.array([[5., 5., 5.]], dtype=np.float32))
    streamlines = ArraySequence(streamlines)
    dense = densify(streamlines, GRID_AFFINE)   # steps of at most 1 mm
    for original, subdivided in zip(streamlines, dense):
        kept = (subdivided[:, None, :] == original[None]).all(axis=2)
        assert kept.any(axis=0).all()   # every point, exactly
        steps_mm = np.linalg.norm(np.diff(subdivided, axis=0) * 2, axis=1)
        # Coordinates < 10 voxels, a few float32 roundings, times 2 mm.
        assert np.all(steps_mm <= 1 + 2 * rounding_atol(10, 4))
    # (A point alone has no direction: left out.)
    streamlines = streamlines[:-1]
    scores = score_tractogram(streamlines, streamlines, GRID, GRID_AFFINE)
    assert scores["points_aligned"] == 1.0
    assert scores["points_within_1_vox"] == 1.0


# The script.
# The script.


@pytest.fixture
def hand_files(tmp_path):
    nifti = save_nifti(tmp_path / "mask.nii.gz")
    reference, labels = hand_reference()
    return {
        "nifti": nifti,
        "tracked": save_trk(tmp_path / "tracked.trk", hand_tracked(), nifti),
        "reference": save_trk(tmp_path / "reference.trk", reference, nifti,
                              labels),
    }


def test_script_prints_and_saves_the_scores(hand_files, tmp_path, capsys):
    out = str(tmp_path / "scores.json")
    argv = [hand_files["tracked"], hand_files["reference"],
            hand_files["nifti"], "--bundle_key", "bundle", "--out_json", out]
    assert score_main(argv) is None
    printed = capsys.readouterr().out
    assert "VC" in printed and "points_within_1_vox" in printed
    with open(out) as f:
        scores = json.load(f)
    # JSON keeps float64 exactly.
    assert {k: scores[k] for k in HAND_SCORES} == HAND_SCORES
    assert scores["median_length_mm"] == pytest.approx(   # float32 lengths
        18.0, rel=rounding_atol(1, 1))
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] \
        == []

    score_main(argv + ["-f", "--min_share_in_volume", "1"])
    with open(out) as f:
        assert json.load(f)["VC"] == 1 / 5   # JSON keeps float64 exactly


def test_script_warns_that_an_empty_tractogram_scores_0(hand_files,
                                                         tmp_path, capsys):
    # Its zeros were printed and saved without a word.
    empty = save_trk(tmp_path / "empty.trk", [], hand_files["nifti"])
    out = str(tmp_path / "scores.json")
    score_main([empty, hand_files["reference"], hand_files["nifti"],
                "--out_json", out])
    assert (f"'{empty}' holds no streamline: every share below is 0 "
            "(nothing tracked, nothing valid).") in capsys.readouterr().err
    with open(out) as f:
        scores = json.load(f)
    assert scores["nb_tracked"] == 0 and scores["points_within_1_vox"] == 0


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        score_main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "error:" in message
    return message


def test_script_errors(hand_files, tmp_path, capsys):
    files = [hand_files["tracked"], hand_files["reference"],
             hand_files["nifti"]]
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    not_a_tractogram = tmp_path / "tracked.txt"
    not_a_tractogram.write_text("")
    cases = [
        ([str(tmp_path / "missing.trk"), *files[1:]], "missing.trk"),
        ([*files, "--out_json", str(existing)], "already exists"),
        ([*files, "--bundle_key", "nope"], "'nope'"),
        ([str(not_a_tractogram), *files[1:]], "extensions"),
        ([*files, "--min_share_in_volume", "2"], "argument "
         "--min_share_in_volume: expected a share in [0, 1], found 2.0."),
        # It named the function's argument, max_angle_deg.
        ([*files, "--max_angle", "-5"], "argument --max_angle: expected an "
         "angle in [0, 90] degrees, found -5.0."),
        ([*files, "--out_json", str(tmp_path / "no" / "s.json")],
         "does not exist"),
    ]
    for argv, expected in cases:
        assert expected in _error(capsys, argv)
    assert existing.read_text() == "{}"


def test_script_refuses_a_tractogram_of_another_grid(hand_files, tmp_path,
                                                     capsys):
    """A .trk of another subject's grid: one line naming both grids (dipy's
    load_tractogram returned False, and the script crashed on it)."""
    shifted = GRID_AFFINE.copy()
    shifted[:3, 3] += [4.0, 0.0, 0.0]
    other_nifti = save_nifti(tmp_path / "other_mask.nii.gz", affine=shifted)
    message = _error(capsys, [hand_files["tracked"], hand_files["reference"],
                              other_nifti])
    assert f"tractogram '{hand_files['tracked']}'" in message
    # Only the affine differs: only it is named, with both values.
    affine_text = str(GRID_AFFINE.tolist())
    assert message.split(": error: ", 1)[1] == (
        f"tractogram '{hand_files['tracked']}': the tractogram's grid does "
        f"not match the reference '{other_nifti}': affine {affine_text} "
        f"here, {str(shifted.tolist())} there; expected a tractogram of the "
        "same subject and space as the volume.")
    assert "[[2.0, 0.0, 0.0, -10.0]" in message    # the tractogram's grid
    assert "[[2.0, 0.0, 0.0, -6.0]" in message     # the volume's
    other_reference = save_trk(tmp_path / "other_reference.trk",
                               hand_reference()[0], other_nifti)
    message = _error(capsys, [hand_files["tracked"], other_reference,
                              hand_files["nifti"]])
    assert f"tractogram '{other_reference}'" in message
    assert not os.path.exists(tmp_path / "scores.json")


# nibabel moves the NaN points to voxels before the check (the script's
# entry point shows no such warning).
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_script_refuses_nan_points(hand_files, tmp_path, capsys):
    """A tractogram with a NaN coordinate: one line naming the file (the
    k-d tree query and the resampling raised a traceback)."""
    streamlines = [s.copy() for s in hand_tracked()]
    streamlines[0][3] = np.nan
    streamlines[2][1, 0] = np.inf
    bad = save_trk(tmp_path / "nan.trk", ArraySequence(streamlines),
                   hand_files["nifti"], labels=[1, 2, 1, 2, 1])
    for argv in ([bad, hand_files["reference"], hand_files["nifti"]],
                 [hand_files["tracked"], bad, hand_files["nifti"],
                  "--bundle_key", "bundle"]):
        message = _error(capsys, argv)
        assert f"tractogram '{bad}'" in message
        assert ("found 2 point(s) with NaN or Inf coordinates in 2 "
                "streamline(s)") \
            in message


def test_script_names_the_reference_file_off_the_grid(hand_files, tmp_path,
                                                     capsys):
    """score_tractogram names its argument; the script, the file."""
    reference, labels = hand_reference()
    shifted = ArraySequence([points + 30.0 for points in reference])
    off = save_trk(tmp_path / "off.trk", shifted, hand_files["nifti"],
                   labels=labels)
    with pytest.raises(SystemExit) as exit_info:
        score_main([hand_files["tracked"], off, hand_files["nifti"]])
    assert exit_info.value.code == 2
    # After the loader's warning that most of its points are off the grid.
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: reference '{off}': expected points on the grid of " \
        "shape" in message


def test_script_refuses_an_upper_case_extension(hand_files, tmp_path,
                                                capsys):
    """'.TRK' passed the extension check, then dipy's load_tractogram
    returned False and the script crashed ('bool' has no 'to_vox')."""
    upper = str(tmp_path / "TRACKED.TRK")
    shutil.copyfile(hand_files["tracked"], upper)
    message = _error(capsys, [upper, hand_files["reference"],
                              hand_files["nifti"]])
    assert f"tractogram '{upper}'" in message
    assert "lower-case extension" in message and "found '.TRK'" in message


def test_a_tck_in_another_space_is_warned(hand_files, tmp_path, capsys):
    """A .tck has no header to check: one in another space (here its RAS mm
    points 100 mm off) scored near 0 with no word. Now a warning says how
    many points lie outside the grid; the right one gets none."""
    import nibabel as nib
    from dipy.io.streamline import load_tractogram

    sft = load_tractogram(hand_files["tracked"], "same")
    sft.to_rasmm()
    streamlines = list(sft.streamlines)
    for name, shift in (("right.tck", 0.), ("shifted.tck", 100.)):
        nib.streamlines.save(nib.streamlines.Tractogram(
            [s + shift for s in streamlines], affine_to_rasmm=np.eye(4)),
            str(tmp_path / name))
    nb_points = sum(len(s) for s in streamlines)
    argv = [hand_files["reference"], hand_files["nifti"]]
    for name, warned in (("right.tck", False), ("shifted.tck", True)):
        capsys.readouterr()
        score_main([str(tmp_path / name), *argv])
        err = capsys.readouterr().err
        # One warning naming the file and counting its points (the loader
        # and score_tractogram each gave one).
        expected = (f"tractogram '{tmp_path / name}': {nb_points} of the "
                    f"{nb_points} tracked points lie outside the grid of "
                    f"shape (10, 10, 10) (voxel space, corner origin); they "
                    f"count as far from the reference and in no voxel. Is "
                    f"the tractogram in the space of this grid?")
        assert (expected in err) == warned
        assert err.count("outside the grid") == warned
    # The same shifted file as the reference: refused, in one line naming
    # the volume whose space it should be in, with no warning before.
    message = assert_user_error(
        score_main, [hand_files["tracked"], str(tmp_path / "shifted.tck"),
                     hand_files["nifti"]], capsys, tmp_path)
    assert message.startswith(f"reference '{tmp_path / 'shifted.tck'}': "
                              "expected points on the grid of shape")
    assert message.endswith(
        f"is it in the space of '{hand_files['nifti']}' (a .tck has no "
        "header: its points must be in that volume's RAS mm)?")


def test_trx_groups_are_the_bundles(hand_files, tmp_path, capsys):
    # The hand reference as .trx, labels 1 and 2 stored as groups whose
    # sorted names make them bundles 0 and 1.
    reference, _ = hand_reference()
    trx = save_trx_with_groups(tmp_path / "reference.trx", reference,
                               hand_files["nifti"], {"b_two": [1],
                                                     "a_one": [0]})
    out = str(tmp_path / "scores.json")
    score_main([hand_files["tracked"], trx, hand_files["nifti"],
                "--bundle_key", "groups", "--out_json", out])
    printed = capsys.readouterr().out
    assert "bundle_0 is group 'a_one'" in printed
    assert "bundle_1 is group 'b_two'" in printed
    with open(out) as f:
        scores = json.load(f)
    renamed = {key.replace("bundle_1", "bundle_0").replace("bundle_2",
                                                           "bundle_1"): value
               for key, value in HAND_SCORES.items()}
    assert {k: scores[k] for k in renamed} == renamed
    assert scores["bundle_names"] == {"0": "a_one", "1": "b_two"}


@pytest.mark.parametrize("groups, expected", [
    ({}, "found none"),
    ({"a": [0]}, "found 1 in none (streamline 1 first)"),
    ({"a": [0, 1], "b": [1]}, "found streamline 1 in groups 'a' and 'b'"),
    ({"a": [0, 1, 5]}, "group 'a': expected streamline indices in [0, 2), "
                       "found 5"),
])
def test_trx_groups_that_are_not_bundles_are_refused(hand_files, tmp_path,
                                                     capsys, groups,
                                                     expected):
    reference, _ = hand_reference()
    trx = save_trx_with_groups(tmp_path / "reference.trx", reference,
                               hand_files["nifti"], groups)
    message = _error(capsys, [hand_files["tracked"], trx,
                              hand_files["nifti"], "--bundle_key", "groups"])
    assert "reference.trx" in message and expected in message
