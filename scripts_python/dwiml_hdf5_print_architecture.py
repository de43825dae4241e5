#!/usr/bin/env python3
"""Print the root attrs, splits and per-subject groups of a dwi_ml HDF5 file."""
from dwi_ml.cli.dwiml_hdf5_print_architecture import main

if __name__ == "__main__":
    main()
