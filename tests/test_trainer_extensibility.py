"""Named losses, gradient accumulation, scheduler factories, callback state."""
import numpy as np
import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.training.callbacks import Callback
from dwi_ml.training.experiment_builder import build_dataset
from dwi_ml.training.optimizers import MAX_EPOCHS, STEPS_PER_EPOCH, SchedulerFactory
from tests.tolerances import EPS64, rounding_atol


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("extensibility"))
    return build_dataset({"hdf5_file": make_training_hdf5(folder),
                          "lazy": False})


def test_named_losses_are_logged_in_training_and_validation(tmp_path, dataset):
    trainer = make_trainer(dataset, tmp_path, max_epochs=2, model_params={
        "dg_args": {"add_eos": True, "eos_weight": 0.5}})
    trainer.train_and_validate()
    logs = tmp_path / "exp" / "logs"
    for phase in ("train", "valid"):
        total = np.load(logs / f"{phase}_loss.npy")
        direction = np.load(logs / f"{phase}_loss_direction.npy")
        eos = np.load(logs / f"{phase}_loss_eos.npy")
        assert total.shape == direction.shape == eos.shape == (2,)
        # Every batch's total is the float32 sum of its positive terms (one
        # rounding), and all are weighted by the same numbers of points:
        # the epoch means add up too (float64 means: negligible).
        np.testing.assert_allclose(total, direction + eos,
                                   rtol=rounding_atol(1, 1))
        assert np.all(eos > 0) and np.all(direction > 0)


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, dataset):
    # Fixed-size streamlines: micro-batches of 20 streamlines have equal
    # numbers of points, so their mean losses / 2 add up to the big batch's.
    options = {"model_params": {"nb_points": 12, "step_size": None},
               "max_epochs": 1, "learning_rate": 0.01, "clip_grad": 0.05}
    big = make_trainer(dataset, tmp_path, "big", batch_size=40,
                       max_batches_per_epoch_training=1, dtype=torch.float64,
                       **options)
    small = make_trainer(dataset, tmp_path, "small", batch_size=20,
                         grad_accumulation_steps=2,
                         max_batches_per_epoch_training=2,
                         dtype=torch.float64, **options)
    initial = {k: v.clone() for k, v in big.model.state_dict().items()}
    # Micro-batches and the big batch have different shapes, hence other
    # kernels: compared in float64. A gradient entry sums the 480 points'
    # terms (< clip_grad after clipping): within rounding_atol(clip, 480).
    # Adam's first step, lr * g / (|g| + 1e-8), amplifies an error in g by
    # at most lr / 1e-8 (at g = 0); the new weights (< 2) round once more.
    # A norm of such gradients, even after a 1e3-fold cancellation, is
    # within rounding_atol(1e3, 480) relatively.
    adam_eps, nb_points = 1e-8, 40 * 12
    params_atol = (options["learning_rate"] / adam_eps
                   * rounding_atol(options["clip_grad"], nb_points, EPS64)
                   + rounding_atol(2, 1, EPS64))
    norm_rtol = rounding_atol(1e3, nb_points, EPS64)
    big.train_and_validate()
    small.train_and_validate()
    for key, value in big.model.state_dict().items():
        assert not torch.equal(value, initial[key]) or "norm" in key
        torch.testing.assert_close(small.model.state_dict()[key], value,
                                   rtol=0, atol=params_atol)
    # One update each: one (clipped) grad norm per epoch, equal.
    for name in ("grad_norm_before_clip", "grad_norm_after_clip"):
        np.testing.assert_allclose(
            np.load(tmp_path / "small" / "logs" / f"{name}.npy"),
            np.load(tmp_path / "big" / "logs" / f"{name}.npy"),
            rtol=norm_rtol)


def test_one_cycle_factory_steps_per_batch(tmp_path, dataset):
    factory = SchedulerFactory(torch.optim.lr_scheduler.OneCycleLR,
                               step_every="batch", max_lr=0.01,
                               epochs=MAX_EPOCHS,
                               steps_per_epoch=STEPS_PER_EPOCH)
    trainer = make_trainer(dataset, tmp_path, lr_scheduler=factory,
                           max_epochs=3, grad_accumulation_steps=2)
    nb_batches = trainer.nb_batches("training")
    updates_per_epoch = -(-nb_batches // 2)
    assert trainer.scheduler.total_steps == 3 * updates_per_epoch
    trainer.train_and_validate()
    # One count per update; the last one, past the schedule's last step,
    # leaves the rate as it was (step_scheduler).
    assert trainer.scheduler.last_epoch == 3 * updates_per_epoch
    assert trainer.scheduler.get_last_lr() == [
        group["lr"] for group in trainer.optimizer.param_groups]
    lrs = np.load(tmp_path / "exp" / "logs" / "learning_rate.npy")
    # Warm-up then annealing: the middle epoch starts at a higher LR.
    assert lrs[1] > lrs[0] and lrs[1] > lrs[2]


class CountBatches(Callback):
    """A callback with state: batches seen over the whole run."""

    name = "count_batches"

    def __init__(self):
        self.count = 0
        self.loaded = False

    def on_train_batch_end(self, trainer, batch, outputs):
        self.count += 1

    def on_checkpoint_load(self, trainer, state):
        self.loaded = True

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_callback_state_goes_into_checkpoint(tmp_path, dataset):
    straight = CountBatches()
    make_trainer(dataset, tmp_path, "straight", callbacks=[straight],
                 max_epochs=3).train_and_validate()
    first = CountBatches()
    make_trainer(dataset, tmp_path, "resumed", callbacks=[first],
                 max_epochs=2).train_and_validate()
    second = CountBatches()
    resumed = make_trainer(dataset, tmp_path, "resumed", callbacks=[second],
                           max_epochs=3)
    resumed.load_checkpoint()
    assert second.loaded and second.count == first.count
    resumed.train_and_validate()
    assert second.count == straight.count == 3 * resumed.nb_batches("training")
