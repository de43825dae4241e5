"""Save a model as (parameters, class name, weights) and rebuild it.

A saved model is a folder holding three files:

- ``parameters.json``: the model's ``params_for_checkpoint``, strict JSON
  (no NaN or Infinity), i.e. every constructor argument;
- ``model_type.txt``: the registered class name, e.g. ``Learn2TrackModel``;
- ``model_state.pt``: the ``state_dict``, tensors only, so that it loads with
  ``torch.load(..., weights_only=True)``.

Each file is written under a temporary name and renamed, so a kill during
the save never leaves a truncated file. Other files in the folder (a
trainer's checkpoint, for instance) are left alone.
"""
import json
import os

import torch

from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import DwiMLUserError

PARAMETERS_FILE = "parameters.json"
MODEL_TYPE_FILE = "model_type.txt"
STATE_FILE = "model_state.pt"

MODEL_REGISTRY = {}


def register_model(cls):
    """Class decorator: make ``cls`` loadable by its class name."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def save_params_and_state(model, folder):
    """Write ``model`` in ``folder`` (created if missing).

    Parameters
    ----------
    model : MainModelAbstract
        A registered model.
    folder : str
        Destination folder.
    """
    model_type = type(model).__name__
    if MODEL_REGISTRY.get(model_type) is not type(model):
        raise DwiMLUserError(
            f"model class '{model_type}' is not registered: decorate it with "
            f"@register_model so that it can be loaded again.")
    os.makedirs(folder, exist_ok=True)
    # The weights go first and the type last: an interrupted save leaves no
    # model_type.txt in a new folder, so nobody mistakes it for a model.
    with atomic_output_file(os.path.join(folder, STATE_FILE)) as tmp_path:
        torch.save(model.state_dict(), tmp_path)
    with atomic_output_file(os.path.join(folder, PARAMETERS_FILE)) as tmp:
        with open(tmp, "w") as f:
            json.dump(model.params_for_checkpoint, f, indent=2,
                      allow_nan=False)
    with atomic_output_file(os.path.join(folder, MODEL_TYPE_FILE)) as tmp:
        with open(tmp, "w") as f:
            f.write(model_type + "\n")


def load_model_from_params_and_state(folder, device="cpu"):
    """Rebuild the model saved in ``folder`` and load its weights.

    Parameters
    ----------
    folder : str
        A folder written by :func:`save_params_and_state`.
    device : str or torch.device
        Where to put the model. A model trained on GPU loads on CPU.

    Returns
    -------
    MainModelAbstract
        The model, on ``device``, in eval mode.
    """
    for name in (MODEL_TYPE_FILE, PARAMETERS_FILE, STATE_FILE):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DwiMLUserError(
                f"model folder '{folder}': expected file '{name}', "
                f"found none.")
    with open(os.path.join(folder, MODEL_TYPE_FILE)) as f:
        model_type = f.read().strip()
    if model_type not in MODEL_REGISTRY:
        raise DwiMLUserError(
            f"{os.path.join(folder, MODEL_TYPE_FILE)}: expected one of "
            f"{sorted(MODEL_REGISTRY)}, found '{model_type}'.")
    params_path = os.path.join(folder, PARAMETERS_FILE)
    try:
        with open(params_path) as f:
            params = json.load(f)
    except json.JSONDecodeError as error:
        raise DwiMLUserError(
            f"{params_path}: expected strict JSON, found an error at line "
            f"{error.lineno}: {error.msg}.") from None
    try:
        model = MODEL_REGISTRY[model_type](**params)
    except TypeError as error:
        raise DwiMLUserError(
            f"{params_path}: parameters do not match {model_type}: "
            f"{error}.") from None
    state = torch.load(os.path.join(folder, STATE_FILE),
                       map_location=device, weights_only=True)
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model
