#!/usr/bin/env python3
"""A subject's streamlines as the training batches hold them (noise, split, reverse)."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_visualize_noise_on_streamlines")
