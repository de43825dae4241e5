#!/usr/bin/env python3
"""Plot the logs (losses, grad norms, LR, times) of dwi_ml experiments to PNG."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("visualize_logs")
