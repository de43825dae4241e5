"""What an experiment's training HDF5 was, read back from parameters.json.

A model reads the streamlines of its training file as that file stored
them, unless it resamples them itself, and its input group as the file's
config made it (files, in their order, and standardization). Scripts that
run a model over another file use these facts to read it the same way, or
to say what differs; and they say when they run it on subjects of its
training split.
"""
import logging
import os

import h5py
import numpy as np

from dwi_ml.data.hdf5.fingerprint import (
    compute_hdf5_fingerprint,
    first_fingerprint_difference,
)
from dwi_ml.data.hdf5.layout import parse_groups_config, read_streamline_format
from dwi_ml.data.processing.grid_frames import (
    describe_grid,
    grid_frame_difference,
    grids_alike,
)
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, read_parameters

logger = logging.getLogger(__name__)


def training_dataset(experiment_dir):
    """The ``dataset`` section of the experiment's parameters.json, or {}."""
    if not os.path.isfile(os.path.join(experiment_dir, PARAMETERS_FILE)):
        return {}
    return read_parameters(experiment_dir).get("dataset") or {}


def hdf5_streamline_format(attrs):
    """The :class:`StreamlineFormat` an HDF5's root ``attrs`` (or a
    fingerprint's ``creation``) record; None when one of them is not a
    number nor unset (a file we cannot read it from)."""
    try:
        return StreamlineFormat(**read_streamline_format(attrs))
    except (TypeError, ValueError):
        return None


def training_streamline_format(dataset):
    """The format of the streamlines of the experiment's training HDF5.

    Parameters
    ----------
    dataset : dict
        The ``dataset`` section of parameters.json
        (:func:`training_dataset`).

    Returns
    -------
    StreamlineFormat or None
        From the HDF5 fingerprint, else from the file when it is still
        there; None when unknown.
    """
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
    spec = model.input_spec
    streamline_format = format_as_in_training(
        experiment_dir, hdf5_file, spec.streamline_format)
    if streamline_format is not spec.streamline_format:
        model.input_spec = InputSpec(streamline_format, spec.neighborhood,
                                     spec.nb_previous_dirs)


def format_as_in_training(experiment_dir, hdf5_file, streamline_format):
    """The format in which a run of ``experiment_dir`` reads ``hdf5_file``'s
    streamlines: ``streamline_format`` (the model's own) when it is set,
    else the format of the training file's streamlines (see
    :func:`use_training_streamline_format`).

    Parameters
    ----------
    experiment_dir : str
    hdf5_file : str
    streamline_format : StreamlineFormat
        The model's own format (``parameters.json``'s ``model``).

    Returns
    -------
    StreamlineFormat
        ``streamline_format`` itself, or the training file's.
    """
    if streamline_format.is_set:
        return streamline_format
    trained = training_streamline_format(training_dataset(experiment_dir))
    with h5py.File(hdf5_file, "r") as hdf_file:
        given = hdf5_streamline_format(dict(hdf_file.attrs))
    if trained is None or given is None or trained == given:
        return streamline_format
    if not trained.is_set:
        logger.warning(
            "The model was trained on streamlines as stored, not resampled; "
            "those of %s are stored with %s: the model reads them so, "
            "unlike its training streamlines.", hdf5_file,
            _describe_format(given))
        return streamline_format
    logger.info("Streamlines of %s (%s) are resampled to %s, as those of the "
                "HDF5 the model was trained on.", hdf5_file,
                _describe_format(given), _describe_format(trained))
    return trained


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
    dataset = training_dataset(experiment_dir)
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


def _group_nb_features(hdf5_file, group):
    """The number of features of volume ``group`` in the file's first
    subject holding it, or None.

    From the shape of its ``data``, as the loader counts them (the attr
    ``nb_features`` may be an array, or disagree with the data: see
    docs/hdf5_layout.md).
    """
    with h5py.File(hdf5_file, "r") as hdf_file:
        for item in hdf_file.values():
            if isinstance(item, h5py.Group) and group in item:
                data = item[group].get("data") \
                    if isinstance(item[group], h5py.Group) else None
                if not isinstance(data, h5py.Dataset):
                    return None
                return int(data.shape[3]) if data.ndim == 4 else 1
    return None


def warn_if_input_prepared_differently(model, experiment_dir, hdf5_file,
                                       input_group):
    """One warning when :func:`input_preparation_differences` finds any:
    the model would read inputs it was not trained on (say, another
    standardization), which no feature count shows. Nothing is said when
    the group's number of features is not the model's: that is refused,
    later, in one line."""
    if _group_nb_features(hdf5_file, input_group) != model.nb_features:
        return
    differences = input_preparation_differences(experiment_dir, hdf5_file,
                                                input_group)
    if differences:
        logger.warning(
            "Input group '%s' of %s was made otherwise than the model's "
            "training input (%s): the model may read values it was not "
            "trained on. Create the HDF5 with the training file's config "
            "for this group.", input_group, hdf5_file, "; ".join(differences))


