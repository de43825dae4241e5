#!/bin/bash
# Install dwi_ml (editable) with its test tools. On a machine with no torch,
# install torch==2.13.0 first, as your pip index serves it (this project's
# machines serve its CPU wheel; from PyPI on Linux it is a CUDA build, see
# docs/getting_started.md); an existing torch (CPU or CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install -q torch==2.13.0
fi
"$PYTHON" -m pip install -q -e ".[test]"
