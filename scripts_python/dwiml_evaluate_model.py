#!/usr/bin/env python3
"""Evaluate a trained model on a subset of an HDF5 file, subject by subject."""
from dwi_ml.cli.dwiml_evaluate_model import main

if __name__ == "__main__":
    main()
