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


def cap_workers(nb_workers):
    """``nb_workers``, at most the cores this process may run on (with a
    warning): each worker is a process of a few hundred MB, and more
    workers than cores only compete. Batches do not depend on the number
    of workers, so the run is the same."""
    cores = available_cores()
    if nb_workers > cores:
        logger.warning(
            "--nb_workers %d: more than the %d core(s) this process may run "
            "on; using %d worker(s) (the batches are the same).", nb_workers,
            cores, cores)
        return cores
    return nb_workers


def set_cpu_threads(nb_threads=None, nb_workers=0, resumed_from=None):
    """Set torch's intra-op threads; return the number chosen.

    Parameters
    ----------
    nb_threads : int or None
        None chooses: OMP_NUM_THREADS when set, else the cores shared by
        the local ranks (torchrun's LOCAL_WORLD_SIZE) minus one per
        DataLoader worker, at least 1. torchrun sets OMP_NUM_THREADS to 1
        for each rank when it starts several per node and the variable is
        unset: there, give ``nb_threads`` to use more.
    nb_workers : int
        DataLoader workers of this process (each uses one thread).
    resumed_from : int or None
        The thread count of the CPU run being resumed. Float rounding, and
        so the resumed run's numbers, depend on it: it replaces the
        default (OMP_NUM_THREADS, which torchrun sets to 1, or the cores
        left), with a warning when it is more than those cores; a count
        given that differs from it is warned about.
    """
    given = "--nb_cpu_threads"
    environment = os.environ.get("OMP_NUM_THREADS", "")
    if nb_threads is None and resumed_from is not None \
            and environment.isdigit() and int(environment) != resumed_from:
        # The run may have been given --nb_cpu_threads over this variable
        # (torchrun's 1): the same command line must resume it exactly.
        logger.info("OMP_NUM_THREADS %s left aside: the resumed run keeps "
                    "its %d CPU thread(s) (--nb_cpu_threads to change it).",
                    environment, resumed_from)
    elif nb_threads is None and environment.isdigit():
        nb_threads, given = int(environment), "OMP_NUM_THREADS"
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    free_cores = available_cores() // local_ranks - nb_workers
    cores_left = max(1, free_cores)
    if nb_threads is None and resumed_from is not None:
        nb_threads = resumed_from
        if resumed_from > cores_left:
            logger.warning(
                "Keeping the run's %d CPU thread(s) for torch (its float "
                "rounding): with %d worker(s) they are more than the %d "
                "core(s) left, which can slow training a lot; "
                "--nb_cpu_threads %d is faster, but its numbers differ from "
                "an uninterrupted run's.", resumed_from, nb_workers,
                max(0, free_cores), cores_left)
    elif resumed_from is not None and nb_threads != resumed_from:
        logger.warning(
            "%s %d: the run trained with %d CPU thread(s) for torch; float "
            "rounding differs, so the resumed run's numbers differ from an "
            "uninterrupted run's.", given, nb_threads, resumed_from)
    if nb_threads is None:
        nb_threads = cores_left
    torch.set_num_threads(int(nb_threads))
    logger.info("Using %d CPU thread(s) for torch.", nb_threads)
    return nb_threads


# MKL's conditional numerical reproducibility: mkl_cbwr_set(MKL_CBWR_AUTO).
_MKL_CBWR_AUTO = 2
_MKL_CBWR_SUCCESS = 0


def request_reproducible_mkl():
    """Make torch's MKL kernels reproducible at a fixed thread count.

    Without it, MKL may schedule the work of a threaded kernel by which
    thread is free first, and sum partial results in that order: two runs
    with the same seed and 2 threads then differ in the last bits when
    other processes compete for the cores. ``MKL_CBWR_AUTO`` keeps the
    fastest code path of the processor but makes the scheduling
    deterministic. MKL accepts the mode only before its first computation,
    so ``import dwi_ml`` calls this; a ``MKL_CBWR`` set by the user wins.

    Returns
    -------
    bool
        True when the mode is set (or the user's ``MKL_CBWR`` applies).
    """
    if os.environ.get("MKL_CBWR"):
        return True
    import ctypes

    library = os.path.join(os.path.dirname(torch.__file__), "lib",
                           "libtorch_cpu.so")
    try:
        set_mode = ctypes.CDLL(library).mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return False  # No MKL in this torch build (e.g. ARM, macOS).
    set_mode.argtypes = [ctypes.c_int]
    set_mode.restype = ctypes.c_int
    if set_mode(_MKL_CBWR_AUTO) != _MKL_CBWR_SUCCESS:
        logger.warning("MKL ran before dwi_ml was imported: 2-thread CPU "
                       "runs may differ in the last bits; import dwi_ml "
                       "first, or set MKL_CBWR=AUTO.")
        return False
    return True
