#!/usr/bin/env python3
"""See what a trained Transformer attends to, on a few streamlines."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_visualize_attention")
