#!/usr/bin/env python3
"""A subject's streamlines as the training batches hold them (noise, split, reverse)."""
from dwi_ml.cli.dwiml_visualize_noise_on_streamlines import main

if __name__ == "__main__":
    main()
