"""Checks of the trainer's arguments, before any work."""
from dwi_ml.io_utils.arg_checks import check_device, check_int, check_positive_float
from dwi_ml.io_utils.errors import DwiMLUserError


def _check_positive(name, value, allow_none=False, integer=False):
    if value is None and allow_none:
        return
    if integer:
        check_int(name, value, 1)
    else:
        check_positive_float(name, value)


def check_trainer_args(args):
    """Raise DwiMLUserError for the first invalid trainer argument."""
    _check_positive("learning_rate", args["learning_rate"])
    _check_positive("max_epochs", args["max_epochs"], integer=True)
    _check_positive("patience", args["patience"], allow_none=True,
                    integer=True)
    _check_positive("clip_grad", args["clip_grad"], allow_none=True)
    _check_positive("grad_accumulation_steps", args["grad_accumulation_steps"],
                    integer=True)
    for key in ("max_batches_per_epoch_training",
                "max_batches_per_epoch_validation"):
        _check_positive(key, args[key], allow_none=True, integer=True)
    if args["weight_decay"] < 0:
        raise DwiMLUserError(
            f"weight_decay: expected >= 0, got {args['weight_decay']}.")
    if args["patience_delta"] < 0:
        raise DwiMLUserError(
            f"patience_delta: expected >= 0, got {args['patience_delta']}.")
    if args["nb_workers"] < 0:
        raise DwiMLUserError(
            f"nb_workers: expected >= 0, got {args['nb_workers']}.")
    if args["mixed_precision"] not in (None, "bf16", "fp16"):
        raise DwiMLUserError(
            "mixed_precision: expected 'bf16', 'fp16' or none, got "
            f"'{args['mixed_precision']}'.")
    check_device(args["device"])
    _check_positive("max_time_s", args["max_time_s"], allow_none=True)
    _check_positive("checkpoint_every_n_batches",
                    args["checkpoint_every_n_batches"], allow_none=True,
                    integer=True)
    _check_positive("checkpoint_every_minutes",
                    args["checkpoint_every_minutes"], allow_none=True)
