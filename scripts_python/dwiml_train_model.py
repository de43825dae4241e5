#!/usr/bin/env python3
"""Train a Learn2track or Transformer model on an HDF5 dataset."""
# A pre-emption signal while torch is imported stops the run cleanly too.
from dwi_ml.training.interruptions import record_early_stop_signals

record_early_stop_signals()
from dwi_ml.cli.dwiml_train_model import main  # noqa: E402

if __name__ == "__main__":
    main()
