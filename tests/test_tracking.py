"""Tracking: seeds, stopping criteria, both directions, the script.

The tracker is tested with real Learn2track models: some with a direction
getter whose last layer is set to a constant output (a known direction, a
known EOS probability), so that stops are exact; and one trained for a few
batches on synthetic data (module fixture) for the script.
"""
import json
import math
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from dipy.io.streamline import load_tractogram
from scipy.ndimage import map_coordinates

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.packed import make_array_sequence
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.space import points_vox_corner_to_rasmm
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.manifest import write_manifest
from dwi_ml.models import Learn2TrackModel
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.seeding import make_seeds
from dwi_ml.tracking.stopping import StopReason, TrackingMask, keep_by_length
from dwi_ml.tracking.tracking_io import (
    load_experiment_model,
    save_tractogram_with_seeds,
)
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput
from tests.tolerances import EPS32, EPS64, rounding_atol

AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])
SHAPE = (14, 10, 8)
NB_FEATURES = 4
STEP_MM = 2.0


# ----------------------------------------------------------------------
# Real models with a known output
def constant_model(direction=(1.0, 0.0, 0.0), eos_probability=None,
                   nb_previous_dirs=1):
    """A Learn2track whose outputs are constant: ``direction`` (voxel
    space) and, with EOS, ``eos_probability``."""
    torch.manual_seed(0)
    dg_args = {"add_eos": eos_probability is not None}
    model = Learn2TrackModel("constant", nb_features=NB_FEATURES,
                             step_size=STEP_MM,
                             nb_previous_dirs=nb_previous_dirs,
                             rnn_layer_sizes=[8], dg_args=dg_args)
    last = model.direction_getter.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        bias = list(direction)
        if eos_probability is not None:
            bias.append(math.log(eos_probability / (1 - eos_probability)))
        last.bias.copy_(torch.tensor(bias))
    return model


def box_mask(x_range=(2, 10)):
    """Mask of voxels x in x_range, y in [2, 8), z in [2, 6)."""
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[x_range[0]:x_range[1], 2:8, 2:6] = 1
    return mask


def make_tracker(model, mask=None, **kwargs):
    volume = np.random.default_rng(0).normal(
        size=SHAPE + (NB_FEATURES,)).astype(np.float32)
    return BatchedTracker(model, volume, AFFINE, TrackingMask(SHAPE, mask),
                          STEP_MM, **kwargs)


SEED = np.array([[3.25, 5.5, 4.5]], dtype=np.float32)


# ----------------------------------------------------------------------
# Seeds
def test_seeds_npv_and_nt_fall_in_mask_voxels():
    mask = box_mask()
    seeds = make_seeds(mask, np.random.default_rng(0), npv=3)
    assert seeds.shape == (3 * int(mask.sum()), 3)
    voxels = np.floor(seeds).astype(int)
    assert np.all(mask[tuple(voxels.T)] == 1)
    # Each voxel gets exactly npv seeds.
    _, counts = np.unique(voxels, axis=0, return_counts=True)
    assert np.all(counts == 3)
    seeds_nt = make_seeds(mask, np.random.default_rng(0), nt=50)
    assert seeds_nt.shape == (50, 3)
    assert np.all(mask[tuple(np.floor(seeds_nt).astype(int).T)] == 1)
    again = make_seeds(mask, np.random.default_rng(0), nt=50)
    np.testing.assert_array_equal(seeds_nt, again)
    # A seed is taken for the generator it seeds (it was an AttributeError).
    np.testing.assert_array_equal(make_seeds(mask, 0, nt=50), seeds_nt)


def test_seeds_stay_in_their_voxel_after_float32_rounding():
    """A draw just below 1 must not round onto the next voxel's edge.

    Seeds are float32: near coordinate c the spacing of float32 values is
    about c * EPS32, so a draw within half of it of 1 rounded up to the
    next voxel (54 of 1.76 million seeds with voxels at 200 to 255, some
    then outside the seeding mask). A voxel at x = 2**20, where the spacing
    is 1/8, shows it for one draw in 16.
    """
    voxel = 2 ** 20
    mask = np.zeros((voxel + 1, 1, 1), dtype=np.float32)
    mask[voxel] = 1
    for npv, nt in ((400, None), (None, 400)):
        seeds = make_seeds(mask, np.random.default_rng(0), npv=npv, nt=nt)
        np.testing.assert_array_equal(np.floor(seeds[:, 0]), voxel)
        np.testing.assert_array_equal(np.floor(seeds[:, 1:]), 0)


