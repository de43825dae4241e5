#!/usr/bin/env python3
"""Write a small synthetic dataset (DWI, WM mask, bundles, HDF5 config)."""
from dwi_ml.cli.dwiml_make_synthetic_dataset import main

if __name__ == "__main__":
    main()