def _group_affine(fingerprint, subject, group):
    affine = (((fingerprint.get("subjects") or {}).get(subject) or {})
              .get(group) or {}).get("attrs", {}).get("affine")
    return None if affine is None else np.asarray(affine, dtype=np.float64)


def grids_unlike_training(experiment_dir, subject_ids, input_group,
                          fingerprint):
    """The subjects whose input grid is unlike every training subject's,
    with one warning naming them.

    A model learns directions in voxel space: on a grid whose axes point
    other ways (flipped, permuted, rotated) or whose voxels have another
    shape, its directions are other world directions, and tracking or
    evaluation there is silently wrong (see
    :mod:`dwi_ml.data.processing.grid_frames`). Nothing is said for an
    experiment whose parameters.json records no training file.

    Parameters
    ----------
    experiment_dir : str
    subject_ids : sequence of str
        The subjects about to be tracked or evaluated.
    input_group : str
        Their input volume group.
    fingerprint : dict
        The fingerprint of the HDF5 they are read from
        (:func:`~dwi_ml.data.hdf5.fingerprint.compute_hdf5_fingerprint`).

    Returns
    -------
    list of str
    """
    dataset = training_dataset(experiment_dir)
    trained_file = dataset.get("fingerprint") or {}
    training_group = ((read_parameters(experiment_dir).get("loader") or {})
                      .get("input_group") if dataset else None)
    trained = [(subject, affine) for subject in
               (trained_file.get("splits") or {}).get("training", [])
               for affine in [_group_affine(trained_file, subject,
                                            training_group)]
               if affine is not None]
    if not trained:
        return []
    unlike = []
    for subject in subject_ids:
        affine = _group_affine(fingerprint, subject, input_group)
        if affine is not None and not any(grids_alike(affine, other)
                                          for _, other in trained):
            unlike.append((subject, affine))
    if unlike:
        subject, affine = unlike[0]
        nearest, nearest_affine = min(
            trained, key=lambda item: grid_frame_difference(affine, item[1]))
        angle, change = grid_frame_difference(affine, nearest_affine)
        names = ", ".join(f"'{name}'" for name, _ in unlike[:3])
        logger.warning(
            "Subject%s %s%s, input group '%s': a voxel grid unlike every "
            "training subject's (%s; nearest, training subject '%s': %s; "
            "axes up to %.1f degrees apart, voxel sides up to %.1f %% "
            "different): the model's directions are in voxel space, so "
            "here they point elsewhere in the world. Resample or reorient "
            "the subject's volumes like the training subjects' before "
            "creating the HDF5 (docs/models.md).",
            "s" if len(unlike) > 1 else "", names,
            " ..." if len(unlike) > 3 else "", input_group,
            describe_grid(affine), nearest, describe_grid(nearest_affine),
            angle, 100 * change)
    return [name for name, _ in unlike]


def training_split_subjects(experiment_dir, subject_ids, hdf5_file,
                            fingerprint=None):
    """Which of ``subject_ids`` the model may have been trained on, with
    one warning naming them.

    Only IDs in the training split of the HDF5 fingerprint that the
    experiment's parameters.json records (the file it was trained on;
    nothing is said for an experiment without one). Subject IDs may be
    reused across files: the warning says whether ``hdf5_file`` is that
    same file (the same fingerprint), in which case these are the very
    subjects the model learned from.

    Parameters
    ----------
    experiment_dir : str
    subject_ids : sequence of str
        The subjects about to be evaluated or tracked.
    hdf5_file : str
        The file they are read from.
    fingerprint : dict, optional
        ``hdf5_file``'s fingerprint, when already computed.

    Returns
    -------
    list of str
        Those of ``subject_ids`` in the recorded training split, in their
        order.
    """
    trained = training_dataset(experiment_dir).get("fingerprint") or {}
    training_ids = set((trained.get("splits") or {}).get("training") or [])
    found = [subject for subject in subject_ids if subject in training_ids]
    if not found:
        return found
    if fingerprint is None:
        fingerprint = compute_hdf5_fingerprint(hdf5_file)
    difference = first_fingerprint_difference(trained, fingerprint)
    several = len(found) > 1
    it = "them" if several else "it"
    if difference is None:
        which = (f"and this is that same file (same fingerprint): the model "
                 f"learned from {it};")
    else:
        which = (f"not this one ({difference}); IDs may be reused across "
                 f"files, but if {'they are' if several else 'it is'} the same "
                 f"subject{'s' if several else ''},")
    logger.warning(
        "%s %s of %s: ID%s the training split of the file the model was "
        "trained on, %s results on %s are not those of an unseen subject.",
        "Subjects" if several else "Subject", ", ".join(found), hdf5_file,
        "s match" if several else " matches", which, it)
    return found
