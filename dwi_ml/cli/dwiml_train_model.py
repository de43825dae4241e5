"""Train a Learn2track or Transformer model on an HDF5 dataset.

The experiment folder EXPERIMENTS_PATH/EXPERIMENT_NAME receives
parameters.json (everything needed to rebuild the run), runs.json (how
each segment of the run was made: command line, versions, host, threads,
how it ended), best_model/, a checkpoint/ after every epoch and logs/*.npy.
A killed run continues exactly with resume_training_from_checkpoint.py.
Under torchrun, batch sizes are global: each batch is split across the
ranks.
"""
import logging
import os

from dwi_ml.batching.batch_loader import (
    LOADER_OPTIONS,
    add_loader_args,
    loader_options_from_args,
)
from dwi_ml.batching.batch_sampler import add_sampler_args
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.io_utils.arg_checks import (
    check_count_or_size,
    check_device,
    check_fraction,
    check_int_options,
    check_seed,
)
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.experiment_layout import (
    BEST_MODEL_DIR,
    PARAMETERS_FILE,
    USE_BEST_MODEL_HINT,
    has_checkpoint,
    read_parameters,
)
from dwi_ml.io_utils.experiment_lock import (
    LOCK_FILE,
    run_locked,
    start_new_experiment,
)
from dwi_ml.io_utils.output_folders import check_output_folder, folder_kind
from dwi_ml.io_utils.reference_options import TRAIN_REFERENCE_OPTIONS
from dwi_ml.io_utils.run_paths import record_input
from dwi_ml.io_utils.script_args import (
    add_overwrite_arg,
    add_verbose_arg,
    check_inputs_exist,
    make_parser,
    option_given,
    parse_script_args,
)
from dwi_ml.models.direction_getters import DG_OPTION_ARGS
from dwi_ml.models.model_io import registered_model_class
from dwi_ml.models.model_types import (
    DEFAULT_LEARNING_RATES,
    add_model_args,
    model_options_given,
    model_params_from_args,
    model_type_of,
)
from dwi_ml.monitoring.monitoring_args import add_comet_args, make_comet_callback
from dwi_ml.tracking.stopping import DEFAULT_MAX_LENGTH_MM
from dwi_ml.tracking.tracking_validation import (
    check_eos_stop_for_model,
    check_nb_prefix_points,
    tracking_validation_callbacks,
)
from dwi_ml.tracking.tracking_validation_args import (
    GENERATION,
    WHOLE_SUBJECT,
    TrackingValidationParams,
    add_tracking_validation_args,
    check_best_model_metric_option,
    check_tracking_validation_data,
    tracking_validation_params_from_args,
)
from dwi_ml.tracking.training_facts import (
    max_length_for,
    training_step_size,
    warn_if_tracking_needs_step_size,
)
from dwi_ml.training.cpu_threads import cap_workers, set_cpu_threads
from dwi_ml.training.distributed import barrier, init_distributed
from dwi_ml.training.experiment_builder import check_hdf5_groups, run_experiment
from dwi_ml.training.interruptions import early_stop_signals_recorded
from dwi_ml.training.preemption import (
    add_interruption_args,
    interruption_params,
)
from dwi_ml.training.pretrained import load_pretrained
from dwi_ml.training.random_states import seed_everything
from dwi_ml.training.run_history import command_line
from dwi_ml.training.saved_parameters import (
    check_saved_parameters,
    check_saved_section,
)
from dwi_ml.training.trainer_args import add_trainer_args, check_trainer_args
from dwi_ml.training.training_file import (
    grids_unlike_training,
    use_training_streamline_format,
    warn_if_input_prepared_differently,
)

PROGRAM = "dwiml_train_model.py"


