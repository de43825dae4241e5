#!/usr/bin/env python3
"""Score a tractogram against the subject's reference tractogram."""
# Through dwi_ml.launcher: a stop signal while it imports is handled too.
from dwi_ml.launcher import launch

if __name__ == "__main__":
    launch("dwiml_score_tractogram")
