"""Tracking validation during training, and --best_model_metric."""
import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from error_checks import assert_user_error
from matplotlib.image import imread as plt_imread
from nibabel.streamlines import ArraySequence
from test_comet import (  # noqa: F401 (comet_env: autouse fixture)
    archive_metrics,
    comet_env,
    read_archive,
)
from tracking_validation_data import make_labelled_hdf5
from training_data import make_training_hdf5

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.visualize_logs import main as visualize_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.connectivity import FROM_BLOCS, FROM_LABELS, Connectivity
from dwi_ml.data.packed import packed_arrays
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.monitoring.log_reading import read_experiments
from dwi_ml.monitoring.plotting import DPI, PANEL_SIZE_INCHES, default_panels
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.scoring import score_tractogram
from dwi_ml.tracking.seeding import make_seeds
from dwi_ml.tracking.stopping import (
    DEFAULT_MAX_LENGTH_MM,
    DEFAULT_MIN_LENGTH_MM,
    StopReason,
    TrackingMask,
    keep_by_length,
)
from dwi_ml.tracking.tracking_io import load_experiment_model
from dwi_ml.tracking.tracking_validation import (
    endpoint_distances_mm,
    endpoint_pairs,
    nb_in_true_connections,
    tracking_validation_callbacks,
    whole_tractogram_overlap,
)
from dwi_ml.tracking.training_facts import choose_step_size, model_max_length_mm
from dwi_ml.training.monitors import BestEpochTracker

# Times differ between runs by nature.
TIME_LOGS = ("train_time.npy", "valid_time.npy", "tracking_time.npy")
WHOLE_SUBJECT_LOGS = ("tracking_f1", "tracking_ol", "tracking_or",
                      "tracking_vc", "tracking_ic", "tracking_nc",
                      "tracking_points_within_1_vox",
                      "tracking_points_within_2_vox",
                      "tracking_points_aligned")


@pytest.fixture(scope="module")
def labelled_hdf5(tmp_path_factory):
    return make_labelled_hdf5(str(tmp_path_factory.mktemp("tv_data")))[0]


@pytest.fixture(scope="module")
def plain_hdf5(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("tv_plain")))


def _train_args(experiments, name, hdf5_file, max_epochs, *extra):
    return [experiments, name, hdf5_file, "input", "streamlines",
            "--max_epochs", str(max_epochs), "--batch_size_training", "30",
            "--batch_size_validation", "40", "--step_size", "1.5",
            "--rnn_layer_sizes", "16", "--reverse_ratio", "0.5",
            "--dropout", "0.2", "--learning_rate", "0.01", "--seed", "7",
            "-v", "WARNING", *extra]


WHOLE_SUBJECT = ("--tracking_validation_mode", "whole_subject",
                 "--tracking_validation_tracking_mask_group", "wm_mask",
                 "--tracking_validation_nb_seeds", "150",
                 "--tracking_validation_bundle_key", "bundle")


def _logs(experiment_dir, with_times=False):
    logs_dir = os.path.join(experiment_dir, "logs")
    return {name[:-4]: np.load(os.path.join(logs_dir, name))
            for name in sorted(os.listdir(logs_dir))
            if with_times or name not in TIME_LOGS}