def build_parser():
    """The argument parser of dwiml_train_model.py."""
    parser = make_parser(__doc__)
    parser.add_argument("experiments_path", help="Parent folder of experiments.")
    parser.add_argument("experiment_name", help="Name of this experiment's folder.")
    parser.add_argument("hdf5_file",
                        help="HDF5 file made by dwiml_create_hdf5_dataset.py.")
    parser.add_argument("input_group", help="Volume group given to the model.")
    parser.add_argument("streamline_group", help="Streamline group to learn.")

    data = parser.add_argument_group("Data")
    data.add_argument("--lazy", action="store_true",
                      help="Read subjects on demand (bounded RAM).")
    data.add_argument("--cache_size", type=int, default=None,
                      help="Lazy mode: number of volumes kept in RAM. Default: "
                           "no bound on the number (1 GiB in all, see "
                           "docs/dataset.md).")

    add_sampler_args(parser)
    add_loader_args(parser)
    add_model_args(parser)
    pretrained = parser.add_argument_group(
        "Fine-tuning",
        "Start from a trained model instead of random weights. Its type, "
        "options (format, neighbourhood, layers, direction getter) and "
        "weights are taken: no model option may be given. Data, "
        "augmentation and trainer options are this command line's; the "
        "run logs pretrained_valid_loss, the starting model's loss on this "
        "run's validation set (docs/training.md).")
    pretrained.add_argument(
        "--pretrained", metavar="EXPERIMENT",
        help="Experiment folder whose best model starts this run.")
    pretrained.add_argument(
        "--pretrained_use_latest_epoch", action="store_true",
        help="Start from its checkpoint's model instead of its best model.")
    add_trainer_args(parser)
    add_tracking_validation_args(parser)

    run = parser.add_argument_group("Run")
    run.add_argument("--seed", type=int, default=1234,
                     help="Seed of the initial weights, the batches and "
                          "the augmentations.")
    run.add_argument("--nb_workers", type=int, default=0,
                     help="DataLoader worker processes, for training "
                          "and as many for validation (each with its own "
                          "lazy cache). They pay off with large batches "
                          "(~1000 streamlines) or lazy data on cores the "
                          "main process does not use (bench/README.md, "
                          "'Workers').")
    run.add_argument("--nb_cpu_threads", type=int,
                     help="torch threads of the main process (default: "
                          "OMP_NUM_THREADS when set, which torchrun sets to "
                          "1 with several ranks per node; else the cores "
                          "left by the workers and other ranks).")
    run.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]'.")
    run.add_argument(
        "--resume_if_exists", action="store_true",
        help="If the experiment already has a checkpoint, resume it (as "
             "resume_training_from_checkpoint.py would, with its saved "
             "options, naming in a warning the options given here with "
             "other values (trainer, model, data options alike); "
             "--max_time, --checkpoint_every_* and Comet options given "
             "here apply, and HDF5_FILE, which may have moved if it "
             "is the same data) instead of refusing; if it has none (its "
             "run was killed before saving one) nor a best model, start "
             "it over; if its run had ended, say so and exit 0: one "
             "command line that starts or continues a run, e.g. in a "
             "requeued SLURM job (default: off).")
    add_verbose_arg(run)
    add_overwrite_arg(run)
    add_interruption_args(parser)
    add_comet_args(parser)
    return parser


_TRAINER_ARGS = (
    "optimizer", "learning_rate", "weight_decay", "momentum", "lr_scheduler",
    "lr_step_size", "lr_gamma", "max_epochs", "patience", "patience_delta",
    "max_batches_per_epoch_training", "max_batches_per_epoch_validation",
    "clip_grad", "grad_accumulation_steps", "nb_workers", "device",
    "mixed_precision", "seed", "best_model_metric")


_EXISTS_HINT = ", or resume_training_from_checkpoint.py to continue it"
_NO_CHECKPOINT_HINT = (" (it has no checkpoint to continue: its run stopped "
                       "before saving one)")
_NO_CHECKPOINT_BEST_HINT = (
    f" and lose its {BEST_MODEL_DIR}/ (it has no checkpoint to continue, "
    f"only that model: to keep it, {USE_BEST_MODEL_HINT})")

