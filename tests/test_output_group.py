"""Outputs of one run appear together (atomic.output_group): a stop or an
error between two writes leaves every output as it was before the run."""
import json
import os
import signal

import numpy as np
import pytest

from dwi_ml.io_utils.atomic import output_group, save_npy, write_json_atomic


def _earlier_run(tmp_path):
    matrix, labels = tmp_path / "m.npy", tmp_path / "m.json"
    save_npy(str(matrix), np.eye(2))
    write_json_atomic(str(labels), {"labels": [1, 2]})
    return matrix, labels


def _assert_earlier_run_kept(tmp_path, matrix, labels):
    np.testing.assert_array_equal(np.load(matrix), np.eye(2))
    assert json.loads(labels.read_text()) == {"labels": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.npy"]


def test_both_outputs_appear_at_the_end_of_the_group(tmp_path):
    matrix, labels = _earlier_run(tmp_path)
    earlier_labels = labels.read_text()
    with output_group():
        save_npy(str(matrix), np.ones((3, 3)))
        # Not yet in place: the earlier run's file is still there.
        np.testing.assert_array_equal(np.load(matrix), np.eye(2))
        with output_group():  # nested: committed with the outer group
            write_json_atomic(str(labels), {"labels": [1, 2, 3]})
        assert labels.read_text() == earlier_labels
    np.testing.assert_array_equal(np.load(matrix), np.ones((3, 3)))
    assert json.loads(labels.read_text()) == {"labels": [1, 2, 3]}
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.npy"]


def test_an_error_after_the_first_output_keeps_both_earlier_ones(tmp_path):
    matrix, labels = _earlier_run(tmp_path)
    with pytest.raises(ValueError, match="not JSON compliant"):
        with output_group():
            save_npy(str(matrix), np.ones((3, 3)))
            write_json_atomic(str(labels), {"labels": [float("nan")]})
    _assert_earlier_run_kept(tmp_path, matrix, labels)


def test_ctrl_c_between_the_outputs_keeps_both_earlier_ones(tmp_path):
    """A real SIGINT, under Python's default handler (KeyboardInterrupt)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here.")
    matrix, labels = _earlier_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with output_group():
            save_npy(str(matrix), np.ones((3, 3)))
            os.kill(os.getpid(), signal.SIGINT)
            write_json_atomic(str(labels), {"labels": [1, 2, 3]})
    _assert_earlier_run_kept(tmp_path, matrix, labels)
