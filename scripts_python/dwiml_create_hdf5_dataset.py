#!/usr/bin/env python3
"""Create the dwi_ml HDF5 file of a dwi_ml_ready folder (volumes + tractograms)."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_create_hdf5_dataset")
