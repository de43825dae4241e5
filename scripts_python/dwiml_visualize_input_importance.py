#!/usr/bin/env python3
"""Which input features and neighbours a trained model relies on."""
from dwi_ml.cli.dwiml_visualize_input_importance import main

if __name__ == "__main__":
    main()