def _best_epoch(experiment_dir):
    with open(os.path.join(experiment_dir, "best_model",
                           "best_epoch.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------
# Metric functions: exact values on hand-built cases
def test_endpoint_distance_is_measured_in_mm():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    ends = np.array([[1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [0.5, 0.0, 0.0]])
    true_ends = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    distances = endpoint_distances_mm(ends, true_ends, affine)
    # sqrt(2² + 3² + 4²), 0, and half a voxel of 2 mm.
    assert distances.tolist() == [math.sqrt(29.0), 0.0, 1.0]


def test_connectivity_score_counts_streamlines_in_known_connections():
    # 4³ voxels in 2³ blocs: x < 2 is bloc part 0, x >= 2 part 1 (each axis).
    matrix = np.zeros((8, 8), dtype=bool)
    matrix[0, 7] = True  # bloc (0,0,0) <-> bloc (1,1,1)
    connectivity = Connectivity(matrix, FROM_BLOCS, nb_blocs=(2, 2, 2))
    starts = np.array([[0.5, 0.5, 0.5], [3.5, 3.5, 3.5], [0.5, 0.5, 0.5],
                       [1.9, 1.9, 1.9]])
    ends = np.array([[3.5, 3.5, 3.5], [0.5, 0.5, 0.5], [0.5, 0.5, 3.5],
                     [2.0, 2.0, 2.0]])
    # Rows 0, 1 (reversed) and 3 join blocs 0 and 7; row 2 joins 0 and 1.
    assert nb_in_true_connections(endpoint_pairs(starts, ends), connectivity,
                                  (4, 4, 4)) == 3


def test_connectivity_score_of_a_subject_without_generated_streamlines():
    """A subject whose streamlines are all shorter than the prefix has no
    generated streamline: none joins a connection (its share is 0 / 0,
    undefined, in score_connectivity)."""
    matrix = np.zeros((8, 8), dtype=bool)
    matrix[0, 7] = True
    no_points = np.zeros((0, 3))
    for connectivity in (Connectivity(matrix, FROM_BLOCS, nb_blocs=(2, 2, 2)),
                         Connectivity(matrix[:3, :3], FROM_LABELS,
                                      label_volume=np.arange(3).reshape(
                                          3, 1, 1))):
        assert nb_in_true_connections(endpoint_pairs(no_points, no_points),
                                      connectivity, (4, 4, 4)) == 0


def test_connectivity_score_with_a_label_volume():
    labels = np.zeros((4, 1, 1), dtype=np.int32)
    labels[0], labels[3] = 1, 2
    matrix = np.zeros((3, 3), dtype=bool)
    matrix[1, 2] = True
    connectivity = Connectivity(matrix, FROM_LABELS, label_volume=labels)
    starts = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1.5, 0.5, 0.5]])
    ends = np.array([[3.5, 0.5, 0.5], [0.2, 0.5, 0.5], [3.5, 0.5, 0.5]])
    # Only row 0 joins labels 1 and 2; row 1 stays in 1, row 2 starts in 0.
    assert nb_in_true_connections(endpoint_pairs(starts, ends), connectivity,
                                  (4, 1, 1)) == 1


def test_whole_tractogram_overlap_exact():
    # Reference covers voxels x = 0..5, tracked x = 3..8, on the row y=z=0.
    reference = ArraySequence([np.array([[0.5, 0.5, 0.5], [5.5, 0.5, 0.5]])])
    tracked = ArraySequence([np.array([[3.5, 0.5, 0.5], [8.5, 0.5, 0.5]])])
    overlap, overreach, f1 = whole_tractogram_overlap(
        tracked, reference, (10, 2, 2), np.eye(4))
    # 3 common voxels of 6 each: OL = OR = 3/6, F1 = 2*3 / (6 + 6).
    assert (overlap, overreach, f1) == (0.5, 0.5, 0.5)


def test_best_epoch_tracker_with_higher_is_better():
    tracker = BestEpochTracker(patience=2, patience_delta=0.05,
                               metric="tracking_f1")
    is_best = [tracker.update(value, epoch) for epoch, value in
               enumerate([0.2, 0.5, 0.54, 0.6, 0.3, 0.6])]
    # 0.54 and the second 0.6 are within delta of the best: not better.
    assert is_best == [True, True, False, True, False, False]
    assert (tracker.best_epoch, tracker.best_loss) == (3, 0.6)
    assert tracker.is_patience_reached
    restored = BestEpochTracker(metric="tracking_f1")
    restored.load_state_dict(tracker.state_dict())
    assert not restored.update(0.6, 6)
    assert restored.update(0.7, 7)


def test_continued_streamlines_start_with_their_prefix():
    torch.manual_seed(0)
    model = Learn2TrackModel("m", nb_features=2, rnn_layer_sizes=[8],
                             step_size=1.0)
    volume = torch.rand((6, 6, 6, 2))
    tracker = BatchedTracker(model, volume, np.eye(4),
                             TrackingMask((6, 6, 6)), 1.0, max_length_mm=4.0)
    prefixes = np.array([[[1.5, 1.5, 1.5], [2.5, 1.5, 1.5]],
                         [[3.5, 3.5, 3.5], [3.5, 2.5, 3.5]]], np.float32)
    streamlines, stops = tracker.continue_streamlines(prefixes)
    assert len(streamlines) == 2 and len(stops) == 2
    for streamline, prefix in zip(streamlines, prefixes):
        assert np.array_equal(streamline[:2], prefix)
        # At most 4 mm: 5 points, 1 mm apart.
        assert 2 <= len(streamline) <= 5
        steps = np.linalg.norm(np.diff(streamline[1:], axis=0), axis=1)
        np.testing.assert_allclose(steps, 1.0, rtol=1e-5)