def test_seeds_errors():
    with pytest.raises(DwiMLUserError, match="found none"):
        make_seeds(np.zeros(SHAPE), np.random.default_rng(0), npv=1)
    with pytest.raises(DwiMLUserError, match="exactly one"):
        make_seeds(box_mask(), np.random.default_rng(0), npv=1, nt=3)


# ----------------------------------------------------------------------
# Steps and stopping criteria
def test_steps_are_step_size_mm_on_anisotropic_voxels():
    direction = np.array([1.0, 2.0, -0.5])
    tracker = make_tracker(constant_model(direction), max_length_mm=12,
                           track_forward_only=True)
    result = tracker.track(np.array([[7.0, 5.0, 4.0]], dtype=np.float32))
    points = result.streamlines[0]
    steps_vox = np.diff(points, axis=0)
    steps_mm = np.linalg.norm(steps_vox @ AFFINE[:3, :3].T, axis=1)
    # Each float32 point is within EPS32 / 2 of its coordinates (< 14
    # voxels): a step of >= 2 mm / 3 mm voxels, measured between two
    # points, is within that relatively, plus the tracker's own float32
    # step (a few roundings).
    rtol = rounding_atol(SHAPE[0] / (STEP_MM / AFFINE.max()), 4)
    np.testing.assert_allclose(steps_mm, STEP_MM, rtol=rtol)
    unit = direction / np.linalg.norm(direction)
    np.testing.assert_allclose(
        steps_vox / np.linalg.norm(steps_vox, axis=1, keepdims=True),
        np.tile(unit, (len(steps_vox), 1)), rtol=0, atol=rtol)


def test_mask_stop_is_exact():
    # +x, 1 voxel per step: the mask, 1 up to the centre 9.5 and 0 from
    # 10.5, interpolates to >= 0.5 up to x = 10.
    tracker = make_tracker(constant_model(), box_mask(),
                           track_forward_only=True)
    result = tracker.track(SEED)
    points = result.streamlines[0]
    # Steps of exactly 1 voxel from 3.25: every sum is exact in float32.
    np.testing.assert_array_equal(points[:, 0], np.arange(3.25, 10, 1.0))
    assert result.forward_stops[0] == StopReason.MASK
    assert result.backward_stops is None


def test_volume_border_stops_without_mask():
    tracker = make_tracker(constant_model(), None, track_forward_only=True)
    points = tracker.track(SEED).streamlines[0]
    assert points[-1, 0] < SHAPE[0] <= points[-1, 0] + 1


def test_seed_outside_mask_gives_one_point():
    tracker = make_tracker(constant_model(), box_mask())
    result = tracker.track(np.array([[0.5, 0.5, 0.5]], dtype=np.float32))
    assert len(result.streamlines[0]) == 1
    assert result.forward_stops[0] == StopReason.MASK


def test_seeds_are_checked_by_voxel_not_interpolated():
    mask = TrackingMask(SHAPE, box_mask())
    corner_seed = torch.tensor([[9.9, 7.9, 5.9]])   # in voxel (9, 7, 5)
    assert mask.contains_voxel(corner_seed).item()
    assert not mask.contains(corner_seed).item()    # 0.6 ** 3 < 0.5


def test_backward_half_of_a_seed_alone_starts_opposite():
    # The forward step (+x) leaves the mask at once; the backward half
    # starts with -x, then the constant model's +x is a U-turn.
    seed = np.array([[9.75, 5.5, 4.5]], dtype=np.float32)
    result = make_tracker(constant_model(), box_mask()).track(seed)
    assert result.forward_stops[0] == StopReason.MASK
    assert result.backward_stops[0] == StopReason.ANGLE
    np.testing.assert_array_equal(result.streamlines[0],   # exact sums
                                  [[9.75, 5.5, 4.5], [8.75, 5.5, 4.5]])


def test_max_length_stop():
    tracker = make_tracker(constant_model(), box_mask(), max_length_mm=6.0,
                           track_forward_only=True)
    result = tracker.track(SEED)
    assert len(result.streamlines[0]) == 4    # 3 steps of 2 mm
    assert result.forward_stops[0] == StopReason.MAX_LENGTH


