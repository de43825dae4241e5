#!/usr/bin/env python3
"""Continue a dwi_ml training from its last checkpoint."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("resume_training_from_checkpoint")
