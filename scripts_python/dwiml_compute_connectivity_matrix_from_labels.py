#!/usr/bin/env python3
"""Count a tractogram's streamlines between the labels of a parcellation."""
from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_labels import main

if __name__ == "__main__":
    main()
