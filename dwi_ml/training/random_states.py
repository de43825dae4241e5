"""Global random states stored as tensors and lists, never pickles.

Checkpoints must load with ``torch.load(weights_only=True)``, which refuses
arbitrary Python objects: numpy's and Python's states are converted to
tensors and plain lists here.
"""
import os
import random

import numpy as np
import torch


def get_global_random_states():
    """Return torch (CPU and CUDA), numpy and Python random states."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_random_states(states):
    """Restore the states returned by :func:`get_global_random_states`."""
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state((np_state["name"],
                         np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    py_state = states["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]),
                     py_state["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        # Saved on a node with more GPUs: the states of the GPUs here
        # (set_rng_state_all would ask for the missing devices and fail).
        torch.cuda.set_rng_state_all(
            states["cuda"][:torch.cuda.device_count()])


def seed_everything(seed):
    """Seed torch, numpy and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_deterministic(enabled):
    """Ask CUDA for deterministic kernels (``--deterministic``).

    Sets ``torch.use_deterministic_algorithms``, cuDNN's deterministic mode
    without autotuning, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read by
    cuBLAS when it starts, so before the first CUDA matrix product). On
    CUDA it costs speed: slower kernels, no cuDNN autotuning, and an error
    for the few operations that have no deterministic version. CPU runs are
    bitwise reproducible at a fixed thread count without it.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False
