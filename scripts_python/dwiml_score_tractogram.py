#!/usr/bin/env python3
"""Score a tractogram against the subject's reference tractogram."""
from dwi_ml.cli.dwiml_score_tractogram import main

if __name__ == "__main__":
    main()
