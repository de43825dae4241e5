"""The tracker's cheap paths give the general paths' values, bit for bit.

A diagonal affine turns voxel displacements into mm with one product per
coordinate instead of a matrix product, a model without a neighbourhood
reads the volume at the points themselves instead of adding a zero
offset, and the tracking mask is read with the next step's inputs from one
joined table; in eval mode a direction getter calls its layers directly
and scales its directions without ``F.normalize``: tracks must not
change. Real untrained Learn2track models (seeded), a random volume and a
tracking mask.
"""
import re

import numpy as np
import pytest
import torch

from dwi_ml.data.processing.interpolation import interpolate_volume_at_coordinates
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import Learn2TrackModel
from dwi_ml.models.direction_getters import make_direction_getter
from dwi_ml.models.directions import unit_vectors
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.stopping import TrackingMask

SHAPE = (12, 10, 9)
NB_FEATURES = 5
STEP_MM = 1.0
DIAGONAL = np.diag([1.0, 1.25, 1.5, 1.0])


def _tracker(affine, **model_options):
    torch.manual_seed(0)
    model = Learn2TrackModel("step", nb_features=NB_FEATURES,
                             step_size=STEP_MM, nb_previous_dirs=2,
                             rnn_layer_sizes=[8], **model_options)
    volume = np.random.default_rng(0).normal(
        size=SHAPE + (NB_FEATURES,)).astype(np.float32)
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[1:11, 1:9, 1:8] = 1
    return BatchedTracker(model, volume, affine, TrackingMask(SHAPE, mask),
                          STEP_MM, max_angle_deg=60.0, max_length_mm=20.0)


def _seeds():
    rng = np.random.default_rng(1)
    return (rng.uniform(2, 7, (40, 3))).astype(np.float32)


def _assert_same_tracks(first, second):
    np.testing.assert_array_equal(first.streamlines.get_data(),
                                  second.streamlines.get_data())
    np.testing.assert_array_equal(first.streamlines._lengths,
                                  second.streamlines._lengths)
    np.testing.assert_array_equal(first.forward_stops, second.forward_stops)
    np.testing.assert_array_equal(first.backward_stops,
                                  second.backward_stops)


def test_diagonal_affine_to_mm_is_the_matrix_product():
    tracker = _tracker(DIAGONAL)
    vectors = torch.as_tensor(np.random.default_rng(2).normal(
        size=(100, 3)).astype(np.float32))
    assert torch.equal(tracker.to_mm(vectors),
                       vectors @ tracker.linear_part.T)
    oblique = DIAGONAL.copy()
    oblique[0, 1] = 0.3
    oblique_tracker = _tracker(oblique)
    assert torch.equal(oblique_tracker.to_mm(vectors),
                       vectors @ oblique_tracker.linear_part.T)


def test_diagonal_affine_tracks_as_the_matrix_product():
    fast = _tracker(DIAGONAL)
    general = _tracker(DIAGONAL)
    general._axis_scales = None
    result = fast.track(_seeds())
    # Both halves of most seeds grow and some stop on the mask or angle:
    # the comparison covers every criterion of the step.
    assert np.median(result.streamlines._lengths) > 3
    _assert_same_tracks(result, general.track(_seeds()))


def test_no_neighbourhood_reads_the_points_as_a_zero_offset_would():
    fast = _tracker(DIAGONAL)
    general = _tracker(DIAGONAL)
    general._has_neighbours = True
    points = torch.as_tensor(_seeds())
    assert torch.equal(fast._interpolate_inputs(points),
                       general._interpolate_inputs(points))
    _assert_same_tracks(fast.track(_seeds()), general.track(_seeds()))


def test_mask_read_with_the_inputs_tracks_as_read_alone():
    joined = _tracker(DIAGONAL)
    assert joined._inputs_and_mask is not None
    volume = np.random.default_rng(0).normal(
        size=SHAPE + (NB_FEATURES,)).astype(np.float32)
    # The input volume is still there, as a view of the joined table.
    assert torch.equal(joined.volume, torch.from_numpy(volume))
    alone = _tracker(DIAGONAL)
    alone._inputs_and_mask = None
    _assert_same_tracks(joined.track(_seeds()), alone.track(_seeds()))
    prefixes = joined.track(_seeds()).streamlines
    starts = np.stack([s[:3] for s in prefixes if len(s) >= 3])
    first = joined.continue_streamlines(starts)
    second = alone.continue_streamlines(starts)
    np.testing.assert_array_equal(first[0].get_data(), second[0].get_data())
    np.testing.assert_array_equal(first[1], second[1])


def test_a_nearest_mask_is_read_alone_and_one_of_another_grid_refused():
    tracker = _tracker(DIAGONAL)
    nearest = BatchedTracker(
        tracker.model, tracker.volume, DIAGONAL,
        TrackingMask(SHAPE, np.ones(SHAPE, np.float32), interp="nearest"),
        STEP_MM)
    assert nearest._inputs_and_mask is None
    unmasked = BatchedTracker(tracker.model, tracker.volume, DIAGONAL,
                              TrackingMask(SHAPE), STEP_MM)
    assert unmasked._inputs_and_mask is None
    # Read at the input's voxel coordinates, it stopped every streamline.
    coarse = (6, 5, 4)
    with pytest.raises(DwiMLUserError, match=re.escape(
            "BatchedTracker argument tracking_mask: expected a TrackingMask "
            f"of the input volume's grid {SHAPE} (its shape), got (6, 5, 4).")):
        BatchedTracker(tracker.model, tracker.volume, DIAGONAL,
                       TrackingMask(coarse, np.ones(coarse, np.float32)),
                       STEP_MM)