def test_max_length_counts_both_halves():
    # Forward: 7 points (mask). Backward, U-turn allowed (theta 180): 2 more
    # points reach the 16 mm cap of the whole streamline.
    tracker = make_tracker(constant_model(), box_mask(), max_length_mm=16.0,
                           max_angle_deg=180)
    result = tracker.track(SEED)
    assert result.forward_stops[0] == StopReason.MASK
    assert len(result.streamlines[0]) == 9
    assert result.backward_stops[0] == StopReason.MAX_LENGTH


def test_angle_stop_at_the_seed_u_turn():
    # The constant model wants +x again after the reversed forward half
    # (-x): a 180 degree turn, refused below 180 and allowed at 180.
    result = make_tracker(constant_model(), box_mask(),
                          max_angle_deg=170).track(SEED)
    forward_only = make_tracker(constant_model(), box_mask(),
                                track_forward_only=True).track(SEED)
    assert result.backward_stops[0] == StopReason.ANGLE
    np.testing.assert_array_equal(result.streamlines[0],
                                  forward_only.streamlines[0][::-1])
    allowed = make_tracker(constant_model(), box_mask(),
                           max_angle_deg=180).track(SEED)
    assert allowed.backward_stops[0] == StopReason.MASK
    assert len(allowed.streamlines[0]) == 2 * 7 - 1


def test_eos_stop():
    model = constant_model(eos_probability=0.7)
    stopped = make_tracker(model, box_mask(), eos_threshold=0.5).track(SEED)
    assert len(stopped.streamlines[0]) == 1
    assert stopped.forward_stops[0] == StopReason.EOS
    going = make_tracker(model, box_mask(), eos_threshold=0.8,
                         track_forward_only=True).track(SEED)
    assert going.forward_stops[0] == StopReason.MASK
    assert len(going.streamlines[0]) == 7
    with pytest.raises(DwiMLUserError, match="no EOS"):
        make_tracker(constant_model(), box_mask(), eos_threshold=0.5)


TRACK = ("BatchedTracker.track argument seeds_vox_corner: expected an "
         "(N, 3) array of points, found ")
CONTINUE = ("BatchedTracker.continue_streamlines argument "
            "prefixes_vox_corner: expected an (N, K, 3) array of prefixes, "
            "K >= 1, found ")


@pytest.mark.parametrize("seeds, found", [
    (np.zeros((2, 2)), "shape (2, 2)."),
    (np.zeros(3), "shape (3,)."),
    (np.zeros((2, 1, 3)), "shape (2, 1, 3)."),
    ([[1.5, 1.5, 1.5], [1.5, 1.5]],
     "a ragged sequence (rows of different lengths)."),
    (np.array([[3.5, 3.5, 3.5], [np.inf, 1, 1], [np.nan, 1, 1]]),
     "NaN or infinite coordinates in 2 of 3 seeds (seed 1 first)."),
])
def test_seeds_that_are_not_n_by_3_points_are_refused(seeds, found):
    """(N, 2), (3,) and (N, 1, 3) failed deep in stopping.py or
    propagation.py; a NaN seed came back as a streamline."""
    tracker = make_tracker(constant_model(), box_mask())
    for track, message in (
            (tracker.track, TRACK),
            (lambda seeds: tracker.track_in_batches(seeds, 2, True),
             TRACK.replace(".track ", ".track_in_batches "))):
        with pytest.raises(DwiMLUserError) as error:
            track(seeds)
        assert str(error.value) == message + found


def test_no_seed_gives_an_empty_result_in_batches_too():
    """track_in_batches without seeds: 'need at least one array to
    concatenate'; track gave the empty result. A list of points is fine."""
    tracker = make_tracker(constant_model(), box_mask())
    for seeds in (np.zeros((0, 3), np.float32), []):
        for result in (tracker.track(seeds),
                       tracker.track_in_batches(seeds, 10, True)):
            assert len(result.streamlines) == 0
            assert result.seeds.shape == (0, 3)
            assert len(result.forward_stops) == 0
            assert len(result.backward_stops) == 0
    listed = tracker.track_in_batches(SEED.tolist(), 10, True)
    np.testing.assert_array_equal(listed.streamlines[0],
                                  tracker.track(SEED).streamlines[0])


