#!/usr/bin/env python3
"""Write one group of one subject of a dwi_ml HDF5 file to NIfTI or a tractogram."""
from dwi_ml.cli.dwiml_hdf5_extract_data import main

if __name__ == "__main__":
    main()
