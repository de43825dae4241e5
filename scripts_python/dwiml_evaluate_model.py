#!/usr/bin/env python3
"""Evaluate a trained model on a subset of an HDF5 file, subject by subject."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_evaluate_model")