@pytest.mark.parametrize("prefixes, found", [
    (np.zeros((2, 0, 3)), "shape (2, 0, 3)."),
    (np.zeros((2, 3)), "shape (2, 3)."),
    (np.zeros((2, 2, 2)), "shape (2, 2, 2)."),
    ([np.full((2, 3), 3.5), np.full((3, 3), 3.5)],
     "a ragged sequence (rows of different lengths)."),
    (np.array([[[3.5, 3.5, 3.5], [4.5, 3.5, 3.5]],
               [[3.5, 3.5, 3.5], [np.nan, 3.5, 3.5]]]),
     "NaN or infinite coordinates in 1 of 2 prefixes (prefix 1 first)."),
])
def test_prefixes_that_are_not_n_k_3_points_are_refused(prefixes, found):
    """Zero-point prefixes tracked from voxel (0, 0, 0); NaN prefixes came
    back as they were."""
    tracker = make_tracker(constant_model(), box_mask())
    with pytest.raises(DwiMLUserError) as error:
        tracker.continue_streamlines(prefixes)
    assert str(error.value) == CONTINUE + found


def test_no_prefix_gives_an_empty_result():
    streamlines, stops = make_tracker(constant_model(), box_mask()) \
        .continue_streamlines(np.zeros((0, 2, 3), np.float32))
    assert len(streamlines) == 0 and stops.shape == (0,)


def test_a_prefix_outside_the_volume_stops_at_once_as_a_seed_does():
    """A prefix ending outside the volume (x < 0) was grown when the model
    steered it back in; like a seed outside the volume, it now stops at
    once (MASK) and comes back as it is, and the others grow as before."""
    tracker = make_tracker(constant_model(), None, track_forward_only=True)
    outside = np.array([[-1.5, 5.5, 4.5], [-0.5, 5.5, 4.5]], np.float32)
    inside = np.array([[2.25, 5.5, 4.5], [3.25, 5.5, 4.5]], np.float32)
    streamlines, stops = tracker.continue_streamlines(
        np.stack([inside, outside, inside]))
    np.testing.assert_array_equal(streamlines[1], outside)
    assert stops[1] == StopReason.MASK
    alone, alone_stops = tracker.continue_streamlines(inside[None])
    for row in (0, 2):
        np.testing.assert_array_equal(streamlines[row], alone[0])
        assert stops[row] == alone_stops[0] == StopReason.MASK
    assert len(alone[0]) == 2 + 10     # x from 4.25 to 13.25, then out
    seed = tracker.track(outside[-1:])
    assert len(seed.streamlines[0]) == 1
    assert seed.forward_stops[0] == StopReason.MASK


def test_keep_by_length():
    keep = keep_by_length(np.array([1, 2, 6, 11, 12]), 2.0, 2.0, 20.0)
    np.testing.assert_array_equal(keep, [False, True, True, True, False])


# ----------------------------------------------------------------------
# A trained model and the script
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tracking"))
    paths = make_synthetic_dataset(os.path.join(folder, "synthetic"),
                                   nb_subjects=2, nb_streamlines=300, seed=0)
    hdf5_file = os.path.join(folder, "data.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, paths.splits["training"],
                        paths.splits["validation"], [], step_size=STEP_MM)
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    sampler = BatchSampler(dataset, "streamlines", 25, 25, "nb_streamlines",
                           seed=0)
    loader = BatchLoaderOneInput(dataset, "streamlines", "input",
                                 InputSpec.from_options(step_size=STEP_MM),
                                 reverse_ratio=0.5,
                                 seed=0)
    torch.manual_seed(0)
    nb_features = dataset.nb_features[dataset.volume_groups.index("input")]
    model = Learn2TrackModel("trained", nb_features=nb_features,
                             step_size=STEP_MM, nb_previous_dirs=1,
                             rnn_layer_sizes=[32])
    trainer = DWIMLTrainerOneInput(model, folder, "trained", sampler, loader,
                                   max_epochs=4, learning_rate=0.01, seed=0)
    trainer.save_parameters()
    # Tiny LSTM steps train faster on one thread; the tests below track at
    # the suite's thread count.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer.train_and_validate()
    torch.set_num_threads(previous_threads)
    # An untrained Fisher-von Mises model with EOS, for 'prob' tracking.
    fvm = Learn2TrackModel("fvm", nb_features=nb_features, step_size=None,
                           rnn_layer_sizes=[8], dg_key="fisher-von-mises",
                           dg_args={"add_eos": True})
    fvm.save_params_and_state(os.path.join(folder, "fvm", "best_model"))
    subject = paths.splits["validation"][0]
    yield {"folder": folder, "hdf5": hdf5_file, "subject": subject,
           "trained": os.path.join(folder, "trained"),
           "fvm": os.path.join(folder, "fvm"),
           "reference": paths.subjects[subject].dwi}


