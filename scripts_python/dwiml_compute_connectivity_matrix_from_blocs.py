#!/usr/bin/env python3
"""Count a tractogram's streamlines between the blocs of a volume grid."""
from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_blocs import main

if __name__ == "__main__":
    main()