@pytest.mark.parametrize("change, message", [
    ({"step_size_mm": 0.0}, "step_size_mm: expected a finite number > 0"),
    ({"step_size_mm": -2.0}, "step_size_mm: expected a finite number > 0"),
    ({"max_angle_deg": -10.0}, "max_angle_deg: expected a number in (0, 180]"),
    ({"max_angle_deg": 400.0}, "max_angle_deg: expected a number in (0, 180]"),
    ({"algo": "sample"}, "algo: expected one of ['det', 'prob']"),
    ({"affine": None}, "BatchedTracker argument affine: expected a finite "
     "(4, 4) voxel-to-RAS mm matrix with an invertible linear part, found "
     "None."),
    # A singular affine was accepted (one scoring refuses).
    ({"affine": np.diag([2.0, 2.0, 0.0, 1.0])}, "BatchedTracker argument "
     "affine: expected a finite (4, 4) voxel-to-RAS mm matrix with an "
     "invertible linear part, found a singular one (singular values "
     "[2.0, 2.0, 0.0])."),
    ({"affine": np.full((4, 4), np.nan)}, "BatchedTracker argument affine: "
     "expected a finite (4, 4) voxel-to-RAS mm matrix with an invertible "
     "linear part, found NaN or infinite values."),
    ({"affine": np.eye(3)}, "BatchedTracker argument affine: expected a "
     "finite (4, 4) voxel-to-RAS mm matrix with an invertible linear part, "
     "found shape (3, 3)."),
    # One line, not the array's repr.
    ({"affine": np.full((4, 4), "a")}, "BatchedTracker argument affine: "
     "expected a finite (4, 4) voxel-to-RAS mm matrix with an invertible "
     "linear part, found ndarray of shape (4, 4), not numbers."),
    ({"device": "gpu"}, "argument device: expected a torch device"),
    ({"input_volume": "more_features"}, "input_volume: expected 5 features "
     "per voxel (the model's nb_features), got 7."),
])
def test_bad_tracker_arguments_are_named(change, message):
    """They gave a ZeroDivisionError, an error about max_length, an RNN
    size error, or were accepted (a turn of -10 or 400 degrees)."""
    tracker = _tracker(DIAGONAL)
    args = {"model": tracker.model, "input_volume": tracker.volume,
            "affine": DIAGONAL, "tracking_mask": TrackingMask(SHAPE),
            "step_size_mm": STEP_MM, **change}
    if change.get("input_volume") == "more_features":
        args["input_volume"] = torch.zeros(SHAPE + (7,))
    with pytest.raises(DwiMLUserError) as refused:
        BatchedTracker(**args)
    assert message in str(refused.value)
    for batch_size in (0, -1):
        with pytest.raises(DwiMLUserError, match="batch_size: expected an "
                                                 "integer >= 1"):
            tracker.track_in_batches(_seeds(), batch_size)


def test_neighbourhood_inputs_are_read_at_the_offsets():
    tracker = _tracker(DIAGONAL, neighborhood_type="axes",
                       neighborhood_radius=1, neighborhood_resolution=1.0)
    assert len(tracker.offsets) == 7
    points = torch.as_tensor(_seeds())
    inputs = tracker._interpolate_inputs(points)
    expected = torch.cat([interpolate_volume_at_coordinates(
        tracker.volume, points + offset) for offset in tracker.offsets],
        dim=1)
    assert torch.equal(inputs, expected)


def test_eval_getter_gives_its_layers_values():
    getter = make_direction_getter("gaussian", 16, {"dropout": 0.5,
                                                    "add_eos": True}).eval()
    hidden = torch.randn(50, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(getter(hidden), getter.layers(hidden))


def test_unit_vectors_are_normalize_bit_for_bit():
    vectors = torch.randn(200, 3, generator=torch.Generator().manual_seed(4))
    vectors[0] = 0  # the 1e-12 clamp: zeros stay zeros
    vectors[1] *= 1e-20
    for dtype in (torch.float32, torch.float64):
        typed = vectors.to(dtype)
        assert torch.equal(unit_vectors(typed),
                           torch.nn.functional.normalize(typed, dim=1))
        # (N, k, 3): the previous directions of a tracking step.
        assert torch.equal(unit_vectors(typed.reshape(20, 10, 3)),
                           torch.nn.functional.normalize(
                               typed.reshape(20, 10, 3), dim=2))


def test_interpolation_first_called_under_inference_mode():
    volume = torch.rand(7, 6, 5, 3)
    points = torch.rand(20, 3, dtype=torch.float64) * 5
    with torch.inference_mode():
        inside = interpolate_volume_at_coordinates(volume, points)
    outside = interpolate_volume_at_coordinates(volume, points)
    assert not outside.is_inference()
    assert torch.equal(inside, outside)