def validation_volumes(data):
    """The validation subject's input volume and white-matter mask."""
    dataset = MultiSubjectDataset(data["hdf5"])
    dataset.load_data(subj_id=data["subject"])
    subject = dataset.validation_set.get_subject(0)
    return (subject.mri_data_list[dataset.volume_groups.index("input")],
            subject.mri_data_list[dataset.volume_groups.index("wm_mask")])


def run_track(data, out, *options, experiment="trained"):
    track_main([data[experiment], data["hdf5"], data["subject"], "input",
                str(out), "--tracking_mask_group", "wm_mask", *options])


@pytest.mark.parametrize("extension", [".trk", ".trx"])
def test_output_loads_with_seeds_on_streamlines(data, tmp_path, extension,
                                                capsys):
    out = tmp_path / f"out{extension}"
    capsys.readouterr()
    run_track(data, out, "--nt", "300", "--min_length", "4")
    sft = load_tractogram(str(out), data["reference"], bbox_valid_check=True)
    assert capsys.readouterr().out == (
        f"Saved {len(sft)} streamlines in {out} (how they were made: "
        f"{out}.json).\n")
    assert len(sft) > 50
    seeds = np.asarray(sft.data_per_streamline["seeds"])
    assert seeds.shape == (len(sft), 3)
    # Seeds are in RAS mm, like the loaded streamlines: each is a point of
    # its streamline.
    distances = [np.min(np.linalg.norm(s - seed, axis=1))
                 for s, seed in zip(sft.streamlines, seeds)]
    # Each coordinate went through ~16 float32 roundings (float32 seeds and
    # steps, voxel -> RAS mm -> the format's own space and back), in
    # values below the largest coordinate; a 3D distance adds sqrt(3).
    atol_mm = rounding_atol(np.abs(sft.streamlines.get_data()).max(), 16)
    assert np.max(distances) <= math.sqrt(3) * atol_mm
    lengths_mm = np.array([np.sum(np.linalg.norm(np.diff(s, axis=0),
                                                 axis=1))
                           for s in sft.streamlines])
    # A step's length is off by at most its two ends' errors.
    slack_mm = 2 * math.sqrt(3) * atol_mm * (sft.streamlines._lengths - 1)
    assert np.all(lengths_mm >= 4 - slack_mm)
    assert np.all(lengths_mm <= 300 + slack_mm)
    # The reference is the input group's grid (stored as float32 in both).
    image = nib.load(data["reference"])
    np.testing.assert_allclose(sft.affine, image.affine, rtol=EPS32)
    np.testing.assert_array_equal(sft.dimensions, image.shape[:3])


def test_tck_output(data, tmp_path):
    """The same seeds to .trk and .tck: the same streamlines."""
    loaded = {}
    for extension in (".trk", ".tck"):
        out = tmp_path / f"out{extension}"
        run_track(data, out, "--nt", "50", "--min_length", "0")
        loaded[extension] = load_tractogram(
            str(out), data["reference"], bbox_valid_check=True).streamlines
    trk, tck = loaded[".trk"], loaded[".tck"]
    assert len(trk) > 0
    np.testing.assert_array_equal(tck._lengths, trk._lengths)
    # Both hold float32 coordinates: .tck in RAS mm (1 rounding), .trk in
    # voxel mm, reached and left through the affine (at most ~4 roundings
    # each way, plus its storage): 10 roundings of values below the
    # largest coordinate in RAS mm or in voxel mm (here RAS mm minus the
    # diagonal affine's translation). Measured: 2.5 float32 spacings.
    image = nib.load(data["reference"])
    magnitude = max(np.abs(trk.get_data()).max(),
                    np.abs(trk.get_data() - image.affine[:3, 3]).max())
    np.testing.assert_allclose(tck.get_data(), trk.get_data(), rtol=0,
                               atol=rounding_atol(magnitude, 10))


