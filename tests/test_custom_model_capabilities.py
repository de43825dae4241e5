"""A model of your own that cannot track: evaluation and input importance
work on its losses; the tracker refuses it in one line.

The model is the one of docs/extending.md, not registered (registering in
the test process would change the registry other tests' messages list).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_data import make_trainer, make_training_hdf5

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import (
    compute_direction_targets,
    prediction_rows,
    streamline_lengths,
)
from dwi_ml.models.main_models import MainModelOneInput
from dwi_ml.monitoring.input_importance import (
    GRADIENT,
    compute_input_importance,
)
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.stopping import TrackingMask
from dwi_ml.tracking.tracking_validation import TrackingValidationCallback
from dwi_ml.tracking.tracking_validation_args import TrackingValidationParams
from dwi_ml.training.evaluation import evaluate_model
from tests.tolerances import rounding_atol


class PreviousDirsMLP(MainModelOneInput):
    """docs/extending.md's model: no EOS, no tracking methods."""

    def __init__(self, experiment_name, nb_features, **kwargs):
        super().__init__(experiment_name, nb_features, **kwargs)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(self.input_size + 3 * self.nb_previous_dirs, 8),
            torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, inputs, streamlines):
        rows = prediction_rows(streamline_lengths(streamlines), add_eos=False)
        previous = self.compute_previous_dirs(streamlines, add_eos=False)
        return self.mlp(torch.cat([torch.cat(inputs)[rows], previous], 1))

    def compute_loss(self, outputs, streamlines):
        targets, _ = compute_direction_targets(streamlines, add_eos=False)
        return (1 - F.cosine_similarity(outputs, targets)).mean(), len(targets)


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("own")),
                              nb_streamlines=30)


@pytest.fixture(scope="module")
def model(hdf5_file):
    dataset = MultiSubjectDataset(hdf5_file, lazy=False)
    dataset.load_data()
    torch.manual_seed(0)
    # No step size: the streamlines are read as stored.
    return PreviousDirsMLP("own", dataset.nb_features[0],
                           nb_previous_dirs=2), dataset


def _validation_points(dataset):
    """Prediction points of the validation subject: n - 1 a streamline."""
    sft_data = dataset.validation_set.get_subject(0).sft_data_list[0]
    return int(np.sum(sft_data.lengths - 1))


def test_evaluation_gives_losses_without_angles(model):
    model, dataset = model
    whole = evaluate_model(model, dataset, "validation", "input",
                           "streamlines", batch_size=1000)
    pieces = evaluate_model(model, dataset, "validation", "input",
                            "streamlines", batch_size=7)
    for results in (whole, pieces):
        assert results["all"]["angular_error_deg"] is None
        assert results["all"]["n_points"] == _validation_points(dataset)
    # The same points-weighted mean, one batch or five: on each side a
    # float32 mean of at most n_points terms in [0, 2] (then float64 sums).
    n_points = _validation_points(dataset)
    assert pieces["all"]["loss"] == pytest.approx(
        whole["all"]["loss"], abs=2 * rounding_atol(2, n_points))
    assert 0 < whole["all"]["loss"] < 2


def test_input_importance_of_every_point_but_the_last(model, hdf5_file):
    model, dataset = model
    whole = compute_input_importance(model, hdf5_file, "subj-02", "input",
                                     "streamlines", batch_size=1000)
    pieces = compute_input_importance(model, hdf5_file, "subj-02", "input",
                                      "streamlines", batch_size=7)
    assert whole.nb_points == pieces.nb_points == _validation_points(dataset)
    values = whole.values[GRADIENT]
    assert values.shape == (dataset.nb_features[0],)
    assert np.all(values > 0)
    # Each point's gradient goes through products of 51 and 8 terms (fewer
    # than 64 roundings, relative); float64 sums of |gradient| keep that.
    np.testing.assert_allclose(pieces.values[GRADIENT], values,
                               rtol=rounding_atol(1, 64))


def test_tracker_refuses_a_model_without_tracking_methods(model):
    model, _ = model
    volume = np.zeros((6, 6, 6, model.nb_features), dtype=np.float32)
    with pytest.raises(DwiMLUserError) as error:
        BatchedTracker(model, volume, np.eye(4),
                       TrackingMask((6, 6, 6)), 1.0)
    assert str(error.value) == (
        "BatchedTracker: model: expected a model that can track (methods "
        "forward_step, select_hidden_states, get_tracking_directions: "
        "docs/extending.md), found a PreviousDirsMLP without forward_step, "
        "select_hidden_states, get_tracking_directions.")


def test_tracking_validation_refuses_it_before_any_epoch(model, tmp_path):
    model, dataset = model
    callback = TrackingValidationCallback(TrackingValidationParams(every=1))
    trainer = make_trainer(dataset, tmp_path, model=model, max_epochs=1,
                           callbacks=[callback])
    with pytest.raises(DwiMLUserError) as error:
        trainer.train_and_validate()
    assert str(error.value).startswith(
        "--tracking_validation_every: expected a model that can track")
    assert not (tmp_path / "exp" / "logs" / "train_loss.npy").exists()
