#!/usr/bin/env python3
"""Continue a dwi_ml training from its last checkpoint."""
from dwi_ml.cli.resume_training_from_checkpoint import main

if __name__ == "__main__":
    main()