# Smallest valid value of each integer option.
INT_MINIMUMS = {
    "cache_size": 0, "nb_subjects_per_batch": 1, "cycles": 1, "nb_points": 2,
    "nb_previous_dirs": 0, "neighborhood_radius": 1,
    "input_embedding_size": 1, "cnn_nb_filters": 1,
    "prev_dirs_embedding_size": 1, "rnn_layer_sizes": 1, "lr_step_size": 1,
    "max_epochs": 1, "patience": 1, "max_batches_per_epoch_training": 1,
    "max_batches_per_epoch_validation": 1, "grad_accumulation_steps": 1,
    "seed": 0, "nb_workers": 0, "nb_cpu_threads": 1}


def _check_simple_args(args):
    """Refuse bad option values before any work, naming the options.

    The same :mod:`dwi_ml.io_utils.arg_checks` functions check them again
    when the components are built; checking first leaves the experiment
    folder untouched and loads no data.
    """
    _refuse_model_options_with_pretrained(args)
    check_device(args.device, "--device")
    check_int_options(args, INT_MINIMUMS)
    _refuse_options_that_do_not_apply(args)
    check_seed("--seed", args.seed)
    loader_options_from_args(args)
    if args.dropout is not None:
        check_fraction("--dropout", args.dropout)
    tracking_validation_params_from_args(args)


def _refuse_model_options_with_pretrained(args):
    """Refuse any model option with --pretrained, before the options of
    the default --model_type are checked (they would name it)."""
    if args.pretrained is None:
        return
    given = model_options_given(args)
    if given:
        raise DwiMLUserError(
            f"argument {given[0]}: the model comes from --pretrained "
            f"'{args.pretrained}' (its type, options and weights); expected "
            f"no model option, found {', '.join(given)}.")


# The options of one tracking validation mode only (see docs/tracking.md).
_TRACKING_MODE_OPTIONS = {
    "tracking_validation_nb_streamlines": GENERATION,
    "tracking_validation_nb_points": GENERATION,
    "tracking_validation_nb_seeds": WHOLE_SUBJECT,
    "tracking_validation_seeding_mask_group": WHOLE_SUBJECT,
    "tracking_validation_bundle_key": WHOLE_SUBJECT}
# The learning-rate schedulers that read each option.
_SCHEDULER_OPTIONS = {"lr_step_size": ("step",),
                      "lr_gamma": ("step", "plateau")}


def _refuse_options_that_do_not_apply(args):
    """Refuse an option given (see :func:`option_given`) where nothing
    reads it: the run would silently ignore it.

    Raises
    ------
    DwiMLUserError
        A tracking validation option with tracking validation off or of
        the other mode, --momentum with another optimizer than SGD,
        --cache_size without --lazy, a scheduler option of another
        scheduler, or --eos_only_at_fibre_ends without --split_ratio.
    """
    parser = build_parser()

    def given(name):
        return option_given(args, name, parser.get_default(name))

    tracking_options = [action.dest for action in parser._actions
                        if action.dest.startswith("tracking_validation_")
                        and action.dest != "tracking_validation_every"]
    for name in tracking_options:
        if not given(name):
            continue
        value = getattr(args, name)
        if not args.tracking_validation_every:
            raise DwiMLUserError(
                f"argument --{name}: an option of --tracking_validation_every"
                f" N, found {value!r} with tracking validation off.")
        mode = _TRACKING_MODE_OPTIONS.get(name)
        if mode is not None and args.tracking_validation_mode != mode:
            raise DwiMLUserError(
                f"argument --{name}: an option of --tracking_validation_mode "
                f"{mode}, found {value!r} with --tracking_validation_mode "
                f"{args.tracking_validation_mode}.")
    if given("momentum") and args.optimizer != "SGD":
        raise DwiMLUserError(
            f"argument --momentum: an option of --optimizer SGD, found "
            f"{args.momentum!r} with --optimizer {args.optimizer}.")
    if given("cache_size") and not args.lazy:
        raise DwiMLUserError(
            f"argument --cache_size: an option of --lazy, found "
            f"{args.cache_size!r} without --lazy.")
    for name, schedulers in _SCHEDULER_OPTIONS.items():
        if given(name) and args.lr_scheduler not in schedulers:
            raise DwiMLUserError(
                f"argument --{name}: an option of --lr_scheduler "
                f"{' or '.join(schedulers)}, found {getattr(args, name)!r} "
                f"with --lr_scheduler {args.lr_scheduler}.")
    # Only split pieces end at a cut; without --add_eos, the direction
    # getter's check names that instead.
    if (args.add_eos and args.eos_only_at_fibre_ends
            and not args.split_ratio):
        raise DwiMLUserError(
            "argument --eos_only_at_fibre_ends: an option of --split_ratio "
            "(> 0), found without --split_ratio.")


