#!/bin/bash
# Everything a machine with a CUDA GPU should check, in one command (about
# 5 minutes on one H100/H200, sized for a short loan of a GPU):
#   1. the tests that need CUDA (skipped on CPU machines and in CI):
#      CUDA training, resume and tracking equal to the CPU's, mixed
#      precision, deterministic CUDA training, inputs interpolated on the GPU;
#   2. bash bench/bench_gpu.sh: the GPU figures of bench/README.md.
# Each part's output goes to LOG_FOLDER (tests.log, bench_gpu.log) and to the
# terminal; a part that fails does not stop the next one. The exit status is
# non-zero when a part failed.
#
#   bash bench/gpu_checks.sh [LOG_FOLDER]      # default /tmp/dwiml_gpu_checks
#
# TESTS_TIMEOUT and BENCH_TIMEOUT (seconds, default 150 and 420) bound each
# part, so that a slow or stuck part still leaves the others' results. The
# bench's data (an HDF5 of 170 MB and its experiments) goes to BENCH_DATA
# (default /tmp/dwiml_bench_gpu), not LOG_FOLDER.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-/tmp/dwiml_gpu_checks}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
python3 -c "import sys, torch
if not torch.cuda.is_available(): sys.exit('no CUDA device: nothing to check')" \
    || exit 2
status=0

echo "== tests that need CUDA ($SECONDS s so far)"
# Their names say cuda or gpu; bench_gpu.sh's own CPU test is left out. A
# test file that fails to import there (an image's broken package) must not
# hide the CUDA tests: pytest goes on past collection errors (and reports
# them, with a non-zero status).
timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -rs -p no:cacheprovider \
    --continue-on-collection-errors -k "(cuda or gpu) and not bench_gpu" tests 2>&1 | tee "$LOGS/tests.log" \
    || status=1

echo "== bench_gpu.sh ($SECONDS s so far)"
timeout "${BENCH_TIMEOUT:-420}" bash bench/bench_gpu.sh "${BENCH_DATA:-/tmp/dwiml_bench_gpu}" \
    2>&1 | tee "$LOGS/bench_gpu.log" || status=1

echo "== gpu_checks.sh done in $SECONDS s (status $status)"
exit $status
