"""What tracking learns from how a model was trained (its parameters.json).

A model trained without its own step size saw the streamlines of its HDF5
file at that file's step size, so tracking uses that step by default. A
model trained without reversed streamlines has never seen a streamline run
backwards, so the backward half of two-way tracking is out of its training.
A model with a ``max_len`` (the Transformers' positions) cannot track
longer streamlines.
"""
import logging
import numbers
import os

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, read_parameters
from dwi_ml.training.training_file import (
    training_dataset,
    training_streamline_format,
)

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
    return _dataset_step_size(training_dataset(experiment_dir))


def _dataset_step_size(dataset):
    """Step size (mm) of the ``dataset`` section of parameters.json."""
    streamline_format = training_streamline_format(dataset)
    return None if streamline_format is None else _as_step(
        streamline_format.step_size)


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
                              training_dataset(experiment_dir))


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
    step_size = known_training_step_size(streamline_format, dataset)
    if step_size is not None:
        if streamline_format.get("step_size") is None:
            logger.info("Step size %s mm: the step size of the HDF5 the "
                        "model was trained on (give --step_size to change "
                        "it).", step_size)
        return step_size
    option = _resampling_option(streamline_format)
    if option is not None:
        raise DwiMLUserError(
            f"argument --step_size: the model was trained on streamlines "
            f"of {option}, without a step size; give one in mm, found none.")
    raise DwiMLUserError(
        "argument --step_size: the model was trained without a step "
        "size and its training HDF5's step size is unknown; give one in "
        "mm, found none.")


def known_training_step_size(streamline_format, dataset):
    """The step (mm) of :func:`training_step_size`, or None when unknown
    (tracking then needs --step_size).

    Parameters
    ----------
    streamline_format : dict
        The model's ``step_size``, ``nb_points`` and ``compress``.
    dataset : dict
        The ``dataset`` section of its parameters.json.
    """
    if streamline_format.get("step_size") is not None:
        return streamline_format["step_size"]
    if _resampling_option(streamline_format) is not None:
        # Its streamlines were resampled: the HDF5's step is not theirs.
        return None
    return _dataset_step_size(dataset)


def _resampling_option(streamline_format):
    """``--nb_points N`` or ``--compress T`` of the model, or None."""
    for option in ("nb_points", "compress"):
        if streamline_format.get(option) is not None:
            return f"--{option} {streamline_format[option]:g}"
    return None


def warn_if_tracking_needs_step_size(streamline_format, dataset,
                                     pretrained=None):
    """One warning, when a run starts, if tracking from its model will
    need ``--step_size``: :func:`known_training_step_size` is None.

    Parameters
    ----------
    streamline_format : dict
        The model's ``step_size``, ``nb_points`` and ``compress``.
    dataset : dict
        The ``dataset`` section of its parameters.json (``hdf5_file``
        and ``fingerprint``).
    pretrained : str or None
        The ``--pretrained`` experiment the model comes from: its options
        are kept, so the advice is to create the HDF5 with a step.
    """
    if known_training_step_size(streamline_format, dataset) is not None:
        return
    needed = ("dwiml_track_from_model.py will need --step_size to track "
              "from this model")
    option = _resampling_option(streamline_format)
    if option is not None:
        logger.warning("Training on streamlines of %s, which have no step "
                       "size: %s.", option, needed)
        return
    if pretrained is not None:
        logger.warning(
            "Fine-tuning the model of --pretrained '%s', which has no step "
            "size, on HDF5 file %s, which records none: %s. Create the HDF5 "
            "with --step_size for the model to know its step.", pretrained,
            dataset["hdf5_file"], needed)
        return
    logger.warning(
        "Training without --step_size on HDF5 file %s, which records no "
        "step size: %s. Give --step_size here, or create the HDF5 with "
        "--step_size, for the model to know its step.",
        dataset["hdf5_file"], needed)


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
