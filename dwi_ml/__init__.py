"""dwi_ml: train PyTorch models on diffusion-MRI tractography.

The sub-packages follow the data flow: ``data`` (HDF5 creation and
datasets) -> ``batching`` (sampler and loader) -> ``models`` -> ``training``,
then ``tracking`` and ``monitoring``.

Importing dwi_ml before numpy makes numpy's OpenBLAS single-threaded
(``OPENBLAS_NUM_THREADS=1``, unless already set): our numpy matrix
products are (P, 3) x (3, 3) conversions of points, where OpenBLAS's
threads gain little and then spin, taking a core from torch's threads and
the DataLoader workers (bench/README.md, "Workers").
"""
import os
import sys

__version__ = "0.1.0"


def _request_reproducible_mkl():
    # Before any torch computation: see request_reproducible_mkl. Without
    # torch loaded yet, MKL_CBWR sets the same mode when MKL first runs, and
    # scripts that never need torch (HDF5 creation) do not pay its import.
    if "torch" not in sys.modules:
        os.environ.setdefault("MKL_CBWR", "AUTO")
        return
    from dwi_ml.training.cpu_threads import request_reproducible_mkl
    request_reproducible_mkl()


def _single_threaded_openblas():
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


_single_threaded_openblas()
_request_reproducible_mkl()
