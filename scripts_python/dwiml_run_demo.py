#!/usr/bin/env python3
"""Run the whole dwi_ml job on a synthetic example, in a few minutes on CPU."""
from dwi_ml.cli.dwiml_run_demo import main

if __name__ == "__main__":
    main()
