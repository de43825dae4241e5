"""Check the sections of a (maybe hand-edited) parameters.json on resume.

A resume rebuilds the dataset, sampler, loader and trainer from the saved
sections. Each section must be a JSON object whose keys are arguments of
what it builds, and each value must pass the checks that the training
script applies to the option of the same name (its argparse action: type,
choices; and its minimum), then the checks of its section (batch sizes,
loader ratios, trainer arguments). A refusal is one line
naming the file, the key, what was expected and what was found::

    parameters.json of EXPERIMENT: trainer.seed: expected an integer >= 0, found 'abc'.
"""
import argparse
import inspect
import numbers

import torch

from dwi_ml.batching.batch_loader import (
    BatchLoaderOneInput,
    loader_options_from_args,
)
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.arg_checks import (
    InvalidValue,
    check_bool,
    check_choice,
    check_count_or_size,
    check_int,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE
from dwi_ml.models.model_io import registered_model_class, with_saved_before
from dwi_ml.training.monitors import check_best_model_metric
from dwi_ml.training.trainer_args import check_trainer_args
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput

# What each section builds, and the arguments its builder gives itself
# (they may not be in the file).
_BUILT_BY = {
    "dataset": (MultiSubjectDataset, ()),
    "sampler": (BatchSampler, ("dataset", "rank", "world_size")),
    "loader": (BatchLoaderOneInput, ("dataset", "input_spec",
                                     "interpolation_device")),
    "trainer": (DWIMLTrainerOneInput, (
        "model", "experiments_path", "experiment_name", "batch_sampler",
        "batch_loader", "callbacks", "distributed")),
}
# Saved with a section without being an argument of what it builds.
_RECORDS = {"dataset": ("fingerprint",)}


def _check_batch_sizes(values):
    as_count = values["batch_size_units"] == "nb_streamlines"
    for name in ("batch_size_training", "batch_size_validation"):
        check_count_or_size(name, values[name], as_count)


def _check_trainer(values):
    # The device is checked where --device may replace it (a GPU
    # experiment resumed on a CPU machine).
    check_trainer_args({**values, "device": "cpu"})
    check_best_model_metric(values["best_model_metric"])


# The training script's checks of each section, beyond single options.
_SECTION_CHECKS = {
    "sampler": _check_batch_sizes,
    "loader": lambda values: loader_options_from_args(
        argparse.Namespace(**values)),
    "trainer": _check_trainer,
}


def check_saved_parameters(params, experiment_dir, parser, int_minimums):
    """Refuse, before any work, a saved section that a resume cannot use.

    Parameters
    ----------
    params : dict
        parameters.json, as read by
        :func:`~dwi_ml.io_utils.experiment_layout.read_parameters`.
    experiment_dir : str
        Named in the message.
    parser : argparse.ArgumentParser
        The training script's: its options check the saved values of the
        same name.
    int_minimums : dict of str to int
        Smallest valid value of each integer option.

    Raises
    ------
    DwiMLUserError
        ``parameters.json of EXPERIMENT: SECTION.KEY: expected ..., found
        ...``, for the first section, key or value refused.
    """
    where = f"{PARAMETERS_FILE} of {experiment_dir}"
    options = {action.dest: action for action in parser._actions}
    sections = {name: _BUILT_BY[name] for name in _BUILT_BY if name in params}
    if "model" in params:
        sections["model"] = (registered_model_class(
            params.get("model_type"), f"{where}: model_type"), ())
    for section, (built, given_by_builder) in sections.items():
        values = params[section]
        _check_object(where, section, values)
        try:
            _check_section(section, values, built, given_by_builder, options,
                           int_minimums)
        except InvalidValue as error:
            raise DwiMLUserError(
                f"{where}: {section}.{error.name.lstrip('-')}: expected "
                f"{error.expected}, found {error.value!r}.") from None
        except DwiMLUserError as error:
            raise DwiMLUserError(f"{where}: {section}: {error}") from None


def _check_object(where, section, values):
    if not isinstance(values, dict):
        raise DwiMLUserError(
            f"{where}: {section}: expected a JSON object, found "
            f"{type(values).__name__} {values!r}.")


def check_saved_section(params, experiment_dir, section, built, check):
    """Refuse a saved section that does not build ``built``.

    For a section that the training script's options do not check one by
    one (their names differ), e.g. ``tracking_validation``.

    Parameters
    ----------
    params : dict
        parameters.json.
    experiment_dir : str
        Named in the message.
    section : str
        The section's key; a null section is accepted (off).
    built : type
        What the section builds: its keys must be its arguments.
    check : callable
        Called with the section's values (with the defaults of ``built``);
        raises :class:`DwiMLUserError`.

    Returns
    -------
    What ``built(**values)`` returns, or None for a null section.
    """
    where = f"{PARAMETERS_FILE} of {experiment_dir}"
    values = params.get(section)
    if values is None:
        return None
    _check_object(where, section, values)
    try:
        _check_section(section, values, built, (), {}, {})
        check(values)
    except DwiMLUserError as error:
        raise DwiMLUserError(f"{where}: {section}: {error}") from None
    return built(**values)


def _check_section(section, values, built, given_by_builder, options,
                   int_minimums):
    arguments = {name: parameter for name, parameter
                 in _constructor_arguments(built).items()
                 if name not in given_by_builder}
    accepted = [*arguments, *_RECORDS.get(section, ())]
    for key in values:
        if key not in accepted:
            raise DwiMLUserError(
                f"unknown key '{key}' ({built.__name__} takes no such "
                "argument): remove it.")
    for name, parameter in arguments.items():
        if parameter.default is parameter.empty and name not in values:
            raise DwiMLUserError(
                f"expected the key '{name}' ({built.__name__} needs it), "
                "found none.")
        # Taken from the constructor, a missing key would silently change
        # the run where the script's default differs (clip_grad, ...). A
        # model's keys added since are filled by its SAVED_BEFORE.
        if (section != "model" and name not in values and name in options
                and options[name].default != parameter.default):
            raise DwiMLUserError(
                f"expected the key '{name}' (every training saves it; "
                f"{built.__name__}'s default, {parameter.default!r}, is not "
                "the script's), found none.")
    for key, value in values.items():
        if key in options:
            try:
                _check_as_option(key, value, options[key], int_minimums)
            except InvalidValue:
                # A model saves its resolved values, some outside the
                # option's range (None where the option has a default, a
                # width of 0 previous directions): its constructor decides.
                if section != "model" or not _builds(built, values):
                    raise
    check = _SECTION_CHECKS.get(section)
    if check is not None:
        filled = {name: parameter.default for name, parameter
                  in arguments.items() if name not in values}
        try:
            check({**filled, **values})
        except InvalidValue as error:
            name = error.name.lstrip("-")
            if name not in filled:
                raise
            # A default that only a run resolves (the model's learning
            # rate): the key is missing, not wrong.
            raise DwiMLUserError(
                f"expected the key '{name}' (every training saves it), "
                "found none.") from None


def _builds(model_class, values):
    """Whether ``model_class`` builds from the saved ``values`` (with the
    arguments added since, as a model loads).

    Raises its own DwiMLUserError, which names the argument."""
    values = with_saved_before(model_class, values)
    # Building draws initial weights: the run's random streams unchanged.
    with torch.random.fork_rng(devices=[]):
        try:
            model_class(**values)
        except (TypeError, ValueError, RuntimeError):
            return False
    return True


def _constructor_arguments(built):
    """The named arguments of ``built``'s constructor, with those that its
    ``**kwargs`` passes on to its parents' (the Transformers')."""
    arguments = {}
    for cls in built.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        for parameter in parameters[1:]:
            if parameter.kind not in (parameter.VAR_POSITIONAL,
                                      parameter.VAR_KEYWORD):
                arguments.setdefault(parameter.name, parameter)
        if all(parameter.kind is not parameter.VAR_KEYWORD
               for parameter in parameters):
            break
    return arguments


def _check_as_option(key, value, action, int_minimums):
    """Check a saved value as dwiml_train_model.py checks its option
    ``action``: its type, choices and minimum (``int_minimums``)."""
    if value is None and _takes_none(action):
        return
    if action.nargs == 0:  # store_true, store_false
        check_bool(key, value)
        return
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise InvalidValue(key, None, "a list", value)
        for item in value:
            _check_item(key, item, action, int_minimums)
        return
    _check_item(key, value, action, int_minimums)


def _takes_none(action):
    """Whether None is a value of the option: its default, or the value
    of its text 'none' (e.g. --clip_grad none)."""
    if action.default is None and not action.required:
        return True
    try:
        return callable(action.type) and action.type("none") is None
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def _check_item(key, value, action, int_minimums):
    if key in int_minimums:
        check_int(key, value, int_minimums[key])
    elif action.type is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidValue(key, None, "an integer", value)
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidValue(key, None, "a number", value)
    elif action.type is None:
        if not isinstance(value, str):
            raise InvalidValue(key, None, "a string", value)
    elif not _parses(action, value):
        raise InvalidValue(key, None, f"a value of --{key}", value)
    if action.choices is not None:
        check_choice(key, value, action.choices)


def _parses(action, value):
    """Whether the option's own type reads the value's text."""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        return False
    try:
        action.type(str(value))
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True