def test_both_directions_extend_the_forward_halves(data):
    """Same seeds: each streamline tracked both ways holds the forward-only
    one, reversed, then its backward half."""
    volume, mask = validation_volumes(data)
    model = load_experiment_model(data["trained"])
    seeds = make_seeds(mask.data, np.random.default_rng(0), nt=200)
    results = {}
    for forward_only in (True, False):
        tracker = BatchedTracker(
            model, volume.data, volume.affine,
            TrackingMask(volume.shape, mask.data), STEP_MM,
            track_forward_only=forward_only)
        results[forward_only] = tracker.track_in_batches(seeds, 64, True)
    forward, both = results[True].streamlines, results[False].streamlines
    forward_lengths = forward._lengths
    assert np.all(both._lengths >= forward_lengths)
    # Measured: 54% of the streamlines grow backward, 1.35x the points.
    assert np.mean(both._lengths > forward_lengths) > 0.3
    assert np.mean(both._lengths) > 1.15 * np.mean(forward_lengths)
    # The forward halves ran the same batches (same shapes, same kernels):
    # bit for bit the same.
    for one_way, two_ways in zip(forward, both):
        np.testing.assert_array_equal(two_ways[:len(one_way)], one_way[::-1])
    # Every turn, including the one at the seed, is within theta (45). The
    # tracker measured it on its exact float32 steps; here steps are
    # differences of the stored float32 points, each coordinate within
    # EPS32 / 2 of its value (< max(shape) voxels), so relatively within
    # step_rtol of a step (>= step / largest voxel size). A cosine of two
    # steps moves by at most twice their errors, plus the tracker's own
    # float32 cosine (a few roundings).
    min_step_vox = STEP_MM / np.linalg.norm(volume.affine[:3, :3],
                                           axis=0).max()
    step_rtol = math.sqrt(3) * rounding_atol(max(volume.shape), 1) \
        / min_step_vox
    cosine_atol = 4 * step_rtol + rounding_atol(1, 8)
    for streamline in both:
        steps = np.diff(streamline, axis=0) @ volume.affine[:3, :3].T
        cosines = np.sum(steps[1:] * steps[:-1], axis=1) / (
            np.linalg.norm(steps[1:], axis=1)
            * np.linalg.norm(steps[:-1], axis=1))
        assert np.all(cosines >= math.cos(math.radians(45)) - cosine_atol)


def _trilinear(volume, points_vox_corner):
    """scipy's trilinear interpolation (voxel values at voxel centres,
    clamped at the border), (P, F): independent of the package's."""
    coords = (np.asarray(points_vox_corner, dtype=np.float64) - 0.5).T
    volume = np.asarray(volume, dtype=np.float64).reshape(
        volume.shape[:3] + (-1,))
    return np.stack([map_coordinates(volume[..., f], coords, order=1,
                                     mode="nearest")
                     for f in range(volume.shape[3])], axis=1)


def _expected_stops(model, volume, mask, points, first_step=None):
    """Reasons (set of StopReason) why the tracker may stop after
    ``points`` (fed to the model one by one, as the tracker does), at 45
    degrees; ``first_step``: the step it forced instead of the model's."""
    points = torch.as_tensor(points, dtype=torch.float64)
    inputs = torch.as_tensor(_trilinear(volume.data, points))
    hidden = None
    with torch.no_grad():
        for t in range(len(points)):
            outputs, hidden = model.forward_step(inputs[t:t + 1],
                                                 points[None, :t + 1], hidden)
        direction = model.get_tracking_directions(outputs)[0][0].numpy()
    linear = volume.affine[:3, :3]
    step = (first_step if first_step is not None else
            direction * STEP_MM / np.linalg.norm(linear @ direction))
    next_point = points[-1].numpy() + step
    reasons = set()
    if np.any(next_point < 0) or np.any(next_point >= volume.shape[:3]):
        return {StopReason.MASK}, direction
    if _trilinear(mask.data, next_point[None])[0, 0] < 0.5:
        reasons.add(StopReason.MASK)
    if len(points) > 1:
        previous = linear @ (points[-1] - points[-2]).numpy()
        new = linear @ step
        cosine = previous @ new / np.linalg.norm(previous) \
            / np.linalg.norm(new)
        if cosine < math.cos(math.radians(45)):
            reasons.add(StopReason.ANGLE)
    return reasons, direction


