#!/usr/bin/env python3
"""Score a predicted connectivity matrix against the true one."""
from dwi_ml.cli.dwiml_compute_connectivity_score import main

if __name__ == "__main__":
    main()
