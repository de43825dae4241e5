"""What tracking learns from how a model was trained (its parameters.json).

A model trained without its own step size saw the streamlines of its HDF5
file at that file's step size, so tracking uses that step by default. A
model trained without reversed streamlines has never seen a streamline run
backwards, so the backward half of two-way tracking is out of its training.
A model with a ``max_len`` (the Transformers' positions) cannot track
longer streamlines. A model reads its input group as the training file's
config made it (files, in their order, and standardization): another
file's input group made otherwise is another input.
"""
import logging
import numbers
import os

import h5py

from dwi_ml.data.hdf5.layout import parse_groups_config, read_optional_number
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, read_parameters

logger = logging.getLogger(__name__)


def _as_step(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and value > 0:
        return float(value)
    return None


def training_hdf5_step_size(experiment_dir):
    """Step size (mm) of the HDF5 the experiment was trained on, or None.

    Read from the HDF5 fingerprint of ``parameters.json`` (written since
    fingerprints exist), else from the training file's root attrs when it
    is still there.
    """
    return _dataset_step_size(_training_dataset(experiment_dir))


def _training_dataset(experiment_dir):
    """The ``dataset`` section of the experiment's parameters.json, or {}."""
    if not os.path.isfile(os.path.join(experiment_dir, PARAMETERS_FILE)):
        return {}
    return read_parameters(experiment_dir).get("dataset") or {}


def _dataset_step_size(dataset):
    """Step size (mm) of the ``dataset`` section of parameters.json."""
    creation = (dataset.get("fingerprint") or {}).get("creation") or {}
    if "step_size" in creation:
        return _as_step(creation["step_size"])
    path = dataset.get("hdf5_file")
    if not path or not os.path.isfile(path):
        return None
    try:
        with h5py.File(path, "r") as hdf_file:
            return _as_step(hdf_file.attrs.get("step_size"))
    except OSError:
        return None


_FORMAT_CASTS = (("step_size", float), ("nb_points", int), ("compress", float))


def hdf5_streamline_format(attrs):
    """The :class:`StreamlineFormat` an HDF5's root ``attrs`` (or a
    fingerprint's ``creation``) record; None when one of them is not a
    number nor unset (a file we cannot read it from)."""
    try:
        return StreamlineFormat(**{key: read_optional_number(attrs, key, cast)
                                   for key, cast in _FORMAT_CASTS})
    except (TypeError, ValueError):
        return None


def _training_streamline_format(dataset):
    """The format of the streamlines of the experiment's training HDF5: from
    its fingerprint, else from the file; None when unknown."""
    creation = (dataset.get("fingerprint") or {}).get("creation")
    if creation is not None:
        return hdf5_streamline_format(creation)
    path = dataset.get("hdf5_file")
    if not path or not os.path.isfile(path):
        return None
    try:
        with h5py.File(path, "r") as hdf_file:
            return hdf5_streamline_format(dict(hdf_file.attrs))
    except OSError:
        return None


def _describe_format(streamline_format):
    given = {key: value for key, value in streamline_format.as_dict().items()
             if value is not None}
    return (", ".join(f"{key} {value:g}" for key, value in given.items())
            or "as stored, not resampled")


def use_training_streamline_format(model, experiment_dir, hdf5_file):
    """Make a model without a streamline format of its own read another
    HDF5's streamlines as it read its training file's.

    Such a model was trained on its training file's streamlines as stored
    (say, resampled to 1.5 mm at creation). On a file stored otherwise, its
    loss and angles would be those of other streamlines. Its ``input_spec``
    then takes the training file's format, so that the loader resamples
    this file's streamlines to it (a model is never saved by the scripts
    that call this). When the training file's streamlines were not
    resampled and this file's were, nothing can undo it: a warning says so.

    Parameters
    ----------
    model : MainModelAbstract
        Loaded from ``experiment_dir``.
    experiment_dir : str
    hdf5_file : str
        The file the model is about to read.
    """
    if model.input_spec.streamline_format.is_set:
        return
    trained = _training_streamline_format(_training_dataset(experiment_dir))
    with h5py.File(hdf5_file, "r") as hdf_file:
        given = hdf5_streamline_format(dict(hdf_file.attrs))
    if trained is None or given is None or trained == given:
        return
    if not trained.is_set:
        logger.warning(
            "The model was trained on streamlines as stored, not resampled; "
            "those of %s are stored with %s: the model reads them so, "
            "unlike its training streamlines.", hdf5_file,
            _describe_format(given))
        return
    spec = model.input_spec
    model.input_spec = InputSpec(trained, spec.neighborhood,
                                 spec.nb_previous_dirs)
    logger.info("Streamlines of %s (%s) are resampled to %s, as those of the "
                "HDF5 the model was trained on.", hdf5_file,
                _describe_format(given), _describe_format(trained))


# What makes an input group's values, with the config's defaults.
INPUT_PREPARATION = (("files", []), ("standardization", "none"),
                     ("std_mask", []))


def _preparation(config, group):
    """The :data:`INPUT_PREPARATION` of ``group`` in a groups config, or
    None when unknown."""
    entry = (config or {}).get(group)
    if not isinstance(entry, dict):
        return None
    prepared = {}
    for key, default in INPUT_PREPARATION:
        value = entry.get(key, default)
        prepared[key] = [value] if isinstance(value, str) and key != \
            "standardization" else value
    return prepared


def input_preparation_differences(experiment_dir, hdf5_file, input_group):
    """How ``input_group`` of ``hdf5_file`` was made unlike the model's
    training input, as ``"key: VALUE here, TRAINING_VALUE in training group
    'NAME'"`` pieces; [] when alike, or when either config is unknown (files of the
    reference's tools may not record it)."""
    dataset = _training_dataset(experiment_dir)
    creation = (dataset.get("fingerprint") or {}).get("creation") or {}
    loader = (read_parameters(experiment_dir).get("loader") or {}
              if dataset else {})
    training_group = loader.get("input_group")
    if "groups_config" not in creation or training_group is None:
        return []
    trained = _preparation(parse_groups_config(creation["groups_config"]),
                           training_group)
    with h5py.File(hdf5_file, "r") as hdf_file:
        text = hdf_file.attrs.get("groups_config")
    given = _preparation(parse_groups_config(text) if text is not None
                         else None, input_group)
    if trained is None or given is None:
        return []
    return [f"{key}: {given[key]!r} here, {trained[key]!r} in training "
            f"group '{training_group}'"
            for key, _ in INPUT_PREPARATION if given[key] != trained[key]]


def warn_if_input_prepared_differently(experiment_dir, hdf5_file,
                                       input_group):
    """One warning when :func:`input_preparation_differences` finds any:
    the model would read inputs it was not trained on (say, another
    standardization), which no feature count shows."""
    differences = input_preparation_differences(experiment_dir, hdf5_file,
                                                input_group)
    if differences:
        logger.warning(
            "Input group '%s' of %s was made otherwise than the model's "
            "training input (%s): the model may read values it was not "
            "trained on. Create the HDF5 with the training file's config "
            "for this group.", input_group, hdf5_file, "; ".join(differences))


def choose_step_size(given_mm, model, experiment_dir):
    """The tracking step: given, else the model's, else the training HDF5's.

    The HDF5's only for a model that read its streamlines as stored: one
    trained on ``nb_points`` points or compressed streamlines never saw
    that step.

    Raises
    ------
    DwiMLUserError
        When none of the three is known.
    """
    if given_mm is not None:
        return given_mm
    return training_step_size(model.input_spec.streamline_format.as_dict(),
                              _training_dataset(experiment_dir))


def training_step_size(streamline_format, dataset):
    """The step (mm) of the streamlines a model was trained on.

    Parameters
    ----------
    streamline_format : dict
        The model's ``step_size``, ``nb_points`` and ``compress``.
    dataset : dict
        The ``dataset`` section of its parameters.json.

    Raises
    ------
    DwiMLUserError
        When that step is unknown: no step size of the model's, and none
        of the HDF5's or streamlines resampled to a number of points or
        compressed.
    """
    if streamline_format.get("step_size") is not None:
        return streamline_format["step_size"]
    for option in ("nb_points", "compress"):
        if streamline_format.get(option) is not None:
            raise DwiMLUserError(
                f"argument --step_size: the model was trained on streamlines "
                f"of --{option} {streamline_format[option]:g}, without a "
                f"step size; give one in mm, found none.")
    step_size = _dataset_step_size(dataset)
    if step_size is None:
        raise DwiMLUserError(
            "argument --step_size: the model was trained without a step "
            "size and its training HDF5's step size is unknown; give one in "
            "mm, found none.")
    logger.info("Step size %s mm: the step size of the HDF5 the model was "
                "trained on (give --step_size to change it).", step_size)
    return step_size


def warn_if_not_trained_backward(experiment_dir, forward_only):
    """One warning when two-way tracking uses a model never shown reversed
    streamlines (reverse_ratio 0 in its loader parameters; nothing is said
    when the parameters do not record it)."""
    if forward_only or not os.path.isfile(
            os.path.join(experiment_dir, PARAMETERS_FILE)):
        return
    loader = read_parameters(experiment_dir).get("loader") or {}
    if loader.get("reverse_ratio", None) == 0:
        logger.warning(
            "The model was trained without reversed streamlines "
            "(--reverse_ratio 0): the backward half of each streamline may "
            "stop at once. Train with --reverse_ratio 0.5, or track with "
            "--track_forward_only.")


def model_max_length_mm(model, step_size_mm, max_length_mm):
    """``max_length_mm``, or less for a model with a ``max_len``: the
    longest streamline it can track, ``max_len`` steps of
    ``step_size_mm``."""
    return max_length_for(getattr(model, "max_len", None), step_size_mm,
                          max_length_mm)


def max_length_for(max_len, step_size_mm, max_length_mm):
    """:func:`model_max_length_mm` from a model's ``max_len`` (None: no
    limit), e.g. read from its parameters before it is built."""
    if max_len is None:
        return max_length_mm
    return min(max_length_mm, max_len * step_size_mm)


def check_model_max_len(model, nb_points, step_size_mm, max_length_mm):
    """Refuse, before tracking, streamlines longer than a model's
    ``max_len`` (Transformers: positions it can encode); a streamline of
    ``nb_points`` points takes ``nb_points - 1`` model steps."""
    max_len = getattr(model, "max_len", None)
    if max_len is not None and nb_points - 1 > max_len:
        raise DwiMLUserError(
            f"argument 'max_length': the model takes at most max_len="
            f"{max_len} steps per streamline, i.e. {max_len * step_size_mm:g}"
            f" mm at {step_size_mm:g} mm per step; found {max_length_mm:g} "
            f"mm ({nb_points - 1} steps). Track with a max_length of at most "
            f"{max_len * step_size_mm:g} mm.")
