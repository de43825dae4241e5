#!/usr/bin/env python3
"""Send an experiment's logs to Comet after its run."""
from dwi_ml.cli.dwiml_send_logs_to_comet import main

if __name__ == "__main__":
    main()
