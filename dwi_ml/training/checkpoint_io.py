"""Experiment folder layout and safe reading of checkpoints.

Everything is loaded with ``torch.load(weights_only=True)``: a checkpoint
shared by someone else never runs pickled code.
"""
import json
import os

import torch

from dwi_ml.io_utils.atomic import atomic_output_file, existing_atomic_folder
from dwi_ml.io_utils.errors import DwiMLUserError

BEST_MODEL_DIR = "best_model"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"
PARAMETERS_FILE = "parameters.json"


def write_json_atomic(path, data):
    """Write strict JSON (no NaN/Infinity) under a temporary name."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    with atomic_output_file(path) as tmp_path:
        with open(tmp_path, "w") as f:
            f.write(text + "\n")


def read_parameters(experiment_dir):
    """Read ``parameters.json`` of an experiment, with a clear error."""
    path = os.path.join(experiment_dir, PARAMETERS_FILE)
    if not os.path.isfile(path):
        raise DwiMLUserError(
            f"'{experiment_dir}' is not a dwi_ml experiment: no {PARAMETERS_FILE}.")
    with open(path) as f:
        return json.load(f)


def checkpoint_dir(experiment_dir):
    """The readable checkpoint folder of an experiment, or a clear error."""
    path = existing_atomic_folder(os.path.join(experiment_dir, CHECKPOINT_DIR))
    if path is None:
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' has no {CHECKPOINT_DIR}/ folder: "
            "it never finished an epoch.")
    return path


def has_checkpoint(experiment_dir):
    """True when the experiment has a readable ``checkpoint/`` folder."""
    return existing_atomic_folder(
        os.path.join(experiment_dir, CHECKPOINT_DIR)) is not None


def load_checkpoint_state(experiment_dir):
    """Load ``checkpoint/checkpoint_state.pt`` with weights_only=True."""
    path = os.path.join(checkpoint_dir(experiment_dir), "checkpoint_state.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_model_dir(experiment_dir):
    """Folder of the model saved in the checkpoint."""
    return os.path.join(checkpoint_dir(experiment_dir), "model")


def best_model_dir(experiment_dir):
    """Folder of the best model, or a clear error."""
    path = existing_atomic_folder(os.path.join(experiment_dir, BEST_MODEL_DIR))
    if path is None:
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' has no {BEST_MODEL_DIR}/ folder.")
    return path
