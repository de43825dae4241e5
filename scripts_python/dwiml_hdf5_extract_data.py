#!/usr/bin/env python3
"""Write one group of one subject of a dwi_ml HDF5 file to NIfTI or a tractogram."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_hdf5_extract_data")
