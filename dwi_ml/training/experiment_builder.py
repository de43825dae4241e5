"""Build the dataset, sampler, loader, model and trainer of an experiment.

``dwiml_train_model.py`` builds them from its arguments and saves the same
dicts in ``parameters.json``; ``resume_training_from_checkpoint.py`` rebuilds
them from that file. One place, so the two can never disagree: both run
:func:`run_experiment`.

``parameters.json`` holds the values the run reads now (a resume may
change some)::

    {"dataset": {...}, "sampler": {...}, "loader": {...},
     "model_type": "...", "model": {...}, "trainer": {...}}

and ``runs.json`` how each segment of the run was made, with the values a
resume replaced (:mod:`dwi_ml.training.run_history`).
"""
import h5py

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.file_check import check_dwiml_hdf5, hdf5_read_errors
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.data.hdf5.layout import SPLIT_ATTRS, SPLITS, VOLUME_TYPE, decode_str
from dwi_ml.io_utils.arg_checks import check_device
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, read_parameters
from dwi_ml.io_utils.output_folders import check_experiment_name
from dwi_ml.models.model_io import load_model_of_experiment
from dwi_ml.training.preemption import end_run
from dwi_ml.training.pretrained import PretrainedBaseline, pretrained_valid_loss
from dwi_ml.training.run_history import previous_parameters, recorded_segment
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput
from dwi_ml.training.training_file import (
    use_training_streamline_format,
    warn_if_input_prepared_differently,
)


def hdf5_group_names(hdf5_file, need_training=False):
    """The volume and streamline group names of an HDF5 file, read cheaply.

    Parameters
    ----------
    hdf5_file : str
    need_training : bool
        Refuse a file without training subjects (to train on it).

    Returns
    -------
    volumes, streamlines : list of str
        Sorted, as the file's first listed subject holds them.

    Raises
    ------
    DwiMLUserError
        The file is not a readable dwi_ml HDF5 file, or has no training
        subject when needed.
    """
    splits = check_dwiml_hdf5(hdf5_file)
    if need_training and not splits["training"]:
        with h5py.File(hdf5_file, "r") as f, hdf5_read_errors(hdf5_file):
            state = ("is empty" if SPLIT_ATTRS["training"] in f.attrs
                     else "is missing")
        raise DwiMLUserError(
            f"HDF5 file '{hdf5_file}': expected at least one training "
            f"subject, found none (its root attr 'training_subjs' {state});"
            " training needs some.")
    first_subject = next(s for split in SPLITS for s in splits[split])
    with h5py.File(hdf5_file, "r") as f, \
            hdf5_read_errors(hdf5_file, first_subject):
        first = f[first_subject]
        types = {name: decode_str(first[name].attrs.get("type", ""))
                 for name in first.keys()}
    volumes = sorted(k for k, v in types.items() if v == VOLUME_TYPE)
    streamlines = sorted(k for k, v in types.items() if v != VOLUME_TYPE)
    return volumes, streamlines


def check_hdf5_groups(hdf5_file, input_group, streamline_group,
                      need_training=False):
    """Check cheaply, before any work, that the HDF5 has both groups.

    Parameters
    ----------
    hdf5_file : str
    input_group, streamline_group : str
        ``input_group`` None checks the streamline group only.
    need_training : bool
        Also refuse a file without training subjects (to train on it).

    Raises
    ------
    DwiMLUserError
        The file is not a readable dwi_ml HDF5 file, has no training
        subject (when needed), or lacks one of the groups.
    """
    volumes, streamlines = hdf5_group_names(hdf5_file, need_training)
    if input_group is not None and input_group not in volumes:
        raise DwiMLUserError(
            f"input_group: '{input_group}' is not a volume group of "
            f"'{hdf5_file}' ({_expected_names(volumes, 'volume')}).")
    if streamline_group not in streamlines:
        raise DwiMLUserError(
            f"streamline_group: '{streamline_group}' is not a streamline group "
            f"of '{hdf5_file}' ({_expected_names(streamlines, 'streamline')}).")


def _expected_names(names, kind):
    if not names:
        return f"the file has no {kind} group"
    return f"expected one of: {', '.join(names)}"


