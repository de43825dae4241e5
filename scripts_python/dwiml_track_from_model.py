#!/usr/bin/env python3
"""Track a subject of an HDF5 file with a trained model (e.g. Learn2track)."""
from dwi_ml.cli.dwiml_track_from_model import main

if __name__ == "__main__":
    main()
