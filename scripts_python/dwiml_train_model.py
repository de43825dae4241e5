#!/usr/bin/env python3
"""Train a Learn2track or Transformer model on an HDF5 dataset."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_train_model")
