"""The trainer's arguments: their script options and their checks."""
import argparse
import os

import torch

from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.io_utils.arg_checks import (
    InvalidValue,
    check_choice,
    check_device,
    check_int,
    check_non_negative_float,
    check_positive_float,
    check_seed,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import EXPERIMENT_FOLDERS
from dwi_ml.io_utils.output_folders import check_experiment_name
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.optimizers import OPTIMIZER_CHOICES, SCHEDULER_CHOICES

# The trainer's and the training script's (docs/training.md).
DEFAULT_CLIP_GRAD = 1.0


def clip_grad_value(value):
    """argparse type of --clip_grad: a number, or 'none' (no clipping)."""
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'none', found {value!r}") from None


def _check_positive(name, value, allow_none=False, integer=False):
    if value is None and allow_none:
        return
    if integer:
        check_int(name, value, 1)
    else:
        check_positive_float(name, value)


def check_trainer_args(args):
    """Raise DwiMLUserError for the first invalid trainer argument.

    ``args`` holds the trainer's arguments by name; the interruption
    arguments (``max_time_s``, ``checkpoint_every_*``) may be absent.
    """
    _check_positive("learning_rate", args["learning_rate"])
    # torch would raise a ValueError (a traceback) or, for a negative
    # step gamma, silently turn the learning rate negative.
    check_non_negative_float("momentum", args["momentum"])
    if args["lr_scheduler"] == "step":
        check_positive_float("lr_gamma", args["lr_gamma"])
    elif args["lr_scheduler"] == "plateau" and not (
            check_positive_float("lr_gamma", args["lr_gamma"]) < 1):
        raise InvalidValue("lr_gamma", None, "a number in (0, 1) for the "
                           "'plateau' scheduler", args["lr_gamma"])
    _check_positive("max_epochs", args["max_epochs"], integer=True)
    _check_positive("patience", args["patience"], allow_none=True,
                    integer=True)
    _check_positive("clip_grad", args["clip_grad"], allow_none=True)
    _check_positive("grad_accumulation_steps", args["grad_accumulation_steps"],
                    integer=True)
    for key in ("max_batches_per_epoch_training",
                "max_batches_per_epoch_validation"):
        _check_positive(key, args[key], allow_none=True, integer=True)
    check_non_negative_float("weight_decay", args["weight_decay"])
    check_non_negative_float("patience_delta", args["patience_delta"])
    check_int("nb_workers", args["nb_workers"], 0)
    check_choice("mixed_precision", args["mixed_precision"],
                 (None, "bf16", "fp16"))
    check_seed("seed", args["seed"])
    check_device(args["device"])
    _check_positive("max_time_s", args.get("max_time_s"), allow_none=True)
    _check_positive("checkpoint_every_n_batches",
                    args.get("checkpoint_every_n_batches"), allow_none=True,
                    integer=True)
    _check_positive("checkpoint_every_minutes",
                    args.get("checkpoint_every_minutes"), allow_none=True)


def check_trainer_parts(model, experiment_name, batch_loader):
    """Refuse a model that is no torch module, an experiment name that is
    not one folder name, and a loader that does not follow the model."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidValue("model", None, "a torch.nn.Module (a dwi_ml "
                           "model)", model)
    check_experiment_name(experiment_name)
    check_loader_follows_model(model, batch_loader)


def check_callbacks(callbacks):
    """``callbacks`` as a list of Callback instances (one alone is a list
    of one); anything else is refused, naming it."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        callbacks = [callbacks]
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise InvalidValue("callbacks", None, "a list of Callback "
                               "instances (dwi_ml.training.callbacks)",
                               callback)
    return callbacks


def check_loader_follows_model(model, loader):
    """Refuse a batch loader whose ``input_spec`` is not the model's.

    The loader resamples the streamlines and interpolates the inputs as its
    spec says; the model records its own in the experiment, for tracking.
    A loader built with another spec (the default one, say) would train
    the model on data that its saved parameters do not describe.
    """
    model_spec = getattr(model, "input_spec", None)
    loader_spec = getattr(loader, "input_spec", None)
    if not (isinstance(model_spec, InputSpec)
            and isinstance(loader_spec, InputSpec)):
        return  # a model or loader of your own that does not say
    ours, theirs = model_spec.as_options(), loader_spec.as_options()
    # The loader resamples and interpolates; previous directions are the
    # model's own (from the streamlines).
    differ = [f"{key} {ours[key]!r} in the model, {theirs[key]!r} in the "
              "loader" for key in ours
              if key != "nb_previous_dirs" and ours[key] != theirs[key]]
    if differ:
        raise DwiMLUserError(
            "batch_loader: expected the model's input_spec, found another ("
            + "; ".join(differ) + "); build the loader with "
            "input_spec=model.input_spec.")


def refuse_previous_run(experiment_dir):
    """Refuse to start a new run in a folder that holds a run's outputs.

    A trainer that continues a run loads its checkpoint first; a new one
    must not write over another run's best model, checkpoint and logs (the
    scripts remove them with ``-f`` only).
    """
    found = [name for name in EXPERIMENT_FOLDERS
             if os.path.lexists(os.path.join(experiment_dir, name))]
    if found:
        raise DwiMLUserError(
            f"experiment '{experiment_dir}' holds a previous run ("
            f"{', '.join(name + '/' for name in found)}); expected a new "
            "experiment folder: continue it (load_checkpoint, or "
            "resume_training_from_checkpoint.py), choose another "
            "experiment name, or replace it with dwiml_train_model.py -f.")


def add_trainer_args(parser):
    """The script options of the trainer's optimisation (group "Trainer")."""
    group = parser.add_argument_group("Trainer")
    group.add_argument("--optimizer", default="Adam", choices=OPTIMIZER_CHOICES,
                       help="torch optimizer.")
    group.add_argument("--learning_rate", type=float,
                       help="Initial learning rate. Default: 0.005 for "
                            "Learn2track, 0.001 for the Transformers (see "
                            "docs/training.md).")
    group.add_argument("--weight_decay", type=float, default=0.0,
                       help="Weight decay (L2 penalty; decoupled for AdamW).")
    group.add_argument("--momentum", type=float, default=0.9,
                       help="SGD momentum (refused with another optimizer).")
    group.add_argument("--lr_scheduler", default="constant",
                       choices=SCHEDULER_CHOICES,
                       help="Learning-rate schedule over the epochs.")
    group.add_argument("--lr_step_size", type=int, default=10,
                       help="'step' scheduler: epochs between decays.")
    group.add_argument("--lr_gamma", type=float, default=0.5,
                       help="'step'/'plateau' scheduler: decay factor.")
    group.add_argument("--max_epochs", type=int, default=10,
                       help="Epochs to train in all.")
    group.add_argument("--patience", type=int, default=None,
                       help="Stop after this many epochs without a better "
                            "--best_model_metric; None never stops early.")
    group.add_argument("--patience_delta", type=float, default=0.0,
                       help="Improvement of --best_model_metric that counts "
                            "as better, for patience and for best_model/ "
                            "alike (as the reference dwi_ml): a smaller "
                            "gain keeps the earlier best epoch "
                            "(default: 0).")
    group.add_argument("--max_batches_per_epoch_training", type=int,
                       help="Cap on training batches per epoch; None uses "
                            "them all.")
    group.add_argument("--max_batches_per_epoch_validation", type=int,
                       help="Cap on validation batches per epoch; None uses "
                            "them all.")
    group.add_argument("--clip_grad", type=clip_grad_value,
                       default=DEFAULT_CLIP_GRAD,
                       metavar="NORM|none",
                       help="Clip the gradients' total norm to NORM, once "
                            "per update; 'none' never clips. Default: 1.0 "
                            "(since 2026-12-02; it made Learn2track track "
                            "better: docs/training.md).")
    group.add_argument("--grad_accumulation_steps", type=int, default=1,
                       help="Update the weights every N batches.")
    group.add_argument("--mixed_precision", choices=("bf16", "fp16"),
                       help="Autocast the forward pass: bf16 on CUDA or CPU, "
                            "fp16 on CUDA only (ignored on CPU, but saved for "
                            "a resume on CUDA). Default: float32.")
    return group