# ----------------------------------------------------------------------
# Training with tracking validation
def test_best_model_is_the_epoch_with_the_best_tracking_f1(tmp_path,
                                                           labelled_hdf5):
    experiments = str(tmp_path)
    train_main(_train_args(experiments, "f1", labelled_hdf5, 4,
                           "--tracking_validation_every", "1",
                           "--best_model_metric", "tracking_f1",
                           *WHOLE_SUBJECT))
    logs = _logs(tmp_path / "f1", with_times=True)
    for name in WHOLE_SUBJECT_LOGS + ("tracking_time", "valid_loss"):
        assert logs[name].shape == (4,), name
        assert np.all(np.isfinite(logs[name])), name
    assert np.all(logs["tracking_time"] > 0)
    np.testing.assert_allclose(logs["tracking_vc"] + logs["tracking_ic"]
                               + logs["tracking_nc"], 1.0, rtol=1e-12)
    for name in WHOLE_SUBJECT_LOGS:
        if name != "tracking_or":
            assert np.all((logs[name] >= 0) & (logs[name] <= 1)), name
    assert len(np.unique(logs["tracking_f1"])) > 1
    best = _best_epoch(tmp_path / "f1")
    # The first epoch of the highest F1 (a tie is no improvement).
    assert best["metric"] == "tracking_f1"
    assert best["epoch"] == int(np.argmax(logs["tracking_f1"]))
    assert best["loss"] == logs["tracking_f1"][best["epoch"]]

    # visualize_logs.py draws them in their own panels.
    panels = {panel.title: panel.log_names for panel in default_panels(
        read_experiments([str(tmp_path / "f1")]))}
    drawn = {name for names in panels.values() for name in names}
    assert drawn >= set(WHOLE_SUBJECT_LOGS) | {"tracking_time"}
    assert "tracking_vc" in panels["Tracking: bundles"]
    visualize_main([str(tmp_path / "f1"), "-v", "WARNING"])
    image = plt_imread(tmp_path / "f1" / "logs_plot.png")
    # Loss, grad norm, LR, times, per batch and 4 tracking panels: 5 rows.
    assert image.shape[:2] == (5 * PANEL_SIZE_INCHES[1] * DPI,
                               2 * PANEL_SIZE_INCHES[0] * DPI)


def test_generation_mode_repeats_its_values_between_tracking_epochs(
        tmp_path, labelled_hdf5):
    experiments = str(tmp_path)
    train_main(_train_args(experiments, "gen", labelled_hdf5, 3,
                           "--tracking_validation_every", "2",
                           "--tracking_validation_nb_streamlines", "30",
                           "--best_model_metric", "connectivity_score"))
    logs = _logs(tmp_path / "gen", with_times=True)
    for name in ("tracking_endpoint_distance", "connectivity_score"):
        values = logs[name]
        assert values.shape == (3,)
        # Tracked at epochs 0 and 2; epoch 1 repeats epoch 0.
        assert values[1] == values[0]
    assert logs["tracking_time"][1] == 0.0
    assert np.all(logs["tracking_time"][[0, 2]] > 0)
    assert np.all(logs["tracking_endpoint_distance"] > 0)
    # A share of the 30 generated streamlines.
    shares = logs["connectivity_score"] * 30
    np.testing.assert_allclose(shares, np.round(shares), atol=1e-9)
    best = _best_epoch(tmp_path / "gen")
    assert best["metric"] == "connectivity_score"
    assert best["epoch"] == int(np.argmax(logs["connectivity_score"]))
    with open(tmp_path / "gen" / "parameters.json") as f:
        saved = json.load(f)
    assert saved["tracking_validation"]["every"] == 2
    assert saved["trainer"]["best_model_metric"] == "connectivity_score"


@pytest.mark.parametrize("mode_args", [
    ("--tracking_validation_nb_streamlines", "30"),
    WHOLE_SUBJECT + ("--best_model_metric", "tracking_f1")],
    ids=["generation", "whole_subject"])
