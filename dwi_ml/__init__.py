"""dwi_ml: train PyTorch models on diffusion-MRI tractography.

The sub-packages follow the data flow: ``data`` (HDF5 creation and
datasets) -> ``batching`` (sampler and loader) -> ``models`` -> ``training``,
then ``tracking`` and ``monitoring``.
"""
__version__ = "0.1.0"


def _request_reproducible_mkl():
    # Before any torch computation: see request_reproducible_mkl.
    try:
        from dwi_ml.training.cpu_threads import request_reproducible_mkl
    except ImportError:  # torch is not installed yet (setup.py).
        return
    request_reproducible_mkl()


_request_reproducible_mkl()
