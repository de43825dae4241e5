#!/usr/bin/env python3
"""Benchmark batched tracking: streamlines/s and steps/s per batch size.

The model is an UNTRAINED Learn2track (LSTM [64], 2 previous directions,
cosine regression, seeded weights) on a random (96, 96, 96, 45) volume with
1 mm voxels and no tracking mask. With ``--theta 180`` (the default) no
streamline stops early: each runs until ``--max_length`` (or the volume's
border), so every batch size does the same work per streamline. Both
directions are tracked unless ``--forward_only``; the backward half replays
the forward half through the model first (those model calls count as steps
too: "model steps" below, next to the points actually added).
"""
import argparse
import time

import numpy as np
import torch

from dwi_ml.models import Learn2TrackModel
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.stopping import TrackingMask


def _make_tracker(args):
    torch.manual_seed(0)
    model = Learn2TrackModel("bench", nb_features=args.shape[3],
                             step_size=args.step_size, nb_previous_dirs=2,
                             rnn_layer_sizes=[64])
    volume = np.random.default_rng(0).random(args.shape, dtype=np.float32)
    affine = np.eye(4)
    return BatchedTracker(
        model, volume, affine, TrackingMask(args.shape[:3], None, args.device),
        args.step_size, max_angle_deg=args.theta,
        max_length_mm=args.max_length, track_forward_only=args.forward_only,
        device=args.device)


def _bench(tracker, seeds, batch_size):
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
          f"steps/s (wall {wall:.2f} s, CPU {cpu:.2f} s)")


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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; one is fastest for these "
                             "small per-step operations on a shared "
                             "machine.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if len(args.nb_seeds) != len(args.batch_sizes):
        parser.error("--nb_seeds needs one count per batch size.")

    tracker = _make_tracker(args)
    rng = np.random.default_rng(0)
    centre = np.asarray(args.shape[:3], dtype=np.float32) / 2
    print(f"device {args.device}, {torch.get_num_threads()} thread(s), "
          f"{'forward only' if args.forward_only else 'both directions'}, "
          f"step {args.step_size} mm, max {args.max_length} mm, untrained "
          f"LSTM [64]")
    _bench(tracker, centre + rng.uniform(-5, 5, (8, 3)), 8)   # warm-up
    for batch_size, nb_seeds in zip(args.batch_sizes, args.nb_seeds):
        seeds = (centre + rng.uniform(-5, 5, (nb_seeds, 3))).astype(
            np.float32)
        _bench(tracker, seeds, batch_size)


if __name__ == "__main__":
    main()
