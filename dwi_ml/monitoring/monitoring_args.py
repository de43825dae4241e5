"""Comet options of the training scripts, checked before any work."""
import os

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import refuse_inside_experiment_folders
from dwi_ml.monitoring.comet_logger import (
    CometCallback,
    check_comet_workspace,
    comet_api_key_is_set,
)

COMET_ARGS_DESCRIPTION = """\
Watch the run on Comet (comet.com). Online: give --comet_workspace and
--comet_project; the API key comes from the COMET_API_KEY variable or your
Comet config file (~/.comet.config), never from the command line, and is
never written to the experiment folder. Offline: give --comet_offline_dir;
each run (and each resume) writes a KEY*.zip archive there, to upload later
with 'comet upload ARCHIVE'. A resumed run continues the same Comet
experiment. If Comet fails during the run, one warning is printed and
training goes on with its local logs."""


def add_comet_args(parser, description=COMET_ARGS_DESCRIPTION,
                   log_every=True):
    """Add the 'Comet' argument group to a script's parser; return it.

    ``log_every`` False leaves out ``--comet_log_every`` (a script that
    does not train); :func:`check_comet_args` then takes it as 0.
    """
    group = parser.add_argument_group("Comet", description)
    group.add_argument("--comet_workspace", metavar="W",
                       help="Comet workspace (online: must exist).")
    group.add_argument("--comet_project", metavar="P",
                       help="Comet project, created by Comet if new.")
    group.add_argument("--comet_offline_dir", metavar="DIR",
                       help="Write an offline archive in DIR instead of "
                            "logging online. DIR is created if its parent "
                            "exists.")
    if log_every:
        group.add_argument("--comet_log_every", type=int, metavar="N",
                           help="Also log the training loss every N batches "
                                "(0: epoch metrics only). Default: 0; a "
                                "resume keeps the run's value.")
    return group


def comet_is_requested(args):
    """True when any Comet destination was given."""
    return bool(args.comet_workspace or args.comet_project
                or args.comet_offline_dir)


def check_comet_args(args):
    """Check the Comet options locally (no network); raise a clear error."""
    for name in ("comet_workspace", "comet_project", "comet_offline_dir"):
        # An unset shell variable ("$COMET_DIR") would turn Comet off.
        if getattr(args, name, None) == "":
            raise DwiMLUserError(
                f"argument --{name}: expected a name or path, found an "
                "empty string (an unset shell variable?).")
    log_every = getattr(args, "comet_log_every", None) or 0
    if log_every < 0:
        raise DwiMLUserError(
            f"--comet_log_every: expected 0 or more batches, got "
            f"{log_every}.")
    if not comet_is_requested(args):
        if log_every:
            raise DwiMLUserError(
                "--comet_log_every needs --comet_workspace and "
                "--comet_project, or --comet_offline_dir.")
        return
    if args.comet_offline_dir is not None:
        _check_offline_dir(args.comet_offline_dir)
        return
    if not (args.comet_workspace and args.comet_project):
        raise DwiMLUserError(
            "Comet online logging needs both --comet_workspace and "
            "--comet_project (or use --comet_offline_dir); got only "
            + ("--comet_workspace." if args.comet_workspace
               else "--comet_project."))
    if not comet_api_key_is_set():
        raise DwiMLUserError(
            "Comet online logging: no API key found; set COMET_API_KEY or "
            "run 'comet init' (or use --comet_offline_dir).")


def _check_offline_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise DwiMLUserError(
            f"--comet_offline_dir: '{path}' exists and is not a folder.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        found = "is a file" if os.path.exists(parent) else "does not exist"
        raise DwiMLUserError(
            f"--comet_offline_dir: parent folder '{parent}' of '{path}' "
            f"{found}.")
    # Training replaces those folders whole: the archive would go with them.
    refuse_inside_experiment_folders(path, "--comet_offline_dir")
    # Comet writes its archive at the end of the run: refuse it now.
    folder = path if os.path.isdir(path) else parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DwiMLUserError(
            f"--comet_offline_dir: folder '{folder}' is not writable.")


def make_comet_callback(args, experiment_dir, hyperparameters=None,
                        resumed_key=None):
    """Check the Comet options and return the run's CometCallback, or None.

    Call it after parsing the arguments, before loading data: it raises
    :class:`DwiMLUserError` on bad options (and, online, on an unknown
    workspace; when Comet cannot be reached, that check warns once and the
    run goes on without Comet).

    Parameters
    ----------
    args : argparse.Namespace
        With the options of :func:`add_comet_args`.
    experiment_dir : str
        The experiment folder; its name becomes the Comet experiment name.
    hyperparameters : dict or None
        Logged to Comet. None (advised): the experiment's
        ``parameters.json`` as written before training starts.
    resumed_key : str or None
        Comet key of the experiment to continue, for checkpoints written
        before the key moved into the callback's own state. Otherwise the
        trainer's ``load_checkpoint`` gives the callback its saved key.

    Returns
    -------
    dwi_ml.monitoring.comet_logger.CometCallback or None
        None when no Comet option was given, or Comet cannot be reached.
    """
    check_comet_args(args)
    if not comet_is_requested(args):
        return None
    if args.comet_offline_dir is None and not check_comet_workspace(
            args.comet_workspace):
        return None
    return CometCallback(
        workspace=args.comet_workspace, project=args.comet_project,
        offline_dir=args.comet_offline_dir, hyperparameters=hyperparameters,
        experiment_name=os.path.basename(os.path.normpath(experiment_dir)),
        log_every=getattr(args, "comet_log_every", None),
        experiment_key=resumed_key)
