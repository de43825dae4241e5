#!/bin/bash
# One command for the GPU figures of bench/README.md (issue 17; under 8
# minutes on one H100/H200): training throughput in points/s, fp32 and
# bf16, with interpolation on the GPU (0 workers) and in the workers; data
# waiting as a share of the step; peak GPU memory; tracking at batch 10000;
# one Transformer tracking step, cached and re-forward (issue 14).
# Each training case prints points/s, data waiting (share of the training
# time spent waiting for the DataLoader), peak RSS and peak GPU memory;
# tracking prints its peak GPU memory per batch size and its peak RSS;
# every step prints its time, and the total is printed at the end.
# A step that fails is named at the end and the next steps still run (a
# short GPU loan should give every figure it can); the exit status is then 1.
#
#   bash bench/bench_gpu.sh [FOLDER]         # on a machine with CUDA
#   bash bench/bench_gpu.sh --cpu [FOLDER]   # the same steps, small, on CPU
#
# --cpu runs every step on the CPU with small sizes (about 2 minutes on 2
# cores), so that the script is exercised without a GPU and cannot rot;
# each figure that has no meaning there says so (N/A on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [ "${1:-}" = "--cpu" ]; then DEVICE=cpu; shift; fi
FOLDER=${1:-/tmp/dwiml_bench_gpu}
mkdir -p "$FOLDER"
FAILED=()
# step NAME COMMAND...: runs one step; a failure is noted, not fatal.
step() {
    local name=$1; shift
    "$@" || { echo "!! step failed: $name"; FAILED+=("$name"); }
}

if [ "$DEVICE" = cuda ]; then
    # The GPU as torch sees it (nvidia-smi is missing from some containers).
    python3 -c "import sys, torch
if not torch.cuda.is_available(): sys.exit('no CUDA device: use --cpu')
p = torch.cuda.get_device_properties(0)
print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')" \
        || exit 2
    NB_STREAMLINES=20000; BATCH=1000; WORKERS="0 4"; INTERP_WORKERS=4
    TRACK_SEEDS=20000; TRACK_BATCH=10000
    STEP_ARGS=(--lengths 20 100 200 --nb_streamlines 1000)
else
    echo "CPU run (--cpu): small sizes; GPU peak memory is N/A on CPU"
    NB_STREAMLINES=200; BATCH=50; WORKERS="0 1"; INTERP_WORKERS=1
    TRACK_SEEDS=100; TRACK_BATCH=100
    STEP_ARGS=(--lengths 20 60 --nb_streamlines 50 --repeats 3)
fi

# bf16 autocasts on CPU too (torch.autocast), so both precisions run.
for precision in fp32 bf16; do
    echo "== training, $precision ($SECONDS s so far)"
    MP=()
    if [ "$precision" != fp32 ]; then MP=(--mixed_precision "$precision"); fi
    step "training $precision" python3 bench/bench_training.py "$FOLDER" \
        --device "$DEVICE" --nb_streamlines "$NB_STREAMLINES" \
        --batch_size "$BATCH" --rnn_layer_sizes 64 64 --workers $WORKERS \
        "${MP[@]}"
    echo "== training, $precision, interpolation in the workers (CPU)"
    if [ "$DEVICE" = cpu ]; then
        # On CPU the run above already interpolates in the collate step.
        echo "interpolation on the device vs in the workers: N/A on CPU" \
             "(both interpolate in the collate step: see the run above)"
    else
        step "training $precision, workers" python3 bench/bench_training.py \
            "$FOLDER" --device "$DEVICE" --nb_streamlines "$NB_STREAMLINES" \
            --batch_size "$BATCH" --rnn_layer_sizes 64 64 \
            --workers $INTERP_WORKERS "${MP[@]}" --interpolation workers
    fi
done

echo "== tracking, batch $TRACK_BATCH ($SECONDS s so far)"
if [ "$DEVICE" = cpu ]; then
    echo "tracking at batch $TRACK_BATCH on CPU to stay short (the GPU run" \
         "uses batch 10000)"
fi
step tracking python3 bench/bench_tracking.py --device "$DEVICE" \
    --batch_sizes "$TRACK_BATCH" --nb_seeds "$TRACK_SEEDS" --max_length 40
echo "== transformer tracking step ($SECONDS s so far)"
step "transformer step" python3 bench/bench_transformer_step.py --device "$DEVICE" "${STEP_ARGS[@]}"
echo "== bench_gpu.sh done in $SECONDS s"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf '!! failed steps: %s\n' "$(IFS=';'; echo "${FAILED[*]}")"
    exit 1
fi
