"""'prob' tracking: a streamline's draws depend on the run's seed and its
seed's index only, not on the batch size or the streamlines around it.

The models are Learn2track models with each probabilistic direction
getter, untrained (seeded weights), tracking in float64: batches of other
sizes take other matrix-product kernels, whose last bits differ (the claim
is about logic, as in test_tracking's det test); and one FvM model trained
one epoch for the script, in float32.
"""
import numpy as np
import pytest
import torch
from dipy.io.streamline import load_tractogram
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.models import Learn2TrackModel
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.seeding import make_seeds
from dwi_ml.tracking.stopping import TrackingMask
from dwi_ml.tracking.tracking_io import load_subject_volumes
from tests.tolerances import EPS32, EPS64, rounding_atol

PROB_GETTERS = ("sphere-classification", "gaussian", "gaussian-mixture",
                "fisher-von-mises")
SUBJECT = "subj-02"
STEP_MM = 1.0
NB_SEEDS = 20


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("track_prob")
    hdf5_file = make_training_hdf5(str(folder))
    (folder / "experiments").mkdir()
    train_main([str(folder / "experiments"), "fvm", hdf5_file, "input",
                "streamlines", "--max_epochs", "1", "--nb_previous_dirs", "1",
                "--rnn_layer_sizes", "16", "--dg_key", "fisher-von-mises",
                "--step_size", str(STEP_MM), "--seed", "0", "-v", "WARNING"])
    volumes = load_subject_volumes(hdf5_file, SUBJECT, ["input", "wm_mask"])
    # One group alone (a string was read as the groups 'i', 'n', ...).
    alone = load_subject_volumes(hdf5_file, SUBJECT, "input")
    assert list(alone) == ["input"]
    assert np.array_equal(alone["input"].data, volumes["input"].data)
    return {"experiment": str(folder / "experiments" / "fvm"),
            "hdf5": hdf5_file, "folder": folder,
            "volume": volumes["input"], "mask": volumes["wm_mask"].data[..., 0]}


def make_prob_tracker(experiment, dg_key, rng_seed=3, **kwargs):
    torch.manual_seed(0)
    volume = experiment["volume"]
    model = Learn2TrackModel("prob", nb_features=volume.nb_features,
                             step_size=STEP_MM, nb_previous_dirs=1,
                             rnn_layer_sizes=[8], dg_key=dg_key).double()
    return BatchedTracker(model, volume.data, volume.affine,
                          TrackingMask(volume.shape[:3], experiment["mask"]),
                          STEP_MM, max_angle_deg=180.0, max_length_mm=15.0,
                          algo="prob", rng_seed=rng_seed, **kwargs)


def seeds_in_mask(experiment, seed=0, nb_seeds=NB_SEEDS):
    return make_seeds(experiment["mask"], np.random.default_rng(seed),
                      nt=nb_seeds)


def assert_same_streamlines(first, second, magnitude):
    """Same lengths, and points up to float64 rounding.

    As in test_tracking's det test: 1e4 roundings of the coordinates'
    size, ~1e-11 voxels, while another draw moves a point by a random
    angle of a 1 mm step.
    """
    np.testing.assert_array_equal(first._lengths, second._lengths)
    np.testing.assert_allclose(first.get_data(), second.get_data(), rtol=0,
                               atol=rounding_atol(magnitude, 1e4, eps=EPS64))


@pytest.mark.parametrize("dg_key", PROB_GETTERS)
def test_batch_size_does_not_change_prob_streamlines(experiment, dg_key):
    tracker = make_prob_tracker(experiment, dg_key)
    seeds = seeds_in_mask(experiment)
    results = [tracker.track_in_batches(seeds, batch_size, True)
               for batch_size in (1, 7, NB_SEEDS)]
    # Streamlines of a few points would prove little.
    assert np.mean(results[0].streamlines._lengths) > 5
    for other in results[1:]:
        assert_same_streamlines(results[0].streamlines, other.streamlines,
                                max(experiment["volume"].shape))
        np.testing.assert_array_equal(results[0].forward_stops,
                                      other.forward_stops)
        np.testing.assert_array_equal(results[0].backward_stops,
                                      other.backward_stops)


