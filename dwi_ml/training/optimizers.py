"""Optimizers and learning-rate schedulers chosen by name."""
import torch

from dwi_ml.io_utils.errors import DwiMLUserError

OPTIMIZER_CHOICES = ("Adam", "AdamW", "RAdam", "SGD")
SCHEDULER_CHOICES = ("constant", "step", "cosine", "plateau")


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
    return optimizer_class(parameters, lr=learning_rate,
                           weight_decay=weight_decay)


def create_scheduler(optimizer, scheduler_name, max_epochs, step_size=10,
                     gamma=0.5, plateau_patience=5):
    """Build an epoch-wise learning-rate scheduler by name.

    ``constant`` keeps the learning rate, ``step`` multiplies it by
    ``gamma`` every ``step_size`` epochs, ``cosine`` anneals it to zero
    over ``max_epochs`` and ``plateau`` divides it when the validation loss
    stops improving for ``plateau_patience`` epochs.
    """
    if scheduler_name not in SCHEDULER_CHOICES:
        raise DwiMLUserError(
            f"lr_scheduler: expected one of {', '.join(SCHEDULER_CHOICES)}, "
            f"got '{scheduler_name}'.")
    schedulers = torch.optim.lr_scheduler
    if scheduler_name == "constant":
        return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if scheduler_name == "step":
        return schedulers.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if scheduler_name == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=max_epochs)
    return schedulers.ReduceLROnPlateau(optimizer, factor=gamma,
                                        patience=plateau_patience)


def step_scheduler(scheduler, epoch_loss):
    """Advance an epoch-wise scheduler; plateau schedulers need the loss."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(epoch_loss)
    else:
        scheduler.step()
