"""Synthetic example data for dwi_ml: subjects a model can learn to track.

See :func:`make_synthetic_dataset` and the script
``dwiml_make_synthetic_dataset.py``.
"""
from dwi_ml.data.synthetic.dataset import (
    SyntheticDatasetPaths,
    make_synthetic_dataset,
)

__all__ = ["SyntheticDatasetPaths", "make_synthetic_dataset"]
