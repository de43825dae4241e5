#!/usr/bin/env python3
"""Create the dwi_ml HDF5 file of a dwi_ml_ready folder (volumes + tractograms)."""
from dwi_ml.cli.dwiml_create_hdf5_dataset import main

if __name__ == "__main__":
    main()
