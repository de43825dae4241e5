#!/usr/bin/env python3
"""The loss of "copy the previous direction" on a subset of an HDF5 file."""
from dwi_ml.cli.dwiml_compute_loss_copy_previous import main

if __name__ == "__main__":
    main()
