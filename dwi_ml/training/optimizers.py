"""Optimizers and learning-rate schedulers chosen by name."""
import logging
import re
import warnings

import torch

from dwi_ml.io_utils.errors import DwiMLUserError

OPTIMIZER_CHOICES = ("Adam", "AdamW", "RAdam", "SGD")
SCHEDULER_CHOICES = ("constant", "step", "cosine", "plateau", "onecycle")
# Built with fused=True (see create_optimizer).
FUSED_OPTIMIZERS = ("Adam", "AdamW")

logger = logging.getLogger(__name__)


def create_optimizer(parameters, optimizer_name, learning_rate,
                     weight_decay=0.0, momentum=0.9):
    """Build a torch optimizer by name.

    Parameters
    ----------
    parameters : iterable of torch.nn.Parameter
    optimizer_name : str
        One of ``OPTIMIZER_CHOICES``; SGD uses ``momentum``.
    learning_rate, weight_decay, momentum : float
    """
    if optimizer_name not in OPTIMIZER_CHOICES:
        raise DwiMLUserError(
            f"optimizer: expected one of {', '.join(OPTIMIZER_CHOICES)}, got "
            f"'{optimizer_name}'.")
    if learning_rate <= 0:
        raise DwiMLUserError(
            f"learning_rate: expected a positive value, got {learning_rate}.")
    if optimizer_name == "SGD":
        return torch.optim.SGD(parameters, lr=learning_rate,
                               momentum=momentum, weight_decay=weight_decay)
    optimizer_class = getattr(torch.optim, optimizer_name)
    # Adam and AdamW in one kernel over all tensors (CPU and CUDA): on CPU
    # 0.4 ms a step for Learn2track's 16 tensors, against 1.7 - 2.0 one
    # tensor at a time (the default there). Same formula, other rounding.
    parameters = list(parameters)
    if optimizer_name in FUSED_OPTIMIZERS:
        try:
            return optimizer_class(parameters, lr=learning_rate,
                                   weight_decay=weight_decay, fused=True)
        except RuntimeError:
            # Devices or torch versions without the fused kernel (CPU
            # before torch 2.4): the same formula one tensor at a time.
            pass
    return optimizer_class(parameters, lr=learning_rate,
                           weight_decay=weight_decay)


