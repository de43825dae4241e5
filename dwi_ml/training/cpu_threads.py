"""How many CPU threads torch may use in a training process.

torch's default (one thread per core) oversubscribes the cores as soon as
DataLoader workers or other ranks run beside the main process; its OpenMP
threads then spin against each other, and on a 2-core machine a training
step was measured 40x slower. Scripts therefore give the main process only
the cores the others leave.
"""
import logging
import os

import torch

logger = logging.getLogger(__name__)


def available_cores():
    """Cores this process may run on (its CPU affinity when known)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_cpu_threads(nb_threads=None, nb_workers=0):
    """Set torch's intra-op threads; return the number chosen.

    Parameters
    ----------
    nb_threads : int or None
        None chooses: OMP_NUM_THREADS when set, else the cores shared by
        the local ranks (torchrun's LOCAL_WORLD_SIZE) minus one per
        DataLoader worker, at least 1.
    nb_workers : int
        DataLoader workers of this process (each uses one thread).
    """
    if nb_threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        nb_threads = int(os.environ["OMP_NUM_THREADS"])
    if nb_threads is None:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        nb_threads = max(1, available_cores() // local_ranks - nb_workers)
    torch.set_num_threads(int(nb_threads))
    logger.info("Using %d CPU thread(s) for torch.", nb_threads)
    return nb_threads
