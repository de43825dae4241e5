#!/usr/bin/env python3
"""Print the root attrs, splits and per-subject groups of a dwi_ml HDF5 file."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_hdf5_print_architecture")
