#!/usr/bin/env python3
"""Count a tractogram's streamlines between the blocs of a volume grid."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_compute_connectivity_matrix_from_blocs")
