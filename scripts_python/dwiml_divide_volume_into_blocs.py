#!/usr/bin/env python3
"""Label each voxel of a volume with its connectivity bloc."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_divide_volume_into_blocs")
