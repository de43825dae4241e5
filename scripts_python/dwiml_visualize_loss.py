#!/usr/bin/env python3
"""Write a subject's streamlines with a trained model's loss at each point."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_visualize_loss")
