#!/usr/bin/env python3
"""Label each voxel of a volume with its connectivity bloc."""
from dwi_ml.cli.dwiml_divide_volume_into_blocs import main

if __name__ == "__main__":
    main()
