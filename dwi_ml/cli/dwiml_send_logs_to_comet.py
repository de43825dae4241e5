"""Send an experiment's logs to Comet after its run.

A run trained without a Comet option, resumed without one, or that lost
Comet during training (no network, a quota) still has every value in its
logs/ folder. This script sends them: each epoch log (train_loss,
valid_loss, learning_rate, grad norms, times, tracking-validation metrics)
under its own name with the epoch as step, as the training's Comet logging
does; with --per_batch, also train_loss_per_batch (step: its row). --logs
chooses the logs instead (name train_loss_per_batch there to send it).

By default the values go to the Comet experiment saved in the experiment's
checkpoint (a run that had Comet at some point), to fill its gaps. Comet
keeps every value sent, and a value sent twice shows twice: the epochs
(and per-batch rows) that the run logged there itself, recorded in its
checkpoint, are left out unless --epochs FIRST LAST asks for them (what
this script sends is not recorded: a second send shows twice). A
checkpoint of a dwi_ml older than that record does not say what the run
logged: everything is sent, with a warning; choose the missing epochs with
--epochs. Without a saved experiment, or with --new_comet_experiment, a
new Comet experiment is created, named after the experiment folder, with
parameters.json as its hyper-parameters, and every value is sent.

Online, give --comet_workspace and --comet_project (the API key comes from
COMET_API_KEY or your Comet config file); offline, --comet_offline_dir DIR
writes an archive there, to upload with 'comet upload'.
"""
import logging
import os

from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.io_utils.experiment_lock import ExperimentLock
from dwi_ml.io_utils.script_args import (
    add_verbose_arg,
    check_inputs_exist,
    make_parser,
    parse_script_args,
)
from dwi_ml.monitoring.comet_logger import add_logged_step, check_comet_workspace
from dwi_ml.monitoring.comet_upload import (
    leave_out_logged,
    logs_to_send,
    saved_comet_experiment,
    send_logs,
)
from dwi_ml.monitoring.monitoring_args import (
    add_comet_args,
    check_comet_args,
    comet_is_requested,
)

COMET_SEND_DESCRIPTION = """\
Online: --comet_workspace and --comet_project (the API key comes from the
COMET_API_KEY variable or your Comet config file); offline:
--comet_offline_dir, to upload later with 'comet upload ARCHIVE'."""

logger = logging.getLogger(__name__)


def _build_parser():
    parser = make_parser(__doc__)
    parser.add_argument("experiment_path", metavar="EXPERIMENT",
                        help="The experiment folder.")
    logs = parser.add_argument_group("Logs")
    logs.add_argument("--logs", nargs="+", metavar="NAME",
                      help="Logs to send (names of logs/NAME.npy), "
                           "train_loss_per_batch included if named. "
                           "Default: every epoch log.")
    logs.add_argument("--epochs", nargs=2, type=int,
                      metavar=("FIRST", "LAST"),
                      help="Send these epochs only (0-based, inclusive), "
                           "even those the saved Comet experiment has. "
                           "Default: all, less those the run logged to the "
                           "saved Comet experiment.")
    logs.add_argument("--per_batch", action="store_true",
                      help="Also send train_loss_per_batch (its rows, less "
                           "those the run logged to the saved Comet "
                           "experiment: not with --epochs, it has no "
                           "epochs). Not with --logs: name it there.")
    comet = add_comet_args(parser, COMET_SEND_DESCRIPTION, log_every=False)
    comet.add_argument("--new_comet_experiment", action="store_true",
                       help="Create a new Comet experiment even when the "
                            "checkpoint names one.")
    add_verbose_arg(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_send_logs_to_comet.py."""
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.experiment_path, what="experiment")
    check_comet_args(args)
    if not comet_is_requested(args):
        raise DwiMLUserError(
            "Comet: expected --comet_workspace and --comet_project, or "
            "--comet_offline_dir; found none.")
    values = logs_to_send(args.experiment_path, args.logs, args.epochs,
                          args.per_batch)
    saved = None if args.new_comet_experiment else saved_comet_experiment(
        args.experiment_path)
    key = None if saved is None else saved.key
    holder = ExperimentLock(args.experiment_path).holder()
    if key is not None and holder is not None:
        raise DwiMLUserError(
            f"experiment '{args.experiment_path}' is in use by {holder}, "
            f"which logs to its Comet experiment {key} itself: wait for it "
            "to end, or send to a new one with --new_comet_experiment.")
    nb_left_out = 0
    if saved is not None:
        values, nb_left_out = _values_comet_lacks(values, saved, args)
        if nb_left_out and not any(values.values()):
            print(f"Nothing sent: the saved Comet experiment {key} already "
                  f"has all {nb_left_out} values, logged during training "
                  "(--epochs sends chosen epochs again).")
            return
    if args.comet_offline_dir is None and not check_comet_workspace(
            args.comet_workspace, then=""):
        raise DwiMLUserError(
            "Comet could not be reached (see the warning above); nothing "
            "was sent.")
    name = os.path.basename(os.path.normpath(args.experiment_path))
    sent_key = send_logs(
        values, args.comet_workspace, args.comet_project,
        args.comet_offline_dir, key, name,
        None if key else read_parameters(args.experiment_path))
    nb_values = sum(len(pairs) for pairs in values.values())
    where = ("online" if args.comet_offline_dir is None else
             f"offline, archive in {args.comet_offline_dir}")
    left_out = (f"; left out {nb_left_out} values it has from training"
                if nb_left_out else "")
    print(f"Sent {nb_values} values of {sum(map(bool, values.values()))} "
          f"logs to {'the saved' if key else 'a new'} Comet experiment "
          f"{sent_key} ({where}){left_out}.")


def _values_comet_lacks(values, saved, args):
    """``(values, nb_left_out)``: without what the run logged to the saved
    Comet experiment, unless --epochs chose epochs; a warning when the
    values sent repeat some Comet has (or may have)."""
    where = f"Comet experiment {saved.key} (saved in the checkpoint)"
    if not saved.knows_what_was_logged:
        if args.epochs is None:
            logger.warning(
                "%s already has what the run logged during training, but "
                "this checkpoint, from an older dwi_ml, does not say which "
                "epochs: those will show twice; send only the missing ones "
                "with --epochs FIRST LAST, or all to a new experiment with "
                "--new_comet_experiment.", where)
        return values, 0
    if args.epochs is None:
        return leave_out_logged(values, saved)
    again = sorted({step for name, pairs in values.items() for step, _ in
                    pairs if step in saved.logged_epochs})
    if again:
        logger.warning("--epochs %d %d: %s already has epochs %s, logged "
                       "during training: they will show twice.",
                       *args.epochs, where, _epoch_list(again))
    return values, 0


def _epoch_list(epochs):
    """Sorted epochs as ``0-3, 5``."""
    runs = []
    for epoch in epochs:
        add_logged_step(runs, epoch)
    return ", ".join(str(first) if first == last else f"{first}-{last}"
                     for first, last, _ in runs)


if __name__ == "__main__":
    main()
