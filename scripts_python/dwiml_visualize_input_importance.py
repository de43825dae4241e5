#!/usr/bin/env python3
"""Which input features and neighbours a trained model relies on."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_visualize_input_importance")
