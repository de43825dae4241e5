"""The worked example of docs/own_model.md runs as written: 2 epochs, resume."""
import os
import re

import numpy as np
from training_data import make_training_hdf5

from tests.tolerances import rounding_atol

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                   "own_model.md")


def _python_blocks():
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)


def test_model_and_trainer_fit_in_50_lines():
    definitions = _python_blocks()[0]
    assert len(definitions.strip().splitlines()) < 50


def test_worked_example_trains_and_resumes(tmp_path, monkeypatch):
    hdf5_file = make_training_hdf5(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    os.makedirs("my_experiments")
    os.rename(hdf5_file, "my_data.hdf5")
    namespace = {}
    definitions, first_run, resume = _python_blocks()
    exec(compile(definitions, "own_model_definitions", "exec"), namespace)
    exec(compile(first_run, "own_model_training", "exec"), namespace)
    logs = tmp_path / "my_experiments" / "pointwise" / "logs"
    assert np.load(logs / "train_loss.npy").shape == (1,)
    exec(compile(resume, "own_model_resume", "exec"), namespace)
    train_loss = np.load(logs / "train_loss.npy")
    assert train_loss.shape == (2,) and train_loss[1] < train_loss[0]
    for phase in ("train", "valid"):
        total = np.load(logs / f"{phase}_loss.npy")
        named = (np.load(logs / f"{phase}_loss_direction.npy")
                 + np.load(logs / f"{phase}_loss_norm.npy"))
        # Each batch's total is the float32 sum of its two positive terms.
        np.testing.assert_allclose(total, named, rtol=rounding_atol(1, 1))
    assert (tmp_path / "my_experiments" / "pointwise" / "best_model"
            / "model_type.txt").read_text().strip() == "PointwiseModel"