def collect_params(args):
    """The parameters.json sections, from the parsed arguments."""
    as_count = args.batch_size_units == "nb_streamlines"
    batch_size = {name: check_count_or_size(f"--{name}", getattr(args, name),
                                            as_count)
                  for name in ("batch_size_training", "batch_size_validation")}
    model_type, model_params = model_params_from_args(args)
    return {
        "dataset": {"hdf5_file": os.path.abspath(args.hdf5_file),
                    "lazy": args.lazy, "cache_size": args.cache_size},
        "sampler": {"streamline_group": args.streamline_group,
                    "batch_size_units": args.batch_size_units,
                    "nb_subjects_per_batch": args.nb_subjects_per_batch,
                    "cycles": args.cycles, "seed": args.seed, **batch_size},
        "loader": {"streamline_group": args.streamline_group,
                   "input_group": args.input_group,
                   **{name: getattr(args, name) for name in LOADER_OPTIONS},
                   "seed": args.seed},
        "model_type": model_type,
        "model": model_params,
        "trainer": {name: getattr(args, name) for name in _TRAINER_ARGS}
        | {"learning_rate": (DEFAULT_LEARNING_RATES[args.model_type]
                             if args.learning_rate is None
                             else args.learning_rate)},
        "tracking_validation": _as_dict(
            tracking_validation_params_from_args(args)),
    }


def _check_tracking_validation_step(params):
    """Tracking validation tracks at the training streamlines' step: refuse,
    before the folder is made, a run where that step is unknown or leaves
    no step after the generation prefixes, or an EOS threshold for a
    model without EOS (as the callback would)."""
    if params["tracking_validation"] is None:
        return
    try:
        step_size_mm = training_step_size(params["model"], params["dataset"])
    except DwiMLUserError:
        # Its message is for the tracking script (give --step_size there).
        given = [f"--{option} {params['model'][option]:g}"
                 for option in ("nb_points", "compress")
                 if params["model"].get(option) is not None]
        found = (f"streamlines of {given[0]}, which have none" if given else
                 "no --step_size, and an HDF5 whose step size is unknown")
        raise DwiMLUserError(
            "argument --tracking_validation_every: expected a step size in "
            "mm to track at (the training streamlines'), found "
            f"{found}; train with --step_size instead, or without tracking "
            "validation.") from None
    check_eos_stop_for_model(
        params["tracking_validation"]["eos_stop"],
        (params["model"].get("dg_args") or {}).get("add_eos", False))
    check_nb_prefix_points(
        params["tracking_validation"]["nb_points"],
        max_length_for(params["model"].get("max_len"), step_size_mm,
                       DEFAULT_MAX_LENGTH_MM), step_size_mm)