def load_optimizer_state(optimizer, state):
    """``optimizer.load_state_dict(state)``, keeping what this torch can run.

    The saved groups carry the ``fused`` flag of the run that saved them: a
    run saved with the fused kernel resumes with it, as it ran, and one
    saved without it resumes without it. :func:`create_optimizer` builds
    Adam and AdamW fused wherever torch can: one built unfused means this
    torch or device has no fused kernel (CPU before torch 2.4), where the
    loaded flag would fail the first step. The run then goes on one tensor
    at a time, with a warning (same formula, other last bits).
    """
    built_fused = [bool(group.get("fused")) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    if type(optimizer).__name__ not in FUSED_OPTIMIZERS:
        return
    for group, fused in zip(optimizer.param_groups, built_fused):
        if group.get("fused") and not fused:
            logger.warning(
                "The checkpoint's optimizer ran the fused kernel, which this "
                "torch lacks on this device: resuming without it (the last "
                "bits of the weights may differ from an unbroken run).")
            group["fused"] = None


# Placeholders of a SchedulerFactory's arguments, filled by the trainer.
MAX_EPOCHS = "{max_epochs}"
STEPS_PER_EPOCH = "{steps_per_epoch}"


class SchedulerFactory:
    """Builds a ``torch.optim.lr_scheduler`` once the run's sizes are known.

    Parameters
    ----------
    scheduler_class : type
        E.g. ``torch.optim.lr_scheduler.OneCycleLR``.
    step_every : "epoch" or "batch"
        When the trainer steps it: after each epoch (with the epoch's loss
        for ReduceLROnPlateau) or after each optimizer update.
    **kwargs
        Its arguments; the values ``MAX_EPOCHS`` and ``STEPS_PER_EPOCH`` are
        replaced by the trainer's number of epochs and of optimizer updates
        per epoch.

    Examples
    --------
    >>> one_cycle = SchedulerFactory(torch.optim.lr_scheduler.OneCycleLR,
    ...                              step_every="batch", max_lr=0.01,
    ...                              epochs=MAX_EPOCHS,
    ...                              steps_per_epoch=STEPS_PER_EPOCH)
    """

    def __init__(self, scheduler_class, step_every="epoch", **kwargs):
        if step_every not in ("epoch", "batch"):
            raise DwiMLUserError(
                f"SchedulerFactory step_every: expected 'epoch' or 'batch', "
                f"got '{step_every}'.")
        self.scheduler_class = scheduler_class
        self.step_every = step_every
        self.kwargs = kwargs

    def __call__(self, optimizer, max_epochs, steps_per_epoch):
        """The scheduler of ``optimizer``, placeholders filled."""
        values = {MAX_EPOCHS: max_epochs, STEPS_PER_EPOCH: steps_per_epoch}
        kwargs = {key: values.get(value, value) if isinstance(value, str)
                  else value for key, value in self.kwargs.items()}
        return self.scheduler_class(optimizer, **kwargs)

    def __repr__(self):
        return f"{self.scheduler_class.__name__}(step_every={self.step_every})"


def scheduler_factory_from_name(scheduler_name, learning_rate, step_size=10,
                                gamma=0.5, plateau_patience=5):
    """The factory of a named scheduler.

    ``constant`` keeps the learning rate, ``step`` multiplies it by
    ``gamma`` every ``step_size`` epochs, ``cosine`` anneals it to zero
    over the run, ``plateau`` multiplies it by ``gamma`` after
    ``plateau_patience`` epochs in a row without improvement of the
    validation loss (by more than 0.01 %, relatively), and ``onecycle`` warms up to
    ``learning_rate`` then anneals, stepping after every update.
    """
    schedulers = torch.optim.lr_scheduler
    factories = {
        "constant": SchedulerFactory(schedulers.ConstantLR, factor=1.0,
                                     total_iters=0),
        "step": SchedulerFactory(schedulers.StepLR, step_size=step_size,
                                 gamma=gamma),
        "cosine": SchedulerFactory(schedulers.CosineAnnealingLR,
                                   T_max=MAX_EPOCHS),
        # torch lowers the rate once more than `patience` epochs did not
        # improve: after plateau_patience of them, as documented.
        "plateau": SchedulerFactory(schedulers.ReduceLROnPlateau,
                                    factor=gamma,
                                    patience=plateau_patience - 1),
        "onecycle": SchedulerFactory(schedulers.OneCycleLR, step_every="batch",
                                     max_lr=learning_rate, epochs=MAX_EPOCHS,
                                     steps_per_epoch=STEPS_PER_EPOCH),
    }
    if scheduler_name not in factories:
        raise DwiMLUserError(
            f"lr_scheduler: expected one of {', '.join(SCHEDULER_CHOICES)}, "
            f"got '{scheduler_name}'.")
    return factories[scheduler_name]


def step_scheduler(scheduler, epoch_loss=None):
    """Advance a scheduler; plateau schedulers need the epoch's loss.

    A per-batch scheduler with a fixed number of steps (OneCycleLR) stays
    at its last value once its steps are spent, instead of failing; its
    ``last_epoch`` still counts the updates, so that a longer run resumed
    from it (:func:`load_scheduler_state`) knows where it is.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(epoch_loss)
        return
    total_steps = getattr(scheduler, "total_steps", None)
    if total_steps is not None and scheduler.last_epoch + 1 >= total_steps:
        scheduler.last_epoch += 1
        return
    with warnings.catch_warnings():
        # Torch warns when this process has not called optimizer.step() yet.
        # The loop always updates first, except in a run resumed inside its
        # first epoch after its last update (in validation): that update was
        # made by the process that saved the checkpoint.
        warnings.filterwarnings(
            "ignore", message=re.escape("Detected call of `lr_scheduler.step()`"),
            category=UserWarning)
        scheduler.step()


# State entries of a scheduler that follow from the run's length.
_HORIZON_KEYS = ("T_max", "total_steps", "_schedule_phases")


def scheduler_horizon(scheduler):
    """The state entries of ``scheduler`` that follow from the run's length
    (empty for schedules that do not span the run)."""
    state = scheduler.state_dict()
    return {key: state[key] for key in _HORIZON_KEYS if key in state}


def load_scheduler_state(scheduler, saved_state, horizon=None):
    """Restore a scheduler's saved state, keeping its own horizon.

    ``scheduler`` was built for the run's current number of epochs. When
    that number is the saved run's (a resume), this is
    ``scheduler.load_state_dict(saved_state)``. When it changed (resume
    with ``--new_max_epochs``), schedules planned over the run (``cosine``,
    ``onecycle``) keep the new length: from the saved step on, the learning
    rate follows the curve of a run planned for the new number of epochs,
    instead of the old curve (which reaches zero at the old end, then
    ``cosine`` rises again).

    Parameters
    ----------
    scheduler : torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau
        Built by a :class:`SchedulerFactory`, on the optimizer whose state
        was loaded already.
    saved_state : dict
        ``scheduler.state_dict()`` of the saved run.
    horizon : dict or None
        The horizon to keep, from :func:`scheduler_horizon`; None: the
        scheduler's own.
    """
    if horizon is None:
        horizon = scheduler_horizon(scheduler)
    if all(saved_state.get(key) == value for key, value in horizon.items()):
        scheduler.load_state_dict(saved_state)
        return
    scheduler.load_state_dict({**saved_state, **horizon})
    # The learning rate of the current step on the new curve: cosine's
    # get_lr is recursive (from the old curve's value), hence its closed
    # form; OneCycleLR's get_lr is already a function of the step.
    total_steps = horizon.get("total_steps")
    if total_steps is not None and scheduler.last_epoch >= total_steps:
        return  # spent: stays at its last rate (see step_scheduler)
    closed_form = getattr(scheduler, "_get_closed_form_lr", None)
    with warnings.catch_warnings():
        # get_lr outside step() warns; here it is the point.
        warnings.simplefilter("ignore", UserWarning)
        rates = (closed_form() if closed_form is not None
                 else scheduler.get_lr())
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = list(rates)
