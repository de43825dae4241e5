#!/usr/bin/env python3
"""Write a subject's streamlines with a trained model's loss at each point."""
from dwi_ml.cli.dwiml_visualize_loss import main

if __name__ == "__main__":
    main()
