"""Continue a dwi_ml training from its last checkpoint.

The run restarts at the epoch after the last complete one, with the same
model, optimizer, scheduler, random streams, sampler and logs: on CPU the
result is the same as if it had never stopped. Use --new_max_epochs to train
longer than planned, --new_patience to loosen early stopping, --hdf5_file if
the data moved. The HDF5 file must be the one the experiment was trained on
(same subjects, groups, shapes and creation attributes, as recorded in its
parameters.json); --accept_different_hdf5 resumes on another one.
parameters.json then holds the new values; the experiment's runs.json
records each resume, with the values it replaced.
"""
import logging
import os
import sys

from dwi_ml.data.hdf5.fingerprint import (
    compute_hdf5_fingerprint,
    first_fingerprint_difference,
    streamline_format_differences,
)
from dwi_ml.io_utils.arg_checks import check_device, check_int_options
from dwi_ml.io_utils.atomic import folder_version
from dwi_ml.io_utils.errors import DwiMLUserError, count_of, script_entry_point
from dwi_ml.io_utils.experiment_layout import (
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    USE_BEST_MODEL_HINT,
    checkpoint_model_dir,
    has_checkpoint,
    load_checkpoint_state,
    read_parameters,
)
from dwi_ml.io_utils.experiment_lock import (
    check_experiment_writable,
    run_locked,
    start_resumed_experiment,
)
from dwi_ml.io_utils.manifest import verify_manifest
from dwi_ml.io_utils.output_folders import folder_kind
from dwi_ml.io_utils.reference_options import RESUME_REFERENCE_OPTIONS
from dwi_ml.io_utils.script_args import (
    add_verbose_arg,
    check_inputs_exist,
    make_parser,
    parse_script_args,
)
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.monitoring.monitoring_args import (
    add_comet_args,
    comet_is_requested,
    make_comet_callback,
)
from dwi_ml.tracking.tracking_validation import tracking_validation_callbacks
from dwi_ml.training.cpu_threads import cap_workers, set_cpu_threads
from dwi_ml.training.distributed import (
    barrier,
    cleanup_distributed,
    init_distributed,
)
from dwi_ml.training.epoch_position import EpochPosition
from dwi_ml.training.experiment_builder import check_hdf5_groups, run_experiment
from dwi_ml.training.interruptions import early_stop_signals_recorded
from dwi_ml.training.preemption import (
    add_interruption_args,
    interruption_params,
)
from dwi_ml.training.run_history import command_line

PROGRAM = "resume_training_from_checkpoint.py"


def build_parser():
    """The argument parser of resume_training_from_checkpoint.py."""
    parser = make_parser(__doc__)
    parser.add_argument("experiments_path", help="Parent folder of experiments.")
    parser.add_argument("experiment_name", help="The experiment to continue.")
    group = parser.add_argument_group("Changes on resume")
    group.add_argument("--new_max_epochs", type=int,
                       help="Train up to this many epochs in all (from a "
                            "checkpoint inside epoch E, at least E + 1: the "
                            "resume finishes that epoch); cosine "
                            "and onecycle schedules then follow the curve "
                            "of a run planned for this many, from the end of "
                            "the epoch in progress (default: the "
                            "experiment's max_epochs).")
    group.add_argument("--new_patience", type=int,
                       help="New early-stopping patience, in epochs. Default: "
                            "the saved one.")
    group.add_argument("--hdf5_file", help="New location of the HDF5 file. "
                       "Default: the saved path.")
    group.add_argument("--accept_different_hdf5", action="store_true",
                       help="Resume even if the HDF5 file differs from the "
                            "one the experiment was trained on.")
    group.add_argument("--device", help="'cpu' or 'cuda[:N]' (default: as saved).")
    group.add_argument("--nb_cpu_threads", type=int,
                       help="torch threads of the main process (default: "
                            "on CPU, the run's own count, which keeps its "
                            "float rounding, whatever OMP_NUM_THREADS says "
                            "(torchrun sets it to 1); a warning when it is "
                            "more than the cores left by the workers and "
                            "other ranks; else OMP_NUM_THREADS when set, "
                            "else those cores).")
    group.add_argument("--nb_workers", type=int,
                       help="DataLoader workers (default: as saved).")
    add_verbose_arg(parser)
    add_interruption_args(parser, for_resume=True)
    add_comet_args(parser)
    return parser