def _as_dict(params):
    return None if params is None else params.as_dict()


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_train_model.py."""
    parser = build_parser()
    args = parse_script_args(parser, argv,
                             reference_options=TRAIN_REFERENCE_OPTIONS)
    train_from_args(args)


def train_from_args(args, callbacks=()):
    """Check the arguments, build everything and train, holding the
    experiment's lock; ``callbacks`` are added to the trainer's (e.g. for
    tests or custom monitoring)."""
    with early_stop_signals_recorded():
        return run_locked(args, _train, callbacks)


def _train(args, callbacks, lock):
    if args.overwrite and args.resume_if_exists:
        # -f was silently ignored when there was a checkpoint to resume.
        raise DwiMLUserError(
            "arguments -f/--overwrite and --resume_if_exists: expected at "
            "most one (-f starts the experiment over, --resume_if_exists "
            "continues it), found both.")
    experiment_dir = os.path.join(args.experiments_path, args.experiment_name)
    resumable = has_checkpoint(experiment_dir)
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    if args.resume_if_exists and resumable:
        _warn_ignored_options(args, experiment_dir)
        try:
            return resume_cli.resume_from_args(_resume_args(args), callbacks)
        except resume_cli.ExperimentFinished as finished:
            # A requeued job whose run had ended: done, not a failure.
            logging.warning("Nothing to resume: %s", finished)
            return None
    check_inputs_exist(args.experiments_path, what="experiments_path")
    lock.refuse_if_held()
    # A run killed before its first checkpoint left nothing to continue:
    # --resume_if_exists (a requeued job) starts it over. Not one with a
    # best model: an epoch ended there (its checkpoint was removed since),
    # and starting over would delete that model.
    overwrite = args.overwrite or (
        args.resume_if_exists and os.path.isdir(experiment_dir)
        and folder_kind(experiment_dir) == "experiment"
        and not os.path.exists(os.path.join(experiment_dir, BEST_MODEL_DIR)))
    hint = (_EXISTS_HINT if resumable
            else _NO_CHECKPOINT_BEST_HINT if os.path.exists(
                os.path.join(experiment_dir, BEST_MODEL_DIR))
            else _NO_CHECKPOINT_HINT)
    check_output_folder(experiment_dir, "experiment", overwrite,
                        what="experiment", hint=hint, ignore=(LOCK_FILE,))
    _check_simple_args(args)
    check_hdf5_groups(args.hdf5_file, args.input_group, args.streamline_group,
                      need_training=True)
    params = collect_params(args)
    pretrained_model = _apply_pretrained(args, params)
    check_tracking_validation_data(
        args.hdf5_file, args.streamline_group,
        tracking_validation_params_from_args(args), args.best_model_metric)
    # The model's format and neighbourhood, validated by the model's spec.
    InputSpec.from_options(**{name: params["model"][name]
                              for name in InputSpec().as_options()})
    params["trainer"].update(interruption_params(args))
    # The trainer checks them again; here, before the folder is created.
    check_trainer_args(params["trainer"])
    params["dataset"]["fingerprint"] = compute_hdf5_fingerprint(args.hdf5_file)
    _check_tracking_validation_step(params)
    distributed, device = init_distributed(args.device)
    params["trainer"]["nb_workers"] = cap_workers(
        params["trainer"]["nb_workers"])
    set_cpu_threads(args.nb_cpu_threads, params["trainer"]["nb_workers"])
    comet = (make_comet_callback(args, experiment_dir)
             if distributed.is_main_process else None)

    def make_model(dataset):
        # The model's initial weights come from torch's global generator.
        seed_everything(args.seed)
        if pretrained_model is not None:
            return pretrained_model
        group_idx = dataset.volume_groups.index(args.input_group)
        return registered_model_class(params["model_type"], "model_type")(
            nb_features=dataset.nb_features[group_idx], **params["model"])

    def clear_folder():
        # Every rank checked that the folder was free before rank 0 clears it.
        barrier()
        if distributed.is_main_process:
            # Said once every check passed (a refusal stays one line), as
            # training starts: tracking found it out only after it.
            warn_if_tracking_needs_step_size(
                params["model"], params["dataset"], args.pretrained)
            if args.pretrained is not None:
                _warn_if_grids_unlike_pretrained(args, params)
            start_new_experiment(
                lock, overwrite, hint=hint,
                check=(_start_over_if_still_unsaved
                       if overwrite and not args.overwrite else None))

    run_experiment(
        params, make_model, args.experiments_path, args.experiment_name,
        device, distributed,
        [*tracking_validation_callbacks(params.get("tracking_validation")),
         *callbacks, *([comet] if comet else [])],
        lambda trainer: (
            f"Experiment saved in {experiment_dir} ({trainer.stopped_reason}; "
            f"best epoch {trainer.best_tracker.best_epoch}, "
            f"{trainer.best_metric_name} "
            f"{trainer.best_tracker.best_loss:.5f})."),
        args.auto_requeue, before_trainer=clear_folder,
        argv=command_line(PROGRAM, args))


def _apply_pretrained(args, params):
    """With --pretrained: refuse model options, load the model, and put its
    type and options, and where it comes from, in ``params``.

    Returns
    -------
    MainModelAbstract or None
        The pretrained model, renamed to this experiment; None without
        --pretrained.
    """
    if args.pretrained is None:
        if args.pretrained_use_latest_epoch:
            raise DwiMLUserError(
                "argument --pretrained_use_latest_epoch: an option of "
                "--pretrained, found no --pretrained.")
        return None
    # Model options were refused by _check_simple_args.
    record_input(args.pretrained, "--pretrained")
    model, params["pretrained"] = load_pretrained(
        args.pretrained, args.pretrained_use_latest_epoch)
    warn_if_input_prepared_differently(model, args.pretrained, args.hdf5_file,
                                       args.input_group)
    # Fine-tuned at the step it learned, not at this file's.
    use_training_streamline_format(model, args.pretrained, args.hdf5_file)
    model.experiment_name = args.experiment_name
    params["model_type"] = type(model).__name__
    params["model"] = {name: value
                       for name, value in model.params_for_checkpoint.items()
                       if name != "nb_features"}
    if args.learning_rate is None:
        params["trainer"]["learning_rate"] = model.default_learning_rate
    return model


def _warn_if_grids_unlike_pretrained(args, params):
    """Fine-tuning subjects on grids unlike the pretrained model's training
    subjects' teach it other directions (see grids_unlike_training)."""
    fingerprint = params["dataset"]["fingerprint"]
    grids_unlike_training(
        args.pretrained, [subject for split in ("training", "validation")
                          for subject in fingerprint["splits"][split]],
        args.input_group, fingerprint)


