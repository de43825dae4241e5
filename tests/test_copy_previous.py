"""dwiml_compute_loss_copy_previous.py: the "copy the previous direction" rule.

Exact values on hand-built streamlines, then the script on a real HDF5 and
experiment against the same rule written out point by point in numpy.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from training_data import TINY_TRAINING, make_training_hdf5

import dwi_ml
from dwi_ml.cli.dwiml_compute_loss_copy_previous import main as copy_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters import make_direction_getter
from dwi_ml.monitoring.log_reading import ExperimentLogs
from dwi_ml.monitoring.plotting import default_panels, draw_panel
from dwi_ml.training.copy_previous import (
    check_regression_getter,
    copy_previous_point_losses,
)
from tests.tolerances import rounding_atol

# An L: two steps along x, then one along y; and a single segment.
L_SHAPE = torch.tensor([[0., 0, 0], [1, 0, 0], [2, 0, 0], [2, 1, 0]])
SEGMENT = torch.tensor([[5., 5, 5], [5, 5, 7]])


def test_cosine_rule_on_hand_built_streamlines():
    getter = make_direction_getter("cosine-regression", 1)
    losses, previous, targets, has_direction = copy_previous_point_losses(
        getter, [L_SHAPE, SEGMENT])
    # First points: no previous direction (loss 1); the straight step 0; the
    # right angle 1; the segment's only point is a first point.
    assert losses.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert has_direction.tolist() == [False, True, True, False]
    assert previous.tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert targets.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 2]]
    skipped, _, _, kept = copy_previous_point_losses(
        getter, [L_SHAPE, SEGMENT], skip_first_point=True)
    assert skipped.tolist() == [0.0, 1.0] and kept.all()


def test_l2_rule_and_eos_rows():
    getter = make_direction_getter("l2-regression", 1, {"add_eos": True})
    losses, _, _, has_direction = copy_previous_point_losses(
        getter, [L_SHAPE, SEGMENT])
    # Rows: every point. Targets at unit norm (the default): the zero output
    # is 1 away; the right angle sqrt(2); last points' targets are "stop"
    # (loss 0).
    assert losses[[0, 1, 3, 4, 5]].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert float(losses[2]) == pytest.approx(math.sqrt(2),
                                             abs=rounding_atol(2, 4))
    assert has_direction.tolist() == [False, True, True, False, False, False]


@pytest.mark.parametrize("norm", [2.0, None])
def test_l2_rule_copies_the_previous_target_at_the_targets_norm(norm):
    """Unit outputs against targets of norm 2 (or unscaled segments) gave a
    baseline near 1 everywhere, which a model beat by learning the norm."""
    getter = make_direction_getter("l2-regression", 1,
                                   {"normalize_targets": norm})
    # Segments 2 voxels long: at norm 2 and unscaled, the same targets.
    losses, previous, _, _ = copy_previous_point_losses(
        getter, [2 * L_SHAPE, SEGMENT])
    # First points: the target's norm (2); the straight step 0; the right
    # angle 2 * sqrt(2).
    assert previous.tolist() == [[0, 0, 0], [2, 0, 0], [2, 0, 0], [0, 0, 0]]
    assert losses.tolist() == pytest.approx(
        [2.0, 0.0, 2 * math.sqrt(2), 2.0], abs=rounding_atol(4, 4))


def test_likelihood_getters_are_refused():
    for key in ("gaussian", "sphere-classification", "fisher-von-mises"):
        with pytest.raises(DwiMLUserError, match=f"found '{key}'"):
            check_regression_getter(make_direction_getter(key, 4), "where")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copy_previous")
    hdf5_file = make_training_hdf5(str(folder), nb_streamlines=60)
    train_main([str(folder), "eos", hdf5_file, "input", "streamlines",
                *TINY_TRAINING, "--add_eos"])
    return folder, hdf5_file, folder / "eos"


def _rule_by_hand(hdf5_file, step_size):
    """Per streamline of the validation subject, in float64: the cosine
    losses of the rule without EOS (first point 1) and its angles in mm."""
    dataset = MultiSubjectDataset(hdf5_file, lazy=False)
    dataset.load_data(load_training=False, load_testing=False)
    sft_data = dataset.validation_set.get_subject(0).sft_data_list[0]
    affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
    streamlines = StreamlineFormat(step_size=step_size).apply(
        sft_data.get_streamlines(), affine)
    losses, angles = [], []
    for points in streamlines:
        segments = np.diff(np.asarray(points, dtype=np.float64), axis=0)
        units = segments / np.linalg.norm(segments, axis=1)[:, None]
        losses += [1.0] + list(1 - np.sum(units[:-1] * units[1:], axis=1))
        mm = segments @ affine[:3, :3].T
        mm /= np.linalg.norm(mm, axis=1)[:, None]
        cosines = np.clip(np.sum(mm[:-1] * mm[1:], axis=1), -1, 1)
        angles += list(np.degrees(np.arccos(cosines)))
    return np.array(losses), np.array(angles), len(streamlines)


def test_script_matches_the_rule_written_point_by_point(data, tmp_path,
                                                        capsys):
    _, hdf5_file, experiment = data
    losses, angles, nb_streamlines = _rule_by_hand(hdf5_file, 1.5)
    out = tmp_path / "rule.json"
    copy_main([hdf5_file, "--step_size", "1.5", "--out", str(out),
               "--batch_size", "7"])
    saved = json.loads(out.read_text())
    result = saved["results"]["subj-02"]
    assert sorted(saved["results"]) == ["all", "subj-02"]
    assert saved["results"]["all"] == pytest.approx(result, rel=1e-15)
    assert saved["dg_key"] == "cosine-regression"
    # How it was made (docs/scripts.md).
    assert saved["argv"][-2:] == ["--batch_size", "7"]
    assert saved["inputs"]["hdf5_file"] == os.path.abspath(hdf5_file)
    assert saved["options"]["step_size"] == 1.5
    assert saved["dwi_ml_version"] == dwi_ml.__version__
    assert saved["streamline_format"]["step_size"] == 1.5
    assert result["n_points"] == len(losses)
    # Each float32 loss is within a few roundings of 1 - cos (unit vectors
    # of size 1): normalisation, 3 products and sums, the subtraction.
    assert result["loss"] == pytest.approx(losses.mean(),
                                           abs=rounding_atol(2, 10))
    # arccos(1 - d) ~ sqrt(2 d): an error d of the cosine moves a small
    # angle by up to sqrt(2 d) radians.
    angle_atol = math.degrees(math.sqrt(2 * rounding_atol(1, 10)))
    assert result["angular_error_deg"] == pytest.approx(angles.mean(),
                                                        abs=angle_atol)
    assert "subj-02" in capsys.readouterr().out

    # With the EOS experiment's loss and format: one more row per
    # streamline (its last point, target "stop", loss 0), so the same sum
    # over more points; the same angles.
    copy_main([hdf5_file, "--experiment", str(experiment), "--out",
               str(tmp_path / "eos.json")])
    eos = json.loads((tmp_path / "eos.json").read_text())["results"]["all"]
    assert eos["n_points"] == len(losses) + nb_streamlines
    assert eos["loss"] * eos["n_points"] == pytest.approx(
        losses.sum(), abs=len(losses) * rounding_atol(2, 10))
    assert eos["angular_error_deg"] == pytest.approx(angles.mean(),
                                                     abs=angle_atol)

    # First points left out: their loss is 1 each.
    copy_main([hdf5_file, "--step_size", "1.5", "--skip_first_point",
               "--out", str(tmp_path / "skip.json")])
    skip = json.loads((tmp_path / "skip.json").read_text())["results"]["all"]
    assert skip["n_points"] == len(losses) - nb_streamlines
    assert skip["loss"] * skip["n_points"] == pytest.approx(
        losses.sum() - nb_streamlines, abs=len(losses) * rounding_atol(2, 10))


@pytest.mark.parametrize("args, message", [
    (["--step_size", "1.5"], "argument --step_size: set by --experiment"),
    (["--dg_key", "l2-regression"], "argument --dg_key: set by --experiment"),
])
def test_experiment_options_are_not_given_twice(data, args, message, capsys):
    _, hdf5_file, experiment = data
    with pytest.raises(SystemExit) as raised:
        copy_main([hdf5_file, "--experiment", str(experiment), *args])
    assert raised.value.code != 0
    assert message in capsys.readouterr().err


def test_bad_inputs_are_refused_in_one_line(data, tmp_path, capsys):
    folder, hdf5_file, _ = data
    existing = tmp_path / "kept.json"
    existing.write_text("{}")
    cases = [
        ([hdf5_file, "--use_latest_epoch"], "--use_latest_epoch"),
        ([hdf5_file, "--streamline_group", "wm_mask"], "'wm_mask' is not a "
                                                       "streamline group"),
        ([hdf5_file, "--out", str(existing)], str(existing)),
        ([str(folder / "missing.hdf5")], "missing.hdf5"),
        ([hdf5_file, "--dg_key", "gaussian"], "--dg_key"),
        ([hdf5_file, "--experiment", str(folder)], "not a dwi_ml experiment"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as raised:
            copy_main(argv)
        err = capsys.readouterr().err
        assert raised.value.code != 0 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert existing.read_text() == "{}"
    copy_main([hdf5_file, "--out", str(existing), "-f"])
    assert json.loads(existing.read_text())["results"]["all"]["n_points"] > 0



def test_training_logs_the_baseline_beside_the_validation_loss(data,
                                                               tmp_path):
    folder, hdf5_file, experiment = data
    logged = np.load(experiment / "logs" / "copy_previous_valid_loss.npy")
    copy_main([hdf5_file, "--experiment", str(experiment), "--out",
               str(tmp_path / "rule.json")])
    expected = json.loads((tmp_path / "rule.json").read_text())[
        "results"]["all"]["loss"]
    # The same computation on the same batches: the same bits, each epoch.
    assert logged.tolist() == [expected]
    # A likelihood getter has no such baseline: no log.
    train_main([str(folder), "gaussian", hdf5_file, "input", "streamlines",
                *TINY_TRAINING, "--dg_key", "gaussian"])
    assert not (folder / "gaussian" / "logs" /
                "copy_previous_valid_loss.npy").exists()


def test_the_baseline_is_drawn_in_the_loss_panel_without_a_best_epoch_star():
    experiment = ExperimentLogs("exp", "exp", {
        "train_loss": np.array([0.5, 0.2, 0.1]),
        "valid_loss": np.array([0.4, 0.1, 0.3]),
        "copy_previous_valid_loss": np.array([0.2, 0.2, 0.2])}, best_epoch=1)
    [panel] = [p for p in default_panels([experiment]) if p.title == "Loss"]
    assert panel.log_names == ("train_loss", "valid_loss",
                               "copy_previous_valid_loss")
    ax = Figure().subplots()
    draw_panel(ax, panel, [experiment], ["C0"])
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    # One star per loss of the model (train, valid), none on the baseline.
    assert sorted(float(line.get_ydata()[0]) for line in stars) == [0.1, 0.2]
