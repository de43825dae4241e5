#!/usr/bin/env python3
"""Track a subject of an HDF5 file with a trained model (e.g. Learn2track)."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_track_from_model")