def load_experiment_model_for(args):
    """The model of an experiment and the groups it reads in an HDF5 file.

    For the scripts that run an experiment's model over an HDF5 file
    (:func:`~dwi_ml.io_utils.script_args.add_model_run_args` and
    :func:`~dwi_ml.io_utils.script_args.add_experiment_group_args`).

    Parameters
    ----------
    args : argparse.Namespace
        With ``experiment_path``, ``hdf5_file``, ``input_group`` and
        ``streamline_group`` (None: the experiment's), ``use_latest_epoch``
        and ``device``.

    Returns
    -------
    model : MainModelAbstract
        In eval mode, on ``args.device``; reading the file's streamlines
        as it read its training file's
        (:func:`~dwi_ml.training.training_file.use_training_streamline_format`).
    input_group, streamline_group : str
        Checked to be groups of the HDF5 file.
    """
    params = read_parameters(args.experiment_path)
    model = load_model_of_experiment(args.experiment_path,
                                     args.use_latest_epoch, args.device)
    input_group, streamline_group = experiment_groups(
        params, args.experiment_path, args.input_group,
        args.streamline_group)
    check_hdf5_groups(args.hdf5_file, input_group, streamline_group)
    warn_if_input_prepared_differently(model, args.experiment_path, args.hdf5_file,
                                       input_group)
    use_training_streamline_format(model, args.experiment_path,
                                   args.hdf5_file)
    return model, input_group, streamline_group


def experiment_groups(params, experiment_path, input_group=None,
                      streamline_group=None):
    """The volume and streamline groups to read: those given, else those
    the experiment trained on (``params``, its ``parameters.json``:
    'loader'). The model is loaded first, so that a missing model module
    is the first error.

    Raises
    ------
    DwiMLUserError
        A group not given, and no 'loader' section to read it from (a
        model trained from Python saves only its trainer's and model's).
    """
    loader = params.get("loader")
    loader = loader if isinstance(loader, dict) else {}
    input_group = input_group or loader.get("input_group")
    streamline_group = streamline_group or loader.get("streamline_group")
    if not (input_group and streamline_group):
        raise DwiMLUserError(
            f"experiment '{experiment_path}': its {PARAMETERS_FILE} has no "
            "'loader' section naming the groups its model read (a run "
            "trained from Python); give --input_group and "
            "--streamline_group.")
    return input_group, streamline_group


def build_dataset(dataset_params):
    """Load a MultiSubjectDataset (training and validation sets).

    Parameters
    ----------
    dataset_params : dict
        :class:`~dwi_ml.data.dataset.MultiSubjectDataset`'s arguments
        (``hdf5_file``, and optionally ``lazy``, ``cache_size``,
        ``cache_size_bytes``), and the file's ``fingerprint`` (a record of
        ``parameters.json``, ignored here).

    Returns
    -------
    MultiSubjectDataset
        With its training and validation subjects loaded (all their data
        when eager, their metadata when lazy); no testing subjects.
    """
    _check_params("dataset_params", dataset_params)
    dataset = MultiSubjectDataset(**{key: value for key, value
                                     in dataset_params.items()
                                     if key != "fingerprint"})
    dataset.load_data(load_training=True, load_validation=True,
                      load_testing=False)
    return dataset


def _check_params(name, params):
    if not isinstance(params, dict):
        raise DwiMLUserError(
            f"argument {name}: expected a dict of the constructor's "
            f"arguments, got {type(params).__name__} {params!r}.")


def build_sampler(dataset, sampler_params, rank=0, world_size=1):
    """A BatchSampler from its saved parameters.

    Parameters
    ----------
    dataset : MultiSubjectDataset
    sampler_params : dict
        :class:`~dwi_ml.batching.batch_sampler.BatchSampler`'s arguments
        other than the dataset and ranks: ``streamline_group``,
        ``batch_size_training``, ``batch_size_validation`` and
        ``batch_size_units`` (required), ``nb_subjects_per_batch``,
        ``cycles``, ``seed``.
    rank, world_size : int
        This process's rank and the number of ranks (distributed runs).

    Returns
    -------
    BatchSampler
    """
    _check_params("sampler_params", sampler_params)
    return BatchSampler(dataset, rank=rank, world_size=world_size,
                        **sampler_params)


def build_loader(dataset, loader_params, model, device):
    """A BatchLoaderOneInput reading the model's ``input_spec``.

    Parameters
    ----------
    dataset : MultiSubjectDataset
    loader_params : dict
        :class:`~dwi_ml.batching.batch_loader.BatchLoaderOneInput`'s
        arguments: ``streamline_group`` and ``input_group`` (required),
        and optionally the augmentations (``split_ratio``,
        ``reverse_ratio``, ``noise_gaussian_size_forward``,
        ``noise_gaussian_size_loss``) and ``seed``. Not ``input_spec``:
        the model's is used.
    model : MainModelAbstract
        Its ``input_spec`` resamples and interpolates; its ``nb_features``
        must be the input group's.
    device : str or torch.device
        The training device. On CUDA, interpolation happens in the main
        process with volumes cached on the GPU (see ``prepare_batch``); on
        CPU it happens in the DataLoader workers.

    Returns
    -------
    BatchLoaderOneInput
    """
    device = check_device(device)
    _check_params("loader_params", loader_params)
    missing = [key for key in ("streamline_group", "input_group")
               if key not in loader_params]
    if missing:
        raise DwiMLUserError(
            f"loader_params: expected the keys 'streamline_group' and "
            f"'input_group', missing: {', '.join(missing)}.")
    # Builds first: it names a group that the dataset does not hold.
    loader = BatchLoaderOneInput(
        dataset, input_spec=model.input_spec,
        interpolation_device=device if device.type == "cuda" else None,
        **loader_params)
    check_model_matches_dataset(model, dataset, loader_params["input_group"])
    dataset.check_same_grid(loader_params["input_group"],
                            loader_params["streamline_group"])
    dataset.warn_mixed_orientations(loader_params["input_group"])
    return loader


