#!/usr/bin/env python3
"""Run the whole dwi_ml job on a synthetic example, in a few minutes on CPU."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_run_demo")
