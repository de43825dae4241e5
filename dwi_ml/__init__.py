"""dwi_ml: train PyTorch models on diffusion-MRI tractography.

The sub-packages follow the data flow: ``data`` (HDF5 creation and
datasets) -> ``batching`` (sampler and loader) -> ``models`` -> ``training``,
then ``tracking`` and ``monitoring``.
"""
__version__ = "0.1.0"
