#!/usr/bin/env python3
"""How two logs of experiments move together across epochs."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_visualize_logs_correlation")
