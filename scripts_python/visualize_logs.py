#!/usr/bin/env python3
"""Plot the logs (losses, grad norms, LR, times) of dwi_ml experiments to PNG."""
from dwi_ml.cli.visualize_logs import main

if __name__ == "__main__":
    main()
