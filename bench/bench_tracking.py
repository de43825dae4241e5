#!/usr/bin/env python3
"""Benchmark batched tracking: streamlines/s and steps/s per batch size.

The model is an UNTRAINED Learn2track (LSTM [64], 2 previous directions,
cosine regression or ``--dg_key``, seeded weights) on a random (96, 96, 96,
45) volume with 1 mm voxels and no tracking mask. With ``--theta 180`` (the
default) no streamline stops early: each runs until ``--max_length`` (or
the volume's border), so every batch size does the same work per
streamline. Both directions are tracked unless ``--forward_only``; the
backward half replays the forward half through the model first (those model
calls count as steps too: "model steps" below, next to the points actually
added).

With ``--transformer``, it instead times one tracking step of the three
UNTRAINED Transformer models (d_model 64, 4 heads, 2 layers per stack) at
streamline lengths ``--lengths``, for each of ``--transformer_batch_sizes``
streamlines stepping together: the cached step (``forward_step``) next to
the full re-forward of the partial streamlines, and the ratio of the cached
step at the longest length to the shortest (target <= 1.5). The functions
are those of ``bench_transformer_step.py``, which has more options.
"""
import argparse
import resource
import time
from types import SimpleNamespace

import numpy as np
import torch

from dwi_ml.models import Learn2TrackModel
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.stopping import TrackingMask


def _make_tracker(args):
    torch.manual_seed(0)
    model = Learn2TrackModel("bench", nb_features=args.shape[3],
                             step_size=args.step_size, nb_previous_dirs=2,
                             rnn_layer_sizes=[64], dg_key=args.dg_key)
    volume = np.random.default_rng(0).random(args.shape, dtype=np.float32)
    affine = np.eye(4)
    return BatchedTracker(
        model, volume, affine, TrackingMask(args.shape[:3], None, args.device),
        args.step_size, max_angle_deg=args.theta,
        max_length_mm=args.max_length, track_forward_only=args.forward_only,
        algo=args.algo, rng_seed=0, device=args.device)


def _bench(tracker, seeds, batch_size):
    """Track ``seeds`` by batches of ``batch_size``; print one row."""
    on_cuda = str(tracker.device).startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = tracker.track_in_batches(seeds, batch_size, disable_progress=True)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    lengths = result.streamlines._lengths
    added = int(np.sum(lengths - 1))
    # The backward pass feeds every forward point again to the model.
    model_steps = added + (0 if tracker.track_forward_only
                           else int(np.sum(lengths)))
    print(f"batch {batch_size:5d}: {len(seeds):5d} streamlines, "
          f"{np.mean(lengths):5.1f} points each | "
          f"{len(seeds) / wall:8.1f} streamlines/s, "
          f"{added / wall:9.0f} points/s, {model_steps / wall:9.0f} model "
          f"steps/s (wall {wall:.2f} s, CPU {cpu:.2f} s), GPU peak "
          + (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
             if on_cuda else "N/A on CPU"))


def bench_transformer_steps(args):
    """Cached step vs re-forward of each Transformer, per batch size."""
    import bench_transformer_step as step_bench
    for batch_size in args.transformer_batch_sizes:
        for model_type in sorted(step_bench.MODEL_TYPES):
            options = SimpleNamespace(
                model_type=model_type, nb_streamlines=batch_size,
                lengths=sorted(args.lengths), repeats=args.repeats,
                d_model=64, nheads=4, n_layers=2, nb_features=args.shape[3],
                device=args.device, attention_window=args.attention_window,
                position_encoding=args.position_encoding)
            model = step_bench._make_model(options)
            cached = step_bench.bench_cached(model, options)
            full = step_bench.bench_full(model, options)
            text = " | ".join(
                f"{length}: {cached[length][0]:7.2f} ms (CPU "
                f"{cached[length][1]:7.2f}), re-forward "
                f"{full[length][0]:8.1f} ms (CPU {full[length][1]:8.1f})"
                for length in options.lengths)
            first, last = options.lengths[0], options.lengths[-1]
            print(f"batch {batch_size:5d} {model_type:21s} {text} | "
                  f"{last} / {first}: {cached[last][0] / cached[first][0]:.2f}"
                  f" (CPU {cached[last][1] / cached[first][1]:.2f})")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+",
                        default=(1, 100, 1000))
    parser.add_argument("--nb_seeds", type=int, nargs="+",
                        default=(20, 1000, 3000),
                        help="Seeds tracked for each batch size.")
    parser.add_argument("--shape", type=int, nargs=4, default=(96, 96, 96, 45),
                        metavar=("X", "Y", "Z", "F"))
    parser.add_argument("--step_size", type=float, default=0.5)
    parser.add_argument("--max_length", type=float, default=40.0)
    parser.add_argument("--theta", type=float, default=180.0)
    parser.add_argument("--forward_only", action="store_true")
    parser.add_argument("--dg_key", default="cosine-regression",
                        help="Direction getter of the model (default: "
                             "cosine-regression).")
    parser.add_argument("--algo", default="det", choices=("det", "prob"),
                        help="Tracking algorithm; 'prob' needs a "
                             "probabilistic --dg_key (default: det).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; one is fastest for these "
                             "small per-step operations on a shared "
                             "machine.")
    parser.add_argument("--transformer", action="store_true",
                        help="Time one Transformer tracking step at "
                             "--lengths instead (see above); default: "
                             "track with Learn2track.")
    parser.add_argument("--transformer_batch_sizes", type=int, nargs="+",
                        default=(100, 1000),
                        help="Streamlines stepping together, with "
                             "--transformer (default: 100 1000).")
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=(20, 100, 200),
                        help="Streamline lengths (points) at which a step "
                             "is timed, with --transformer (default: 20 "
                             "100 200).")
    parser.add_argument("--position_encoding", default="sinusoidal",
                        choices=("sinusoidal", "learned", "none", "alibi"),
                        help="Position encoding of the Transformers "
                             "(--transformer; default: sinusoidal).")
    parser.add_argument("--attention_window", type=int, default=None,
                        help="With --transformer: the models' attention "
                             "window (default: none, every earlier "
                             "point).")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Steps timed from each length, with "
                             "--transformer; the median is shown "
                             "(default: 5).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.transformer:
        print(f"device {args.device}, {torch.get_num_threads()} thread(s), "
              f"untrained Transformers, d_model 64, 4 heads, 2 layers per "
              f"stack, attention window {args.attention_window}, "
              f"{args.shape[3]} features; ms per step (cached: "
              f"median of --repeats), wall and CPU")
        bench_transformer_steps(args)
        return
    if len(args.nb_seeds) != len(args.batch_sizes):
        parser.error("--nb_seeds needs one count per batch size.")

    tracker = _make_tracker(args)
    rng = np.random.default_rng(0)
    centre = np.asarray(args.shape[:3], dtype=np.float32) / 2
    print(f"device {args.device}, {torch.get_num_threads()} thread(s), "
          f"{'forward only' if args.forward_only else 'both directions'}, "
          f"step {args.step_size} mm, max {args.max_length} mm, untrained "
          f"LSTM [64], {args.dg_key}, {args.algo}")
    # Warm-up (first calls, allocations): not printed.
    tracker.track_in_batches(centre + rng.uniform(-5, 5, (8, 3)), 8,
                             disable_progress=True)
    for batch_size, nb_seeds in zip(args.batch_sizes, args.nb_seeds):
        seeds = (centre + rng.uniform(-5, 5, (nb_seeds, 3))).astype(
            np.float32)
        _bench(tracker, seeds, batch_size)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          " MiB (this process, warm-up included)")


if __name__ == "__main__":
    main()
