#!/bin/bash
# Install dwi_ml (editable) with its test tools. On a machine with no torch,
# install the CPU build first so pip never pulls the multi-GB CUDA build;
# an existing torch (CPU or CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install -q torch==2.13.0
fi
"$PYTHON" -m pip install -q -e ".[test]"