def check_saved_sections(params, experiment_dir):
    """Check the sections of an experiment's parameters.json with this
    script's options (see :mod:`dwi_ml.training.saved_parameters`)."""
    check_saved_parameters(params, experiment_dir, build_parser(),
                           INT_MINIMUMS)
    _check_saved_tracking_validation(params, experiment_dir)


def _check_saved_tracking_validation(params, experiment_dir):
    """Refuse, on resume, a ``tracking_validation`` section of
    parameters.json that builds no :class:`TrackingValidationParams`, or a
    best-model metric that it does not write."""
    tracking = check_saved_section(
        params, experiment_dir, "tracking_validation",
        TrackingValidationParams,
        lambda values: TrackingValidationParams(**values))
    metric = (params.get("trainer") or {}).get("best_model_metric")
    if metric is None:
        return
    try:
        check_best_model_metric_option(metric, tracking)
    except DwiMLUserError as error:
        raise DwiMLUserError(
            f"{PARAMETERS_FILE} of {experiment_dir}: trainer."
            f"best_model_metric: {error}") from None


def _warn_ignored_options(args, experiment_dir):
    """--resume_if_exists continues with the saved options: name those
    given on this command line with another value (a job script given a
    larger --max_epochs or other layers, say, then requeued)."""
    params = read_parameters(experiment_dir, ("dataset", "sampler", "loader",
                                              "trainer"))
    check_saved_sections(params, experiment_dir)
    ignored = []
    # Typed on the command line; args built in code: those off default.
    given = getattr(args, "options_given", None)
    for action in build_parser()._actions:
        value = getattr(args, action.dest, action.default)
        if given is not None:
            typed = action.dest in given
        else:
            typed = value != action.default or action.required
        if (action.dest in _APPLIED_ON_RESUME or action.dest == "help"
                or not typed):
            continue
        saved = _saved_value(action, params)
        if saved is not _NOT_SAVED and value != saved:
            name = (action.option_strings or [action.dest])[0]
            shown = "" if action.nargs == 0 else f" {_option_text(action, value)}"
            ignored.append(f"{name}{shown} (saved: "
                           f"{_option_text(action, saved)})")
    if ignored:
        logging.warning(
            "--resume_if_exists continues experiment '%s' with its saved "
            "options; ignored: %s. To train longer or with another patience,"
            " run resume_training_from_checkpoint.py with --new_max_epochs "
            "or --new_patience; to change the others, train a new "
            "experiment (-f starts this one over).", experiment_dir,
            ", ".join(ignored))