def test_resume_with_tracking_validation_equals_straight_run(
        tmp_path, labelled_hdf5, mode_args):
    experiments = str(tmp_path)
    extra = ("--tracking_validation_every", "2", *mode_args)
    train_main(_train_args(experiments, "straight", labelled_hdf5, 4, *extra))
    train_main(_train_args(experiments, "resumed", labelled_hdf5, 3, *extra))
    resume_cli.main([experiments, "resumed", "--new_max_epochs", "4",
                     "-v", "WARNING"])
    straight, resumed = _logs(tmp_path / "straight"), _logs(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed)
    assert any(name.startswith("tracking_") for name in straight)
    for name in straight:
        if not name.endswith("_per_batch"):
            assert straight[name].shape == (4,), name
        assert straight[name].tobytes() == resumed[name].tobytes(), name
    assert _best_epoch(tmp_path / "straight") == _best_epoch(
        tmp_path / "resumed")
    for folder in ("checkpoint/model", "best_model"):
        weights = [torch.load(tmp_path / run / folder / "model_state.pt",
                              weights_only=True)
                   for run in ("straight", "resumed")]
        for key in weights[0]:
            assert torch.equal(weights[0][key], weights[1][key]), key


def test_tracking_validation_leaves_training_unchanged_and_goes_to_comet(
        tmp_path, plain_hdf5):
    """Same losses with and without it: it draws from no training stream.

    Comet runs offline (test_comet's autouse ``comet_env``)."""
    experiments = str(tmp_path)
    train_main(_train_args(experiments, "off", plain_hdf5, 2))
    train_main(_train_args(experiments, "on", plain_hdf5, 2,
                           "--tracking_validation_every", "1",
                           "--tracking_validation_nb_streamlines", "20",
                           "--comet_workspace", "ws", "--comet_project", "p",
                           "--comet_offline_dir", str(tmp_path / "comet")))
    off, on = _logs(tmp_path / "off"), _logs(tmp_path / "on", True)
    for name in ("train_loss", "valid_loss", "train_loss_per_batch"):
        assert off[name].tobytes() == on[name].tobytes(), name
    # No connectivity in this file: endpoint distance only.
    assert "connectivity_score" not in on
    assert on["tracking_endpoint_distance"].shape == (2,)
    # Comet gets the same values, one per epoch.
    archive, = glob.glob(str(tmp_path / "comet" / "*.zip"))
    metrics = archive_metrics(read_archive(archive)[1])
    for name in ("tracking_endpoint_distance", "tracking_time"):
        assert metrics[name][0] == [0, 1], name
        np.testing.assert_array_equal(metrics[name][1], on[name])


def _direct_points_within_1_vox(experiment_dir, hdf5_file, eos_stop,
                                 nb_seeds, seed):
    """tracking_points_within_1_vox of the validation subject, tracked with
    BatchedTracker by hand (the best model, seeds and options of
    whole_subject tracking validation) at EOS threshold ``eos_stop``."""
    model = load_experiment_model(experiment_dir)
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    subject = dataset.validation_set.get_subject(0)
    groups = dataset.volume_groups
    volume = subject.mri_data_list[groups.index("input")]
    mask = np.asarray(subject.mri_data_list[groups.index("wm_mask")].data)
    mask = mask.reshape(mask.shape[:3])
    step = choose_step_size(None, model, experiment_dir)
    max_length = model_max_length_mm(model, step, DEFAULT_MAX_LENGTH_MM)
    tracker = BatchedTracker(
        model, volume.as_tensor("cpu"), volume.affine,
        TrackingMask(volume.shape, mask), step, max_length_mm=max_length,
        eos_threshold=eos_stop)
    result = tracker.track_in_batches(
        make_seeds(mask, np.random.default_rng([seed, 0]), nt=nb_seeds),
        1000, disable_progress=True)
    keep = np.flatnonzero(keep_by_length(
        packed_arrays(result.streamlines)[2], step, DEFAULT_MIN_LENGTH_MM,
        max_length))
    reference = subject.sft_data_list[0].get_streamlines()
    eos_stops = sum(int(np.sum(stops == StopReason.EOS)) for stops in
                    (result.forward_stops, result.backward_stops))
    return score_tractogram(result.streamlines[keep], reference,
                            volume.shape[:3], volume.affine)[
        "points_within_1_vox"], eos_stops