def test_stop_reasons_match_an_independent_replay(data):
    """Each half's StopReason (as logged) is one that holds at its next
    point, replaying the model streamline by streamline with scipy's
    interpolation: the mask (out of the volume, or trilinear < 0.5) or a
    turn above 45 degrees (in mm)."""
    volume, mask = validation_volumes(data)
    model = load_experiment_model(data["trained"]).double()
    seeds = make_seeds(mask.data, np.random.default_rng(1), nt=40)
    results = {
        forward_only: BatchedTracker(
            model, volume.data, volume.affine,
            TrackingMask(volume.shape, mask.data), STEP_MM,
            track_forward_only=forward_only).track(seeds)
        for forward_only in (True, False)}
    forward, both = results[True], results[False]
    stops_seen = set()
    for i in range(len(seeds)):
        half = np.asarray(forward.streamlines[i], dtype=np.float64)
        reasons, first_direction = _expected_stops(model, volume, mask, half)
        assert forward.forward_stops[i] in reasons, i
        whole = np.asarray(both.streamlines[i], dtype=np.float64)
        # A seed alone starts backward opposite to its refused step.
        forced = None
        if len(whole) == 1:
            forced = -first_direction * STEP_MM / np.linalg.norm(
                volume.affine[:3, :3] @ first_direction)
        reasons, _ = _expected_stops(model, volume, mask, whole, forced)
        assert both.backward_stops[i] in reasons, i
        stops_seen |= {int(forward.forward_stops[i]),
                       int(both.backward_stops[i])}
    assert stops_seen == {StopReason.MASK, StopReason.ANGLE}


def test_same_seed_same_output(data, tmp_path):
    def tracked(name, seed, *options, experiment="trained"):
        out = tmp_path / name
        run_track(data, out, "--nt", "100", "--seed", str(seed), *options,
                  experiment=experiment)
        return load_tractogram(str(out), data["reference"]).streamlines

    first = tracked("a.trk", 5)
    np.testing.assert_array_equal(first.get_data(),
                                  tracked("b.trk", 5).get_data())
    other = tracked("c.trk", 6)
    assert (len(other) != len(first)
            or not np.array_equal(first.get_data(), other.get_data()))
    prob_options = ("--algo", "prob", "--step_size", "1.5", "--min_length",
                    "0", "--theta", "180", "--eos_stop", "0.99")
    prob = tracked("p1.trk", 5, *prob_options, experiment="fvm")
    assert len(prob) > 0
    np.testing.assert_array_equal(
        prob.get_data(),
        tracked("p2.trk", 5, *prob_options, experiment="fvm").get_data())


