#!/usr/bin/env python3
"""Train a Learn2track or Transformer model on an HDF5 dataset."""
from dwi_ml.cli.dwiml_train_model import main

if __name__ == "__main__":
    main()
