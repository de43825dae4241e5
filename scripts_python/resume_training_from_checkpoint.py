#!/usr/bin/env python3
"""Continue a dwi_ml training from its last checkpoint."""
# A pre-emption signal while torch is imported stops the run cleanly too.
from dwi_ml.training.interruptions import record_early_stop_signals

record_early_stop_signals()
from dwi_ml.cli.resume_training_from_checkpoint import main  # noqa: E402

if __name__ == "__main__":
    main()
