#!/usr/bin/env python3
"""Send an experiment's logs to Comet after its run."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_send_logs_to_comet")
