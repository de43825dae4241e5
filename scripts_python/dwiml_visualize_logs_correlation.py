#!/usr/bin/env python3
"""How two logs of experiments move together across epochs."""
from dwi_ml.cli.dwiml_visualize_logs_correlation import main

if __name__ == "__main__":
    main()
