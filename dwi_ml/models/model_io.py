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

from dwi_ml.io_utils.arg_checks import check_device
from dwi_ml.io_utils.atomic import (
    atomic_output_file,
    read_replaced_folder,
    save_torch_file,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import (
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    EXPERIMENT_FOLDERS,
    PARAMETERS_FILE,
    experiment_model_dir,
)
from dwi_ml.io_utils.manifest import (
    MANIFEST_FILE,
    verify_manifest,
    write_manifest,
)
from dwi_ml.io_utils.output_folders import folder_kind
from dwi_ml.io_utils.provenance import model_provenance
from dwi_ml.io_utils.safe_load import load_json_file, load_torch_file

MODEL_TYPE_FILE = "model_type.txt"
STATE_FILE = "model_state.pt"

MODEL_REGISTRY = {}
# Modules of models of your own, for the scripts: names on the Python path
# or .py files, separated by ':' or ','.
MODEL_MODULES_VARIABLE = "DWIML_MODEL_MODULES"
# Installed packages may register theirs as entry points of this group.
MODEL_ENTRY_POINTS = "dwi_ml.models"
_plugins_imported = False


def register_model(cls):
    """Class decorator: make ``cls`` loadable by its class name.

    Defining the class again (a notebook cell run twice, a reloaded
    module) replaces it; another class of the same name is refused: it
    would load every model saved under that name.
    """
    known = MODEL_REGISTRY.get(cls.__name__)
    if known is not None and _where(known) != _where(cls):
        raise DwiMLUserError(
            f"register_model: model class name '{cls.__name__}' is taken "
            f"by {_where(known)}, found another in {_where(cls)}; rename "
            "your class.")
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def _where(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def import_model_plugins():
    """Import the modules of models of your own, once, so that their
    ``@register_model`` classes are in :data:`MODEL_REGISTRY`.

    They are the modules named in the environment variable
    ``DWIML_MODEL_MODULES`` (module names on the Python path, or paths of
    ``.py`` files, separated by ``:`` or ``,``) and the entry points of
    the group ``dwi_ml.models`` of installed packages.

    Raises
    ------
    DwiMLUserError
        A module that is missing or fails to import.
    """
    global _plugins_imported
    if _plugins_imported:
        return
    _plugins_imported = True
    import importlib
    import importlib.metadata
    import importlib.util
    import re

    names = [name.strip() for name in re.split(r"[:,]", os.environ.get(
        MODEL_MODULES_VARIABLE, "")) if name.strip()]
    for name in names:
        what = f"environment variable {MODEL_MODULES_VARIABLE}: module '{name}'"
        try:
            if name.endswith(".py"):
                if not os.path.isfile(name):
                    raise DwiMLUserError(f"{what}: file not found.")
                module_name = os.path.splitext(os.path.basename(name))[0]
                spec = importlib.util.spec_from_file_location(module_name,
                                                              name)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except DwiMLUserError:
            raise
        except Exception as error:  # the user's code may raise anything
            raise DwiMLUserError(
                f"{what}: could not import it ({type(error).__name__}: "
                f"{' '.join(str(error).split())})."
            ) from None
    for entry_point in importlib.metadata.entry_points(
            group=MODEL_ENTRY_POINTS):
        try:
            entry_point.load()
        except Exception as error:  # an installed package's code
            raise DwiMLUserError(
                f"entry point '{entry_point.name}' of group "
                f"'{MODEL_ENTRY_POINTS}' ({entry_point.value}): could not "
                f"import it ({type(error).__name__}: "
                f"{' '.join(str(error).split())}).") from None


def registered_model_class(model_type, where):
    """The registered class named ``model_type``, after importing the
    modules of models of your own (:func:`import_model_plugins`).

    Raises
    ------
    DwiMLUserError
        ``WHERE: expected one of [...], found 'NAME'``, with how to make a
        model of your own known to the scripts.
    """
    if model_type not in MODEL_REGISTRY:
        import_model_plugins()
    if model_type not in MODEL_REGISTRY:
        raise DwiMLUserError(
            f"{where}: expected one of {sorted(MODEL_REGISTRY)}, found "
            f"{model_type!r}; for a model of your own, name its module in "
            f"{MODEL_MODULES_VARIABLE} (e.g. {MODEL_MODULES_VARIABLE}="
            "my_model, or a .py file).")
    return MODEL_REGISTRY[model_type]


def model_params(model):
    """``model.params_for_checkpoint``, each value checked to be JSON.

    Raises
    ------
    DwiMLUserError
        Naming the first key whose value JSON cannot hold (a numpy
        number, a tensor, NaN...): the model could not be rebuilt.
    """
    params = model.params_for_checkpoint
    for key, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            text = repr(value)
            raise DwiMLUserError(
                f"{type(model).__name__}.params_for_checkpoint['{key}']: "
                "expected a JSON value (int, float, str, bool, None, or a "
                "list or dict of them; no NaN), found "
                f"{type(value).__name__} "
                f"{text if len(text) <= 60 else text[:60] + ' ...'}; convert "
                "it (e.g. int(...)) in the constructor.") from None
    return params


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
    registered = MODEL_REGISTRY.get(model_type)
    if registered is None:
        raise DwiMLUserError(
            f"model class '{model_type}' is not registered: decorate it with "
            f"@register_model so that it can be loaded again.")
    if registered is not type(model):
        raise DwiMLUserError(
            f"model class '{model_type}': this model is an instance of an "
            f"earlier definition of the class (a cell run again, or a "
            f"reloaded module); make it again from the current class.")
    params = model_params(model)  # checked before anything is written
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DwiMLUserError(
            f"model folder '{folder}': expected a folder (or none), found a "
            f"file.")
    if os.path.isdir(folder) and (folder_kind(folder) == "experiment" or any(
            os.path.lexists(os.path.join(folder, name))
            for name in EXPERIMENT_FOLDERS)):
        raise DwiMLUserError(
            f"model folder '{folder}' is an experiment (its parameters.json "
            f"would be replaced, or written among its run's folders); "
            f"expected a folder of its own, such as "
            f"'{os.path.join(folder, 'my_model')}'.")
    os.makedirs(folder, exist_ok=True)
    # The weights go first and the type last: an interrupted save leaves no
    # model_type.txt in a new folder, so nobody mistakes it for a model.
    save_torch_file(model.state_dict(), os.path.join(folder, STATE_FILE))
    with atomic_output_file(os.path.join(folder, PARAMETERS_FILE)) as tmp:
        with open(tmp, "w") as f:
            json.dump(params, f, indent=2, allow_nan=False)
    with atomic_output_file(os.path.join(folder, MODEL_TYPE_FILE)) as tmp:
        with open(tmp, "w") as f:
            f.write(model_type + "\n")
    # A folder saved before (a best model) has a manifest of the files just
    # replaced: it would call them corrupt.
    if os.path.isfile(os.path.join(folder, MANIFEST_FILE)):
        write_manifest(folder)


def with_saved_before(model_class, params):
    """Saved ``params`` completed with the arguments added to
    ``model_class`` since: what a model saved before them was (its
    ``SAVED_BEFORE``)."""
    return {**getattr(model_class, "SAVED_BEFORE", {}), **params}


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
    device = check_device(device)
    if device.type == "cpu":
        device = torch.device("cpu")  # 'cpu:0' is one; torch.load refuses it
    if not isinstance(folder, (str, os.PathLike)):
        raise DwiMLUserError(
            f"model folder: expected a path (such as an experiment's "
            f"best_model), found {type(folder).__name__} {folder!r}.")
    folder = os.fspath(folder)
    verify_manifest(folder)
    for name in (MODEL_TYPE_FILE, PARAMETERS_FILE, STATE_FILE):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DwiMLUserError(
                f"model folder '{folder}': expected file '{name}', "
                f"found none.")
    type_path = os.path.join(folder, MODEL_TYPE_FILE)
    try:
        with open(type_path, encoding="utf-8") as f:
            model_type = f.read().strip()
    except UnicodeDecodeError:
        model_type = "(binary bytes)"
    model_class = registered_model_class(
        model_type, os.path.join(folder, MODEL_TYPE_FILE))
    params_path = os.path.join(folder, PARAMETERS_FILE)
    params = load_json_file(params_path, "model parameters")
    if not isinstance(params, dict):
        raise DwiMLUserError(
            f"model parameters '{params_path}': expected a JSON object, found "
            f"{type(params).__name__}.")
    params = with_saved_before(model_class, params)
    try:
        model = model_class(**params)
    except TypeError as error:
        raise DwiMLUserError(
            f"{params_path}: parameters do not match {model_type}: "
            f"{error}.") from None
    except DwiMLUserError as error:  # a value the model refuses
        raise DwiMLUserError(f"{params_path}: {error}") from None
    state_path = os.path.join(folder, STATE_FILE)
    state = load_torch_file(state_path, "model weights", map_location=device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split())
        raise DwiMLUserError(
            f"model weights '{state_path}': expected the weights of this "
            f"{model_type} built from {PARAMETERS_FILE}, found others "
            f"({detail if len(detail) <= 300 else detail[:300] + ' ...'}); "
            "a model of your own must list every constructor argument in "
            "params_for_checkpoint.") from None
    _check_finite_weights(state, state_path)
    model.to(device)
    model.eval()
    return model


def _check_finite_weights(state, state_path):
    """Refuse NaN or Inf weights (a diverged model, saved by an older
    version or another tool): they would only surface later, in a JSON
    writer or the tracker's indexing."""
    for name, tensor in state.items():
        if (torch.is_tensor(tensor) and tensor.is_floating_point()
                and not torch.isfinite(tensor).all()):
            raise DwiMLUserError(
                f"model weights '{state_path}': expected finite weights, "
                f"found NaN or Inf in '{name}' (a diverged training); use "
                "another epoch's model.")


def load_model_of_experiment(experiment_dir, use_latest_epoch=False,
                             device="cpu", with_provenance=False):
    """Load an experiment's best model, or its checkpoint's model.

    The experiment's run may be going on: a save that swaps in a new
    folder while it is read makes it read again
    (:func:`~dwi_ml.io_utils.atomic.read_replaced_folder`), instead of
    calling a file corrupt.

    Parameters
    ----------
    experiment_dir : str
    use_latest_epoch : bool
        Load ``checkpoint/model/`` instead of ``best_model/``.
    device : str or torch.device
    with_provenance : bool
        Also return which model this is, read with it from the same save
        (:func:`~dwi_ml.io_utils.provenance.model_provenance`: its epoch,
        the sha256 of its weights...).

    Returns
    -------
    MainModelAbstract, in eval mode on ``device``; with
    ``with_provenance``, (model, provenance dict).
    """
    def read():
        folder = experiment_model_dir(experiment_dir, use_latest_epoch)
        model = load_model_from_params_and_state(folder, device)
        if not with_provenance:
            return model
        return model, model_provenance(experiment_dir, use_latest_epoch,
                                       os.path.join(folder, STATE_FILE))
    saved = CHECKPOINT_DIR if use_latest_epoch else BEST_MODEL_DIR
    return read_replaced_folder(os.path.join(experiment_dir, saved), read)