def build_trainer(model, experiments_path, experiment_name, sampler, loader,
                  trainer_params, callbacks=(), distributed=None):
    """A DWIMLTrainerOneInput from its saved parameters.

    Parameters
    ----------
    model, experiments_path, experiment_name, sampler, loader
        As :class:`~dwi_ml.training.trainer_one_input.DWIMLTrainerOneInput`
        takes them.
    trainer_params : dict
        The trainer's other arguments (``max_epochs``, ``learning_rate``,
        ``device``, ...).
    callbacks : sequence of Callback
    distributed : DistributedContext, optional

    Returns
    -------
    DWIMLTrainerOneInput
    """
    _check_params("trainer_params", trainer_params)
    check_experiment_name(experiment_name)
    return DWIMLTrainerOneInput(model, experiments_path, experiment_name,
                                sampler, loader, callbacks=callbacks,
                                distributed=distributed, **trainer_params)


def check_model_matches_dataset(model, dataset, input_group):
    """The model's nb_features must be the input group's."""
    group_idx = dataset.volume_groups.index(input_group)
    check_model_input_features(model, dataset.nb_features[group_idx],
                               input_group, dataset.hdf5_file)


def check_model_input_features(model, nb_features, input_group, hdf5_file):
    """Refuse an input group whose number of features is not the model's.

    Parameters
    ----------
    model : MainModelAbstract
    nb_features : int
        Features per voxel of the input group.
    input_group, hdf5_file : str
        Named in the message.
    """
    expected = getattr(model, "nb_features", None)
    if expected is None:
        return  # a model of your own that does not say (MainModelAbstract)
    if expected != nb_features:
        raise DwiMLUserError(
            f"input group '{input_group}' of {hdf5_file}: the model "
            f"expects {model.input_size} inputs per point "
            f"({expected} features x "
            f"{model.input_spec.neighborhood.nb_neighbours} neighbours), "
            f"found {nb_features} features.")


def nb_predictions_beyond_max_len(model, loader, split):
    """Prediction points of the longest streamline of ``split`` in the
    model's format when more than its ``max_len`` (Transformers: positions
    it can encode), else None (None too for a model without ``max_len``)."""
    max_len = getattr(model, "max_len", None)
    if max_len is None:
        return None
    # Prediction points: n with EOS, n - 1 without.
    extra_point = 0 if model.add_eos else 1
    nb_predictions = loader.longest_streamline(
        split, max_len + extra_point) - extra_point
    return nb_predictions if nb_predictions > max_len else None


def refuse_beyond_max_len(model, loader, split, where):
    """Refuse, before any batch, streamlines of ``split`` with more
    prediction points than the model's ``max_len``; the message starts with
    ``where`` (what the user gave: '--subset testing', a file and subject)."""
    nb_predictions = nb_predictions_beyond_max_len(model, loader, split)
    if nb_predictions is not None:
        raise DwiMLUserError(
            f"{where}: expected streamlines of at most the model's "
            f"max_len={model.max_len} prediction points, found "
            f"{nb_predictions} (in the model's format).")


def check_streamlines_not_too_short(model, loader, split):
    """Refuse streamlines of ``split`` with no prediction point in the
    model's format: fewer than 2 points without EOS (n - 1 directions),
    none with EOS. The model would refuse them at their first batch,
    without naming the file or the subject."""
    add_eos = getattr(model, "add_eos", None)
    if add_eos is None:  # not a direction-getter model
        return
    found = loader.streamlines_shorter_than(split, 1 if add_eos else 2)
    if found is None:
        return
    subject_id, ids = found
    need = ("1 point in the model's format (a model with EOS predicts n "
            "directions)" if add_eos else "2 points in the model's format (a "
            "model without EOS predicts n - 1 directions)")
    raise DwiMLUserError(
        f"HDF5 file {loader.dataset.hdf5_file}, subject '{subject_id}', "
        f"group '{loader.streamline_group}': expected {split} streamlines of "
        f"at least {need}, found {len(ids)} (streamline ids: "
        f"{', '.join(map(str, ids[:5]))}{', ...' * (len(ids) > 5)}).")