def check_same_hdf5(dataset_params, experiment_dir, accept_different):
    """Compare the HDF5 file with the fingerprint saved at training time.

    Stores the file's current fingerprint in ``dataset_params``. Without a
    saved fingerprint (experiments made before it existed), warns only.

    Raises
    ------
    DwiMLUserError
        The file differs and ``accept_different`` is False.
    """
    hdf5_file = dataset_params["hdf5_file"]
    found = compute_hdf5_fingerprint(hdf5_file)
    saved = dataset_params.get("fingerprint")
    dataset_params["fingerprint"] = found
    if saved is None:
        logging.warning("Experiment '%s' has no fingerprint of its training "
                        "HDF5 file (made by an older dwi_ml): '%s' is not "
                        "checked against it.", experiment_dir, hdf5_file)
        return
    difference = first_fingerprint_difference(saved, found)
    if difference is None:
        return
    detail = f"first difference: {difference}"
    # A changed step size changes what the model learns: said first.
    formats = streamline_format_differences(saved, found)
    if formats:
        detail = ("its streamlines were stored with " + ", ".join(
            f"{key} {new}, the training file's with {key} {old}"
            for key, (old, new) in formats.items())
            + "; a model without its own --step_size, --nb_points or "
            "--compress trains on them as stored; " + detail)
    if not accept_different:
        raise DwiMLUserError(
            f"HDF5 file '{hdf5_file}' is not the one experiment "
            f"'{experiment_dir}' was trained on ({detail}); use "
            "resume_training_from_checkpoint.py --accept_different_hdf5 to "
            "resume on it anyway.")
    logging.warning("Resuming on a different HDF5 file '%s' (%s).",
                    hdf5_file, detail)


_FIXED_ON_RESUME = ("the optimizer and its learning-rate schedule continue "
                    "from the checkpoint; train a new experiment to change "
                    "them")
# Options of dwiml_train_model.py that a resume may be given by habit.
TRAINING_OPTIONS_ON_RESUME = {
    "--max_epochs": "use --new_max_epochs N (the new total)",
    "--patience": "use --new_patience N",
    **{option: ("a resume never deletes its experiment; start it over with "
                "dwiml_train_model.py -f") for option in ("-f", "--overwrite")},
    **{option: _FIXED_ON_RESUME for option in (
        "--learning_rate", "--lr_scheduler", "--lr_step_size", "--lr_gamma",
        "--optimizer", "--weight_decay", "--momentum")},
}


def refuse_training_options(argv):
    """Name what to give instead of a training option given to a resume.

    Raises
    ------
    DwiMLUserError
        For the first option of :data:`TRAINING_OPTIONS_ON_RESUME`, or of
        dwiml_train_model.py only, in ``argv`` (before any ``--``).
    """
    # Imported here: that script imports this one (--resume_if_exists).
    from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
    resume_options = set(build_parser()._option_string_actions)
    fixed = set(train_parser()._option_string_actions) - resume_options
    for token in argv:
        if token == "--":
            return
        option = token.partition("=")[0]
        if option in TRAINING_OPTIONS_ON_RESUME:
            raise DwiMLUserError(
                f"argument {option}: not an option of a resume: "
                f"{TRAINING_OPTIONS_ON_RESUME[option]}.")
        if option in fixed:
            raise DwiMLUserError(
                f"argument {option}: not an option of a resume: the run "
                "continues with the value saved in its parameters.json; "
                "train a new experiment to change it.")


def _no_checkpoint_message(experiment_dir):
    """Why an experiment without a checkpoint cannot be resumed, and what
    to do. With a best model, an epoch ended (its checkpoint was removed
    since): --resume_if_exists refuses to start over, and -f deletes it."""
    if os.path.exists(os.path.join(experiment_dir, BEST_MODEL_DIR)):
        return (f"experiment '{experiment_dir}' has no checkpoint to "
                f"continue, only a {BEST_MODEL_DIR}/: {USE_BEST_MODEL_HINT}, or "
                "start the experiment over with dwiml_train_model.py -f, "
                "which deletes that model.")
    return (f"experiment '{experiment_dir}' has no checkpoint to continue: "
            "its run stopped before saving one; start it over with "
            "dwiml_train_model.py -f (or --resume_if_exists).")


class ExperimentFinished(DwiMLUserError):
    """The experiment has nothing left to train (its epochs or patience
    are spent)."""


