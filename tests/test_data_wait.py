"""The share of training time spent waiting for data: the epoch line, and
the --nb_workers hint for a GPU left waiting."""
import logging
import re
import time

import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.data.splits import Split
from dwi_ml.training.callbacks import data_wait_hint, data_wait_share
from dwi_ml.training.experiment_builder import build_dataset

DELAY_S = 0.05


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    hdf5_file = make_training_hdf5(str(tmp_path_factory.mktemp("wait")))
    return build_dataset({"hdf5_file": hdf5_file, "lazy": False})


def _slow_collate(trainer):
    """Each training batch of 0 workers then waits at least DELAY_S."""
    load_batch = trainer.batch_loader.load_batch

    def slow_load_batch(request):
        time.sleep(DELAY_S)
        return load_batch(request)
    trainer.batch_loader.load_batch = slow_load_batch


def test_share_is_the_wait_over_the_training_time():
    assert data_wait_share(1.0, 4.0) == 0.25
    # Clock readings of two spans can cross by a little: kept in [0, 1].
    assert data_wait_share(4.2, 4.0) == 1.0
    assert data_wait_share(0.0, 4.0) == 0.0
    assert data_wait_share(1.0, 0.0) is None
    assert data_wait_share(None, 4.0) is None


def test_hint_only_for_a_waiting_gpu():
    hint = data_wait_hint("cuda", 0, 0.33, 2)
    assert hint == (
        "The GPU waited for data during 33% of epoch 2's training "
        "(--nb_workers 0): DataLoader workers prepare the next batches "
        "while it computes; a higher --nb_workers (within the free CPU "
        "cores) should shorten the epochs.")
    assert "--nb_workers 4" in data_wait_hint("cuda", 4, 0.2, 0)
    assert data_wait_hint("cuda", 0, 0.19, 0) is None
    assert data_wait_hint("cuda", 0, None, 0) is None
    # On CPU, workers take the training step's cores: no hint.
    assert data_wait_hint("cpu", 0, 0.9, 0) is None


def test_epoch_line_gives_the_measured_wait(tmp_path, dataset, caplog):
    trainer = make_trainer(dataset, tmp_path, max_epochs=1)
    # The collate step of 0 workers runs in this process.
    _slow_collate(trainer)
    with caplog.at_level(logging.INFO, logger="dwi_ml.training"):
        trainer.train_and_validate()
    nb_batches = trainer.nb_batches(Split.TRAINING)
    wait = trainer.data_wait_s[Split.TRAINING]
    train_time = trainer.monitors["train_time"].epoch_history[0]
    assert nb_batches * DELAY_S <= wait <= train_time
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("epoch 0,")]
    assert len(lines) == 1
    shown = re.search(r", data wait (\d+)%,", lines[0])
    assert shown, lines[0]
    assert int(shown.group(1)) == round(100 * wait / train_time)
    # On CPU, no hint whatever the wait.
    assert "waited for data" not in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_that_waits_is_told_once_to_raise_workers(
        tmp_path, dataset, caplog):
    # A model of 16 units computes a batch of 40 in a few ms on a GPU:
    # DELAY_S a batch makes the wait most of each epoch once CUDA is warm
    # (epoch 0 also initialises CUDA and cuDNN: its share may be lower).
    trainer = make_trainer(dataset, tmp_path, max_epochs=3, device="cuda",
                           loader_device="cuda")
    _slow_collate(trainer)
    with caplog.at_level(logging.INFO, logger="dwi_ml.training"):
        trainer.train_and_validate()
    shares = [int(m) for m in re.findall(r", data wait (\d+)%,",
                                         caplog.text)]
    assert len(shares) == 3 and shares[-1] >= 20
    first = next(epoch for epoch, share in enumerate(shares) if share >= 20)
    hints = [r for r in caplog.records if "waited for data" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.WARNING
    assert hints[0].getMessage().startswith(
        f"The GPU waited for data during {shares[first]}% of epoch "
        f"{first}'s")
    assert "(--nb_workers 0)" in hints[0].getMessage()


def test_no_share_for_an_epoch_resumed_midway(tmp_path, dataset):
    """Its wait before the stop is unknown: a share over the whole
    train_time showed 1 % where the uninterrupted run waited 22 %."""
    trainer = make_trainer(dataset, tmp_path, max_epochs=1)
    trainer.create_dataloaders()
    trainer.position.nb_batches_done = 1
    # (The sampler itself is restored by a resume; not needed here.)
    assert list(trainer.iterate_batches(Split.TRAINING, 0))
    assert trainer.data_wait_s[Split.TRAINING] is None
    trainer.position.nb_batches_done = 0
    list(trainer.iterate_batches(Split.TRAINING, 1))
    assert trainer.data_wait_s[Split.TRAINING] > 0