def test_a_seed_draws_the_same_among_other_seeds(experiment):
    """Keys are seed indices: seed i gives the same streamline whatever
    the other seeds (dipy keys by the seed point instead; a permuted seed
    array gives other draws)."""
    tracker = make_prob_tracker(experiment, "fisher-von-mises")
    seeds = seeds_in_mask(experiment)
    others = seeds_in_mask(experiment, seed=1)
    kept = [5, 12]
    others[kept] = seeds[kept]
    first = tracker.track_in_batches(seeds, 7, True).streamlines
    second = tracker.track_in_batches(others, 7, True).streamlines
    assert_same_streamlines(first[kept], second[kept],
                            max(experiment["volume"].shape))
    # The other seeds are not the same streamlines.
    assert not np.allclose(first[0], second[0][:len(first[0])])


def test_rng_seed_changes_the_draws(experiment):
    seeds = seeds_in_mask(experiment)
    results = [make_prob_tracker(experiment, "gaussian", rng_seed)
               .track(seeds).streamlines.get_data()
               for rng_seed in (3, 3, 4)]
    np.testing.assert_array_equal(results[0], results[1])
    assert (results[0].shape != results[2].shape
            or not np.array_equal(results[0], results[2]))


def test_backward_draws_leave_the_forward_halves_alone(experiment):
    """Each half has its own key: tracking backward too changes no draw of
    the forward halves, and a seed alone continued draws as its forward
    half."""
    seeds = seeds_in_mask(experiment)
    both = make_prob_tracker(experiment, "sphere-classification")
    forward = make_prob_tracker(experiment, "sphere-classification",
                                track_forward_only=True)
    forward_halves = forward.track(seeds).streamlines
    streamlines = both.track(seeds).streamlines
    for forward_half, streamline in zip(forward_halves, streamlines):
        # The final streamline starts with the reversed forward half.
        np.testing.assert_array_equal(streamline[:len(forward_half)],
                                      forward_half[::-1])
    continued, _ = forward.continue_streamlines(seeds[:, None, :])
    np.testing.assert_array_equal(continued.get_data(),
                                  forward_halves.get_data())


def track_script(experiment, name, *options):
    out = experiment["folder"] / f"{name}.trk"
    track_main([experiment["experiment"], experiment["hdf5"], SUBJECT,
                "input", str(out), "--tracking_mask_group", "wm_mask",
                "--algo", "prob", "--nt", "30", "--min_length", "0",
                "--theta", "180", "--max_length", "20", "--seed", "3",
                "-v", "WARNING", *options])
    return load_tractogram(str(out), "same", bbox_valid_check=True)


def test_script_batch_size_does_not_change_prob_tractograms(experiment):
    small = track_script(experiment, "small", "--batch_size", "3")
    large = track_script(experiment, "large", "--batch_size", "1000")
    assert len(small) > 10
    np.testing.assert_array_equal(small.streamlines._lengths,
                                  large.streamlines._lengths)
    # float32: kernels of other row counts round the RNN's products in
    # other last bits, and the next steps carry it on (here ~1 rounding of
    # the coordinates after 20 steps). The bound allows 100 roundings of
    # the coordinates' size (mm, RAS) per point of the longest streamline,
    # ~6e-3 mm; another draw moves a point by a random angle of a 1 mm
    # step. Streamlines of at most 20 mm keep that growth short.
    magnitude = np.abs(small.streamlines.get_data()).max()
    steps = int(small.streamlines._lengths.max())
    np.testing.assert_allclose(small.streamlines.get_data(),
                               large.streamlines.get_data(), rtol=0,
                               atol=rounding_atol(magnitude, 100 * steps,
                                                  eps=EPS32))