def _perturbed_copy(data, tmp_path, name, folder):
    """A copy of the trained experiment whose ``folder`` (best_model or
    checkpoint/model) holds the trained weights, perturbed."""
    experiment = tmp_path / name
    shutil.copytree(data["trained"], experiment)
    model = load_experiment_model(data["trained"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-0.5)
    model.save_params_and_state(str(experiment / folder))
    # checkpoint/'s manifest covers model/: written again, as a save does.
    write_manifest(str(experiment / folder.split("/")[0]))
    return str(experiment)


def test_use_latest_epoch(data, tmp_path):
    """--use_latest_epoch tracks with checkpoint/model, not best_model."""
    # 'latest': checkpoint/ holds other weights than best_model/;
    # 'expected': its best_model/ holds those weights.
    data = {**data,
            "latest": _perturbed_copy(data, tmp_path, "latest",
                                      "checkpoint/model"),
            "expected": _perturbed_copy(data, tmp_path, "expected",
                                        "best_model")}

    def tracked(name, experiment, *options):
        out = tmp_path / name
        run_track(data, out, "--nt", "40", "--min_length", "0",
                  "--batch_size", "7", *options, experiment=experiment)
        with open(f"{out}.json") as f:
            provenance = json.load(f)
        return (load_tractogram(str(out), data["reference"]).streamlines,
                provenance)

    latest, latest_made = tracked("latest.trk", "latest",
                                  "--use_latest_epoch")
    expected, expected_made = tracked("expected.trk", "expected")
    best, best_made = tracked("best.trk", "latest")
    assert (latest_made["model"], best_made["model"]) == ("latest", "best")
    assert latest_made["weights_sha256"] == expected_made["weights_sha256"]
    assert latest_made["weights_sha256"] != best_made["weights_sha256"]
    # Same model, seeds and batches: bit for bit the same.
    np.testing.assert_array_equal(latest._lengths, expected._lengths)
    np.testing.assert_array_equal(latest.get_data(), expected.get_data())
    assert (not np.array_equal(latest._lengths, best._lengths)
            or not np.array_equal(latest.get_data(), best.get_data()))


def test_batch_size_does_not_change_det_results(data):
    """Batches of 7 and of 1000 seeds give the same streamlines.

    In float32 they differ in the last bits: matrix products of different
    sizes take different CPU kernels, and 80 steps of an RNN grow that to
    ~1e-4 mm. The claim is about logic (no streamline's state leaks into
    another's), so the model tracks in float64, where the same growth stays
    far below the tolerance.
    """
    volume, mask = validation_volumes(data)
    model = load_experiment_model(data["trained"]).double()
    seeds = make_seeds(mask.data, np.random.default_rng(0), nt=60)
    results = [BatchedTracker(model, volume.data, volume.affine,
                              TrackingMask(volume.shape, mask.data), STEP_MM)
               .track_in_batches(seeds, batch_size, True)
               for batch_size in (7, 1000)]
    streamlines = [result.streamlines for result in results]
    np.testing.assert_array_equal(streamlines[0]._lengths,
                                  streamlines[1]._lengths)
    np.testing.assert_array_equal(results[0].forward_stops,
                                  results[1].forward_stops)
    # Rounding differences grow over the steps: in float32 this test
    # differs by up to ~40 EPS32 * 24 voxels (the largest coordinate), 8e-5
    # voxels, across CPUs. Allowing 1e4 such roundings in float64 (5e-11
    # voxels) leaves a margin of 250 on that growth, while a logic error
    # moves points by a step (>= 0.67 voxel).
    atol_vox = rounding_atol(max(volume.shape), 1e4, eps=EPS64)
    np.testing.assert_allclose(streamlines[0]._data, streamlines[1]._data,
                               rtol=0, atol=atol_vox)


def _error(capsys, data, argv):
    with pytest.raises(SystemExit) as exit_info:
        track_main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "error:" in message
    return message


def test_errors(data, tmp_path, capsys):
    out = str(tmp_path / "out.trk")
    base = [data["trained"], data["hdf5"], data["subject"], "input"]
    mask = ["--tracking_mask_group", "wm_mask"]
    existing = tmp_path / "existing.trk"
    existing.write_text("")
    cases = [
        ([*base[:2], "subj-99", "input", out, *mask], "subj-99"),
        ([*base[:3], "nope", out, *mask], "nope"),
        ([*base, out, "--tracking_mask_group", "nope"], "nope"),
        ([*base[:3], "wm_mask", out, *mask], "45 inputs per point"),
        ([*base, str(existing), *mask], "already exists"),
        ([*base, str(tmp_path / "out.nii"), *mask], "extensions"),
        ([str(tmp_path / "missing"), *base[1:], out, *mask], "missing"),
        # Named as the script's options (they were the library's
        # "argument 'algo'", "argument 'eos_stop'").
        ([*base, out, *mask, "--algo", "prob"],
         "error: argument --algo: 'prob' needs"),
        ([*base, out, *mask, "--eos_stop", "0.5"],
         "error: argument --eos_stop: the model predicts no EOS"),
        ([*base, out], "mask group"),
        ([*base, out, *mask, "--theta", "0"], "--theta"),
        ([data["fvm"], *base[1:], out, *mask], "--step_size"),
    ]
    for argv, expected in cases:
        assert expected in _error(capsys, data, argv)
    assert not os.path.exists(out)


def test_seeds_saved_in_rasmm(tmp_path):
    streamlines = make_array_sequence(
        np.array([[1.5, 2.5, 3.5], [2.5, 2.5, 3.5]]), np.array([0]),
        np.array([2]))
    seeds = np.array([[1.5, 2.5, 3.5]])
    out = str(tmp_path / "one.trk")
    save_tractogram_with_seeds(streamlines, seeds, AFFINE, SHAPE, out)
    image = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    sft = load_tractogram(out, image, bbox_valid_check=True)
    expected = points_vox_corner_to_rasmm(seeds, AFFINE)
    # float32 in the file (seeds in mm; points in the format's own space,
    # converted both ways: ~8 roundings), in values < the largest in mm.
    atol_mm = rounding_atol(np.abs(expected).max(), 8)
    np.testing.assert_allclose(sft.data_per_streamline["seeds"], expected,
                               rtol=0, atol=atol_mm)
    np.testing.assert_allclose(sft.streamlines[0][0], expected[0], rtol=0,
                               atol=atol_mm)