_NOT_SAVED = object()
def _start_over_if_still_unsaved(experiment_dir):
    """--resume_if_exists found nothing saved to continue: under the lock,
    check that no other run of the experiment (a second copy of the job)
    saved one while this one loaded its data, before starting it over."""
    if has_checkpoint(experiment_dir) or os.path.exists(
            os.path.join(experiment_dir, BEST_MODEL_DIR)):
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' was saved by another run while "
            "this one loaded its data (a second copy of the job?); nothing "
            "was changed: run the same command again to resume it.")
    logging.warning("Experiment '%s' has no checkpoint (its run stopped "
                    "before saving one): starting it over.", experiment_dir)


# Options that --resume_if_exists passes on to the resume (_resume_args).
_APPLIED_ON_RESUME = (
    "experiments_path", "experiment_name", "hdf5_file", "verbose",
    "resume_if_exists", "nb_cpu_threads", "max_time",
    "checkpoint_every_n_batches", "checkpoint_every_minutes", "auto_requeue",
    "comet_workspace", "comet_project", "comet_offline_dir",
    "comet_log_every")
# The direction getter's options saved in the model's dg_args.
_DG_OPTIONS = {"add_eos": "add_eos", "eos_weight": "eos_weight",
               "eos_only_at_fibre_ends": "eos_only_at_fibre_ends",
               **DG_OPTION_ARGS}


def _saved_value(action, params):
    """The value of option ``action`` that the saved sections hold, or
    _NOT_SAVED for an option they do not record."""
    dest = action.dest
    model = params.get("model") or {}
    if dest == "model_type" and model_type_of(params.get("model_type")):
        return model_type_of(params["model_type"])
    for section in ("dataset", "sampler", "loader", "trainer"):
        if dest in params[section]:
            return params[section][dest]
    if dest in model:
        return model[dest]
    if dest in _DG_OPTIONS and isinstance(model.get("dg_args"), dict):
        return model["dg_args"].get(_DG_OPTIONS[dest], action.default)
    if dest.startswith("no_") and f"use_{dest[3:]}" in model:
        return not model[f"use_{dest[3:]}"]
    return _NOT_SAVED


def _option_text(action, value):
    """A value as typed: '32 32' for a list, 'given' for a flag."""
    if action.nargs == 0:
        return "given" if value != action.default else "not given"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _resume_args(args):
    """resume_training_from_checkpoint.py's arguments for --resume_if_exists."""
    # The HDF5 file of this command line: a job that copies the data to
    # its node's scratch each time gives a new path (its fingerprint is
    # still checked against the experiment's).
    resume_args = resume_cli.build_parser().parse_args(
        [args.experiments_path, args.experiment_name, "-v", args.verbose,
         "--hdf5_file", args.hdf5_file])
    for name in ("nb_cpu_threads", "max_time", "checkpoint_every_n_batches",
                 "checkpoint_every_minutes", "auto_requeue", "comet_workspace",
                 "comet_project", "comet_offline_dir", "comet_log_every"):
        setattr(resume_args, name, getattr(args, name))
    # The run's history records the command line that was typed.
    resume_args.command_line = command_line(PROGRAM, args)
    return resume_args


if __name__ == "__main__":
    main()
