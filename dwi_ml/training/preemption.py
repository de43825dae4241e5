"""Pre-emption options of the training scripts, and the end of a run.

``dwiml_train_model.py`` and ``resume_training_from_checkpoint.py`` share
the 'Interruptions' argument group and :func:`end_run`: a run stopped by a
signal or ``--max_time`` prints one line saying how to resume, optionally
requeues its SLURM job, and exits with
:data:`~dwi_ml.training.interruptions.EXIT_STATUS_INTERRUPTED`.
"""
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys

from dwi_ml.io_utils.arg_checks import check_int, check_positive_float
from dwi_ml.io_utils.errors import running_script
from dwi_ml.launcher import RECORDING_SCRIPTS
from dwi_ml.training.distributed import cleanup_distributed
from dwi_ml.training.interruptions import (
    EXIT_STATUS_INTERRUPTED,
    ignore_stop_signals,
    parse_duration,
)

logger = logging.getLogger(__name__)

INTERRUPTIONS_DESCRIPTION = f"""\
SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 stop the run cleanly: the current
optimizer step finishes, a checkpoint of the exact position inside the epoch
is written, one line says how to resume, and the process exits with status
{EXIT_STATUS_INTERRUPTED} (0 means the run finished). A resumed run
continues as if it had never stopped. See docs/slurm.md."""


def add_interruption_args(parser, for_resume=False):
    """Add the 'Interruptions and checkpoints' group.

    On resume, every option defaults to the value saved with the run.
    """
    group = parser.add_argument_group("Interruptions and checkpoints",
                                      INTERRUPTIONS_DESCRIPTION)

    def default(when_training):
        if for_resume:
            return "as saved with the run; 'none' removes it"
        return (f"{when_training}; with --resume_if_exists, as saved with "
                "the run, 'none' removing it")

    group.add_argument(
        "--max_time", metavar="[DD:]HH:MM:SS", type=_or_none(str),
        help="Stop with a checkpoint before this much time has passed since "
             "this process started training, keeping a margin of twice the "
             "longest step plus the longest checkpoint write and epoch end "
             "(tracking validation; docs/slurm.md) (default: "
             f"{default('no limit')}).")
    group.add_argument(
        "--checkpoint_every_n_batches", type=_or_none(int), metavar="N",
        help="Also write a mid-epoch checkpoint every N training batches "
             "(rounded up to whole --grad_accumulation_steps groups) "
             f"(default: {default('only at the end of each epoch')}).")
    group.add_argument(
        "--checkpoint_every_minutes", type=_or_none(float), metavar="M",
        help="Also write a mid-epoch checkpoint when M minutes have passed "
             f"since the last one (default: {default('never')}).")
    group.add_argument(
        "--auto_requeue", action="store_true",
        help="After a stop by a signal or --max_time, when SLURM_JOB_ID is "
             "set and scontrol is on PATH, requeue the job with 'scontrol "
             "requeue $SLURM_JOB_ID' (default: off).")
    if not for_resume:
        group.add_argument(
            "--deterministic", action="store_true",
            help="CUDA: use deterministic algorithms "
                 "(torch.use_deterministic_algorithms, cuDNN deterministic "
                 "without autotuning, CUBLAS_WORKSPACE_CONFIG=:4096:8). It "
                 "makes GPU runs repeatable at a cost in speed (often 10-30%%) "
                 "and fails on the rare operations without a deterministic "
                 "kernel. CPU runs are bitwise repeatable at a fixed thread "
                 "count without it (default: off).")
    return group


REMOVED = "none"


def _or_none(convert):
    """An argparse type: ``convert(text)``, or REMOVED for 'none' (which
    removes a value saved with the run)."""
    def parse(text):
        return REMOVED if text.strip().lower() == REMOVED else convert(text)
    parse.__name__ = f"{convert.__name__} or 'none'"
    return parse


