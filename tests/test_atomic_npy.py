"""Logs and matrices are written under a temporary name, then renamed."""
import os
import pickle

import numpy as np
import pytest

from dwi_ml.io_utils.atomic import save_npy
from dwi_ml.training.monitors import BatchMeanMonitor


def _unpicklable_array():
    # np.save writes the header, then fails while pickling the object.
    array = np.empty(2, dtype=object)
    array[:] = [1.0, lambda: None]
    return array


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "train_loss.npy"
    save_npy(str(path), np.array([0.5, 0.25]))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_npy(str(path), _unpicklable_array())
    np.testing.assert_array_equal(np.load(path), [0.5, 0.25])
    assert os.listdir(tmp_path) == ["train_loss.npy"]


def test_monitor_logs_hold_the_epoch_and_batch_values(tmp_path):
    monitor = BatchMeanMonitor("train_loss", keep_batch_values=True)
    monitor.start_epoch()
    monitor.update(1.0, weight=1)
    monitor.update(4.0, weight=3)
    monitor.end_epoch()
    monitor.save(str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "train_loss.npy"),
                                  [(1.0 + 12.0) / 4])
    np.testing.assert_array_equal(
        np.load(tmp_path / "train_loss_per_batch.npy"), [1.0, 4.0])
    assert sorted(os.listdir(tmp_path)) == ["train_loss.npy",
                                            "train_loss_per_batch.npy"]


def test_monitor_state_keeps_every_batch_value_through_a_checkpoint(
        tmp_path):
    # Saved as one float64 tensor (a list of floats took seconds per
    # checkpoint in long runs); the values come back exactly.
    import torch
    monitor = BatchMeanMonitor("train_loss", keep_batch_values=True)
    values = np.random.default_rng(0).random(1000) * 1e3
    for value in values:
        monitor.update(value, weight=2.0)
    path = tmp_path / "state.pt"
    torch.save(monitor.state_dict(), path)
    restored = BatchMeanMonitor("train_loss", keep_batch_values=True)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.batch_history == values.tolist()
    assert all(type(value) is float for value in restored.batch_history)
    assert restored.running_mean == monitor.running_mean
    # A checkpoint of an earlier version holds a list.
    old = {**monitor.state_dict(), "batch_history": values.tolist()}
    restored.load_state_dict(old)
    assert restored.batch_history == values.tolist()
