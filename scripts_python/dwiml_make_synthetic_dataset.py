#!/usr/bin/env python3
"""Write a small synthetic dataset (DWI, WM mask, bundles, HDF5 config)."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_make_synthetic_dataset")