def interruption_params(args, saved=None):
    """Trainer parameters from the options; None keeps ``saved`` values,
    REMOVED ('none') removes them."""
    params = dict(saved or {})
    checks = (("max_time_s", args.max_time, parse_duration),
              ("checkpoint_every_n_batches", args.checkpoint_every_n_batches,
               lambda value: check_int("--checkpoint_every_n_batches", value,
                                       1)),
              ("checkpoint_every_minutes", args.checkpoint_every_minutes,
               lambda value: check_positive_float(
                   "--checkpoint_every_minutes", value)))
    for key, value, check in checks:
        if value == REMOVED:
            params[key] = None
        elif value is not None:
            params[key] = check(value)
    if getattr(args, "deterministic", False):
        params["deterministic"] = True
    return params


def requeue_slurm_job():
    """Run ``scontrol requeue $SLURM_JOB_ID``; return True if it was asked.

    Does nothing outside a SLURM job or without ``scontrol``; a failed
    requeue is a warning, since the checkpoint is already safe.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if not job_id or scontrol is None:
        logger.warning("--auto_requeue: not requeued (SLURM_JOB_ID %s, "
                       "scontrol %s).", "set" if job_id else "unset",
                       "found" if scontrol else "not on PATH")
        return False
    result = subprocess.run([scontrol, "requeue", job_id],
                            capture_output=True, text=True)
    if result.returncode != 0:
        logger.warning("scontrol requeue %s failed: %s", job_id,
                       result.stderr.strip().splitlines()[-1:] or "")
        return False
    return True


def resume_command(experiments_path, experiment_name):
    """The command line that resumes an experiment, quoted for a shell so
    that it can be pasted as it is (paths with spaces or quotes).

    Under torchrun (``WORLD_SIZE`` above 1) it resumes with as many ranks,
    which continues exactly: on one node, a torchrun command line; over
    several, a placeholder for the job's own torchrun options.
    """
    arguments = [experiments_path, experiment_name]
    world_size = os.environ.get("WORLD_SIZE", "1")
    if not world_size.isdigit() or int(world_size) <= 1:
        return shlex.join(["resume_training_from_checkpoint.py", *arguments])
    module = shlex.join(["-m", "dwi_ml.cli.resume_training_from_checkpoint",
                         *arguments])
    if os.environ.get("LOCAL_WORLD_SIZE") == world_size:
        return (f"torchrun --standalone --nproc_per_node={world_size} "
                f"{module}")
    return f"torchrun <this job's options, {world_size} ranks> {module}"


def end_run(trainer, experiments_path, experiment_name, done_message,
            auto_requeue=False):
    """Report the end of a run; exit with status 3 if it was interrupted.

    Parameters
    ----------
    trainer : DWIMLAbstractTrainer
        After ``train_and_validate``.
    experiments_path, experiment_name : str
        For the resume command line.
    done_message : str
        Printed (by rank 0) when the run finished.
    auto_requeue : bool
        Requeue the SLURM job after an interruption.
    """
    main = trainer.is_main_process
    if not trainer.interrupted_by:
        cleanup_distributed(trainer)
        if main:
            print(done_message)
        # SIGTERM and Ctrl-C: the scripts' own word after the end (exit
        # status 143 or 130, "its outputs are complete"); SIGUSR1, a
        # cluster's warning, must not kill a finished run.
        if _process_ends_with_the_run():
            ignore_stop_signals([signal.SIGUSR1])
        return
    # Said before leaving the process group: under torchrun, the first rank
    # to exit makes the launcher stop the others.
    if main:
        requeued = auto_requeue and requeue_slurm_job()
        print(f"{trainer.stopped_reason}; checkpoint saved; "
              f"{'job requeued; ' if requeued else ''}resume with: "
              f"{resume_command(experiments_path, experiment_name)}",
              file=sys.stderr, flush=True)
    cleanup_distributed(trainer)
    # The checkpoint is saved: a second signal while the process exits
    # keeps status 3.
    if _process_ends_with_the_run():
        ignore_stop_signals()
    sys.exit(EXIT_STATUS_INTERRUPTED)


def _process_ends_with_the_run():
    """Whether this process runs a training script itself (its command,
    its scripts_python/ file or ``python -m``), so that it exits once the
    run has ended. A program that called the script's main (a notebook, a
    test) keeps its signal handlers: Ctrl-C must still interrupt it."""
    return running_script() in RECORDING_SCRIPTS