def check_streamlines_fit_model(model, loader,
                                max_len_source="argument --max_len"):
    """Refuse, before any folder is made, training and validation
    streamlines longer than a model's ``max_len`` or too short for it; the
    model would refuse them at their first batch, possibly epochs later.
    ``max_len_source`` names where ``max_len`` comes from."""
    for split in ("training", "validation"):
        check_streamlines_not_too_short(model, loader, split)
        nb_predictions = nb_predictions_beyond_max_len(model, loader, split)
        if nb_predictions is not None:
            raise DwiMLUserError(
                f"{max_len_source}: expected at least {nb_predictions}, "
                f"the prediction points of the longest {split} streamline "
                f"in the model's format, found {model.max_len}.")


def run_experiment(params, make_model, experiments_path, experiment_name,
                   device, distributed, callbacks, done_message, auto_requeue,
                   before_trainer=None, after_trainer=None, argv=None):
    """Build the dataset, model, sampler, loader and trainer, train, end.

    The one sequence of the training and the resume scripts.

    Parameters
    ----------
    params : dict
        ``parameters.json``'s sections 'dataset', 'sampler', 'loader' and
        'trainer' (the trainer's without its device; 'dataset' gets the
        file's ``fingerprint`` when it has none, so that a resume can
        check the file), and optionally
        'tracking_validation' (see
        :mod:`dwi_ml.tracking.tracking_validation_args`), saved as given:
        its callbacks come in ``callbacks`` (training does not import
        tracking); and 'pretrained' (see :mod:`dwi_ml.training.pretrained`),
        whose ``valid_loss`` is computed here when missing.
    make_model : callable
        ``make_model(dataset)`` returns the model (new, or the checkpoint's).
    experiments_path, experiment_name : str
    device : torch.device
    distributed : DistributedContext
    callbacks : sequence of Callback
        Added after :class:`~dwi_ml.training.copy_previous.CopyPreviousBaseline`,
        which every run has (and
        :class:`~dwi_ml.training.pretrained.PretrainedBaseline` with
        'pretrained').
    done_message : callable
        ``done_message(trainer)``: the line logged at the end of the run.
    auto_requeue : bool
        See :func:`dwi_ml.training.preemption.end_run`.
    before_trainer, after_trainer : callable, optional
        Called with no argument before the trainer is built (e.g. to clear
        the experiment folder) and with the trainer once built (e.g. to
        load its checkpoint).
    argv : list of str, optional
        The command line, recorded in ``runs.json`` with the rest of this
        segment's provenance (:mod:`dwi_ml.training.run_history`).
    """
    if "fingerprint" not in params["dataset"]:
        params["dataset"]["fingerprint"] = compute_hdf5_fingerprint(
            params["dataset"]["hdf5_file"])
    dataset = build_dataset(params["dataset"])
    model = make_model(dataset)
    sampler = build_sampler(dataset, params["sampler"], distributed.rank,
                            distributed.world_size)
    loader = build_loader(dataset, params["loader"], model, device)
    pretrained = params.get("pretrained")
    check_streamlines_fit_model(model, loader, (
        f"max_len of the --pretrained model ({pretrained['experiment']}; "
        "fixed with the model)" if pretrained else "argument --max_len"))
    if before_trainer is not None:
        before_trainer()
    # Imported here: copy_previous reads this module (through evaluation).
    from dwi_ml.training.copy_previous import CopyPreviousBaseline
    baselines = [CopyPreviousBaseline(),
                 *([PretrainedBaseline(pretrained)] if pretrained else [])]
    trainer = build_trainer(model, experiments_path, experiment_name, sampler,
                            loader, {**params["trainer"], "device": device},
                            [*baselines, *callbacks], distributed)
    if pretrained and "valid_loss" not in pretrained:
        # Once, before the first batch: the weights are still the
        # pretrained ones. A resumed run reads it from parameters.json.
        pretrained["valid_loss"] = pretrained_valid_loss(model, trainer)
    if after_trainer is not None:
        after_trainer(trainer)
    previous = previous_parameters(trainer)
    written = trainer.save_parameters({
        **{key: params[key] for key in ("dataset", "sampler", "loader")},
        "tracking_validation": params.get("tracking_validation"),
        **({"pretrained": pretrained} if pretrained else {})})
    with recorded_segment(trainer, argv, written, previous):
        trainer.train_and_validate()
    end_run(trainer, experiments_path, experiment_name, done_message(trainer),
            auto_requeue)