def check_new_max_epochs(new_max_epochs, state, experiment_dir):
    """Refuse a ``--new_max_epochs`` that ends before the epoch in progress.

    A checkpoint saved inside epoch E continues with the rest of E: the
    run then holds E + 1 epochs, whatever the new total. At an epoch's
    end, a total of at most the epochs done is a finished run, said
    later (:func:`_finished_message`).

    Raises
    ------
    DwiMLUserError
        The checkpoint is inside epoch E and ``new_max_epochs <= E``.
    """
    epoch = int(state["current_epoch"])
    position = EpochPosition.from_state(state.get("position"))
    if (new_max_epochs is None or position.at_epoch_start
            or new_max_epochs > epoch):
        return
    raise DwiMLUserError(
        f"--new_max_epochs: experiment '{experiment_dir}' stopped inside "
        f"epoch {epoch} ({count_of(epoch, 'epoch')} done), which a resume finishes: "
        f"expected at least {epoch + 1}, found {new_max_epochs}.")


def _epochs_done_message(experiment_dir, epochs_done):
    # Epochs done, which a smaller --new_max_epochs does not undo.
    return (f"experiment '{experiment_dir}' already finished its "
            f"{count_of(epochs_done, 'epoch')}: give --new_max_epochs "
            f"larger than {epochs_done} to train longer.")


def _refuse_if_epochs_done(state, max_epochs, experiment_dir):
    """The refusal of a run whose epochs are all done, before this resume
    warns of anything (workers, threads) or starts anything."""
    epochs_done = int(state["current_epoch"])
    if (EpochPosition.from_state(state.get("position")).at_epoch_start
            and epochs_done >= max_epochs):
        raise ExperimentFinished(_epochs_done_message(experiment_dir,
                                                      epochs_done))


def _finished_message(trainer, experiment_dir):
    if trainer.current_epoch >= trainer.max_epochs:
        return _epochs_done_message(experiment_dir, trainer.current_epoch)
    tracker = trainer.best_tracker
    return (f"experiment '{experiment_dir}' stopped early: patience "
            f"({count_of(tracker.patience, 'epoch')}) reached at epoch "
            f"{trainer.current_epoch - 1}, best epoch {tracker.best_epoch}; "
            "give a larger --new_patience to continue.")


@script_entry_point
def main(argv=None):
    """Entry point of resume_training_from_checkpoint.py."""
    argv = sys.argv[1:] if argv is None else argv
    refuse_training_options([str(arg) for arg in argv])
    args = parse_script_args(build_parser(), argv,
                             reference_options=RESUME_REFERENCE_OPTIONS)
    resume_from_args(args)


def resume_from_args(args, callbacks=()):
    """Rebuild the experiment from its folder and train on, holding its
    lock; ``callbacks`` are added to the trainer's."""
    with early_stop_signals_recorded():
        return run_locked(args, _resume, callbacks)


def _warn_if_best_model_damaged(experiment_dir):
    """A resume replaces best_model/ only at its next best epoch: a damaged
    one would otherwise be left, unsaid, at the end of the run."""
    folder = os.path.join(experiment_dir, BEST_MODEL_DIR)
    if not os.path.isdir(folder):
        return
    try:
        verify_manifest(folder)
    except DwiMLUserError as error:
        logging.warning("%s; the run goes on, and replaces it at its next "
                        "best epoch only.", str(error).rstrip("."))