def test_tracking_validation_tracks_with_its_eos_stop(tmp_path,
                                                      labelled_hdf5):
    """--tracking_validation_eos_stop is saved, and the logged score is the
    one of tracking at that threshold, not at the default 0.5."""
    train_main(_train_args(str(tmp_path), "eos", labelled_hdf5, 1,
                           "--add_eos", "--tracking_validation_every", "1",
                           "--tracking_validation_eos_stop", "0.3",
                           *WHOLE_SUBJECT))
    with open(tmp_path / "eos" / "parameters.json") as f:
        saved = json.load(f)["tracking_validation"]
    assert saved["eos_stop"] == 0.3
    # The resumed run's callback tracks at the saved threshold too.
    callback, = tracking_validation_callbacks(saved)
    assert callback.params.eos_stop == 0.3
    # One epoch: the best model is the one tracking validation used.
    logged = _logs(tmp_path / "eos")["tracking_points_within_1_vox"][0]
    at_03, eos_stops_03 = _direct_points_within_1_vox(
        str(tmp_path / "eos"), labelled_hdf5, 0.3, 150, 7)
    at_05, eos_stops_05 = _direct_points_within_1_vox(
        str(tmp_path / "eos"), labelled_hdf5, 0.5, 150, 7)
    # The same computation in the same order: equal to the last bit.
    assert logged == at_03
    # The threshold changes the tracking: more EOS stops, another score.
    assert eos_stops_03 > eos_stops_05
    assert at_03 != at_05


# ----------------------------------------------------------------------
# Bad options: one line, before any work
@pytest.mark.parametrize("extra, expected", [
    (("--best_model_metric", "valid_f1"), ("--best_model_metric",
                                           "valid_f1", "tracking_f1")),
    (("--best_model_metric", "tracking_f1"),
     ("--best_model_metric", "tracking_f1", "--tracking_validation_every")),
    (("--tracking_validation_every", "1", "--best_model_metric",
      "tracking_f1"), ("tracking_f1", "whole_subject", "generation")),
    (("--tracking_validation_every", "1", "--tracking_validation_mode",
      "whole_subject", "--tracking_validation_tracking_mask_group",
      "wm_mask", "--best_model_metric", "tracking_vc"),
     ("tracking_vc", "--tracking_validation_bundle_key")),
    (("--tracking_validation_every", "1", "--tracking_validation_mode",
      "whole_subject"), ("--tracking_validation_seeding_mask_group",
                         "neither")),
    (("--tracking_validation_every", "-1",),
     ("--tracking_validation_every", ">= 0", "-1")),
    (("--tracking_validation_every", "1", "--tracking_validation_nb_points",
      "0"), ("tracking_validation_nb_points", ">= 1", "0")),
    (("--add_eos", "--tracking_validation_every", "1",
      "--tracking_validation_eos_stop", "1.5"),
     ("--tracking_validation_eos_stop", "[0, 1) or 'max'", "1.5")),
    (("--tracking_validation_every", "1", "--tracking_validation_eos_stop",
      "0.3"), ("--tracking_validation_eos_stop", "with EOS",
               "one without")),
    # Refused once the folder existed (by the callback, at train start).
    (("--tracking_validation_every", "1", "--tracking_validation_nb_points",
      "1000"), ("--tracking_validation_nb_points", "expected fewer than",
                "at 1.5 mm steps), found 1000")),
    (("--tracking_validation_every", "1", "--tracking_validation_mode",
      "whole_subject", "--tracking_validation_seeding_mask_group", "brain"),
     ("--tracking_validation_seeding_mask_group", "'brain'")),
    (("--tracking_validation_every", "1", "--best_model_metric",
      "connectivity_score"), ("connectivity_score", "connectivity")),
    (("--tracking_validation_every", "1", "--tracking_validation_mode",
      "whole_subject", "--tracking_validation_tracking_mask_group",
      "wm_mask", "--tracking_validation_bundle_key", "bundle"),
     ("--tracking_validation_bundle_key", "'bundle'")),
])
def test_bad_tracking_validation_options(tmp_path, plain_hdf5, capsys, extra,
                                         expected):
    assert_user_error(train_main, _train_args(str(tmp_path), "bad",
                                              plain_hdf5, 2, *extra),
                      capsys, tmp_path, *expected)
