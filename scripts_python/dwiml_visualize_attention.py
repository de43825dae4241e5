#!/usr/bin/env python3
"""See what a trained Transformer attends to, on a few streamlines."""
from dwi_ml.cli.dwiml_visualize_attention import main

if __name__ == "__main__":
    main()
