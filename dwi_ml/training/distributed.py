"""torch.distributed for dwi_ml: one process per GPU (or CPU) under torchrun.

``torchrun --nproc_per_node=N dwiml_train_model.py ...`` sets RANK,
WORLD_SIZE and LOCAL_RANK; :func:`init_distributed` reads them and starts a
process group (nccl on CUDA, gloo on CPU). Without them, everything runs in
one process and these helpers do nothing.
"""
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dwi_ml.io_utils.errors import DwiMLUserError


@dataclass
class DistributedContext:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main_process(self):
        """Rank 0 writes the files and talks to Comet."""
        return self.rank == 0

    @property
    def is_distributed(self):
        """True with more than one process."""
        return self.world_size > 1


def init_distributed(device):
    """Start the process group when launched by torchrun.

    Parameters
    ----------
    device : str
        'cpu' or 'cuda[:N]'. On CUDA each process takes GPU LOCAL_RANK.

    Returns
    -------
    context : DistributedContext
    device : str
        The device this process must use.
    """
    world_size = _environment_int("WORLD_SIZE", "1", 1)
    if world_size == 1:
        return DistributedContext(), device
    rank = _environment_int("RANK", None, 0, world_size)
    local_rank = _environment_int("LOCAL_RANK", str(rank), 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DwiMLUserError(
                f"environment variable {name}: expected the address of rank "
                f"0 (torchrun sets it) with WORLD_SIZE={world_size}, found "
                "none; launch with torchrun, or unset WORLD_SIZE.")
    if str(device).startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.startswith("cuda") else "gloo")
    return DistributedContext(rank, world_size, local_rank), device


def _environment_int(name, default, minimum, above=None):
    """The integer environment variable ``name`` (torchrun's), or
    ``default``; one-line error for another value."""
    text = os.environ.get(name, default)
    expected = (f"an integer >= {minimum}" if above is None else
                f"an integer from {minimum} to {above - 1}")
    if text is None:
        raise DwiMLUserError(
            f"environment variable {name}: expected {expected} (torchrun sets "
            f"it) with WORLD_SIZE={os.environ.get('WORLD_SIZE')}, found none; "
            "launch with torchrun, or unset WORLD_SIZE.")
    value = int(text) if text.strip().isdigit() else None
    if value is None or value < minimum or (above is not None
                                             and value >= above):
        raise DwiMLUserError(
            f"environment variable {name}: expected {expected} (torchrun sets "
            f"it), found {text!r}.")
    return value


def current_context():
    """The context of an already started process group (or a single one)."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(),
                                  int(os.environ.get("LOCAL_RANK",
                                                     dist.get_rank())))
    return DistributedContext()


def all_reduce_sum(values, device):
    """Sum a list of floats over all processes (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(values, device):
    """Element-wise max of a list of ints over all processes."""
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(value) for value in tensor.tolist()]


def all_gather_objects(obj):
    """Every process's ``obj``, in rank order (a one-item list if alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier():
    """Wait for every process (no-op when alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed(trainer=None):
    """Destroy the process group, if any, once every rank is here.

    Called by every rank at the same point (a run's end, an agreed stop).
    Without the barrier, a rank that destroyed its group while the other
    was still ending aborted now and then at exit ("terminate called
    without an active exception", exit -6: 3 of 30 two-rank runs with gloo;
    0 of 60 with it), and torchrun reported a finished run as failed.

    ``trainer``'s DistributedDataParallel wrapper is released first: it
    holds the group, which would otherwise outlive ``destroy_process_group``
    and be torn down with its threads at the interpreter's exit (the abort
    came back once in ~100 runs with the barrier alone).
    """
    if trainer is not None and getattr(trainer, "forward_model",
                                       None) is not trainer.model:
        trainer.forward_model = trainer.model
        gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