def _resume(args, callbacks, lock):
    experiment_dir = os.path.join(args.experiments_path, args.experiment_name)
    check_int_options(args, {"new_max_epochs": 1, "new_patience": 1,
                             "nb_cpu_threads": 1, "nb_workers": 0})
    check_inputs_exist(experiment_dir, what="experiment")
    check_experiment_writable(experiment_dir)
    lock.refuse_if_held()
    if (folder_kind(experiment_dir) == "experiment"
            and not has_checkpoint(experiment_dir)):
        raise DwiMLUserError(_no_checkpoint_message(experiment_dir))
    params = read_parameters(experiment_dir, ("dataset", "sampler", "loader",
                                              "trainer"))
    # Imported here: that script imports this one (--resume_if_exists).
    from dwi_ml.cli.dwiml_train_model import check_saved_sections
    check_saved_sections(params, experiment_dir)
    saved_version = folder_version(os.path.join(experiment_dir,
                                                CHECKPOINT_DIR))
    state = load_checkpoint_state(experiment_dir)
    check_new_max_epochs(args.new_max_epochs, state, experiment_dir)
    _warn_if_best_model_damaged(experiment_dir)
    if args.hdf5_file is not None:
        params["dataset"]["hdf5_file"] = os.path.abspath(args.hdf5_file)
        check_inputs_exist(args.hdf5_file, what="--hdf5_file")
    elif not os.path.exists(params["dataset"]["hdf5_file"]):
        raise DwiMLUserError(
            f"HDF5 file '{params['dataset']['hdf5_file']}' (the experiment's "
            "training data, recorded in its parameters.json) does not exist; "
            "if it moved, give its new path with --hdf5_file.")
    loader_params = params["loader"]
    check_hdf5_groups(params["dataset"]["hdf5_file"],
                      loader_params["input_group"],
                      loader_params["streamline_group"], need_training=True)
    check_same_hdf5(params["dataset"], experiment_dir,
                    args.accept_different_hdf5)
    trainer_params = interruption_params(args, params["trainer"])
    for key, value in (("max_epochs", args.new_max_epochs),
                       ("patience", args.new_patience),
                       ("device", args.device),
                       ("nb_workers", args.nb_workers)):
        if value is not None:
            trainer_params[key] = value
    _refuse_if_epochs_done(state, trainer_params["max_epochs"],
                           experiment_dir)

    # A GPU experiment resumed on a CPU machine fails here with its saved
    # device: the message says where it comes from.
    check_device(trainer_params["device"], "--device" if args.device else (
        f"--device (default: '{trainer_params['device']}', saved in "
        "parameters.json)"))
    distributed, device = init_distributed(trainer_params["device"])
    if distributed.is_main_process:
        start_resumed_experiment(lock)
    barrier()
    if folder_version(os.path.join(experiment_dir, CHECKPOINT_DIR)) \
            != saved_version:
        # Another run of this experiment (a second copy of the job) saved
        # it between the checks and the lock: continue from its save.
        logging.warning("Experiment '%s' was saved by another run while this "
                        "one started: continuing from its latest checkpoint.",
                        experiment_dir)
        state = load_checkpoint_state(experiment_dir)
        check_new_max_epochs(args.new_max_epochs, state, experiment_dir)
    trainer_params["nb_workers"] = cap_workers(trainer_params["nb_workers"])
    # A GPU run's thread count says nothing of its float rounding, nor one
    # of another number of ranks (its numbers change anyway; its threads
    # would oversubscribe the cores).
    on_cpu = all(str(value).startswith("cpu") for value in (
        device, params["trainer"].get("device", "cpu")))
    same_ranks = int((state.get("sampler") or {}).get(
        "world_size", distributed.world_size)) == distributed.world_size
    set_cpu_threads(args.nb_cpu_threads, trainer_params["nb_workers"],
                    state.get("cpu_threads") if on_cpu and same_ranks
                    else None)
    # Checkpoints of older versions kept the Comet key at the top level.
    comet_key = ((state.get("callbacks") or {}).get("comet") or {}).get(
        "experiment_key", state.get("comet_key"))
    comet = (make_comet_callback(args, experiment_dir,
                                 resumed_key=state.get("comet_key"))
             if distributed.is_main_process else None)
    if (distributed.is_main_process and comet_key
            and not comet_is_requested(args)):
        logging.warning(
            "Experiment '%s' was logged to Comet (experiment %s); this resume "
            "is not: give --comet_offline_dir DIR, or --comet_workspace and "
            "--comet_project, to continue that experiment.", experiment_dir,
            comet_key)

    def load_model(dataset):
        return load_model_from_params_and_state(
            checkpoint_model_dir(experiment_dir), device)

    def load_checkpoint(trainer):
        trainer.load_checkpoint(state)
        if trainer.is_finished():
            cleanup_distributed(trainer)
            raise ExperimentFinished(_finished_message(trainer,
                                                       experiment_dir))

    run_experiment(
        {**params, "trainer": trainer_params}, load_model,
        args.experiments_path, args.experiment_name, device, distributed,
        [*tracking_validation_callbacks(params.get("tracking_validation")),
         *callbacks, *([comet] if comet else [])],
        lambda trainer: (
            f"Experiment {experiment_dir} resumed and saved "
            f"({trainer.stopped_reason}; best epoch "
            f"{trainer.best_tracker.best_epoch}, "
            f"{trainer.best_metric_name} "
            f"{trainer.best_tracker.best_loss:.5f})."),
        args.auto_requeue, after_trainer=load_checkpoint,
        argv=getattr(args, "command_line", None) or command_line(PROGRAM,
                                                                  args))


if __name__ == "__main__":
    main()
