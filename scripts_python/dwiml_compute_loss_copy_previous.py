#!/usr/bin/env python3
"""The loss of "copy the previous direction" on a subset of an HDF5 file."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_compute_loss_copy_previous")
