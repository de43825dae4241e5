#!/usr/bin/env python3
"""Benchmark trilinear interpolation of a (64, 64, 40, 45) volume at ~1M points.

Prints points per second of the flat-gather and grid_sample implementations
and of the public ``interpolate_volume_at_coordinates`` (default method), the
largest difference between the two implementations, and the peak RSS.
"""
import argparse
import resource
import time

import numpy as np
import torch

from dwi_ml.data.processing.interpolation import (
    INTERPOLATION_METHODS,
    interpolate_volume_at_coordinates,
    prepare_volume_for_interpolation,
)


def _synchronize(device):
    """Wait for the device's queued kernels (CUDA runs them asynchronously)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _best_seconds(function, nb_repeats, device="cpu"):
    """Best wall and CPU times of ``nb_repeats`` calls, after a warm-up call.

    CPU time (all threads) is less sensitive to other processes sharing the
    machine than wall time. On CUDA the device is synchronized before each
    clock read, so that the kernels are timed, not their launches.
    """
    function()
    wall, cpu = [], []
    for _ in range(nb_repeats):
        _synchronize(device)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        function()
        _synchronize(device)
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return min(wall), min(cpu)


def _print_speed(name, nb_points, seconds):
    wall, cpu = seconds
    print(f"{name:>12}: {nb_points / wall / 1e6:6.2f} M points/s wall "
          f"({wall:.3f} s), {nb_points / cpu / 1e6:6.2f} M points/s per CPU "
          f"second ({cpu:.3f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nb_points", type=int, default=1_000_000)
    parser.add_argument("--shape", type=int, nargs=4, default=(64, 64, 40, 45),
                        metavar=("X", "Y", "Z", "F"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    volume = prepare_volume_for_interpolation(
        rng.random(args.shape, dtype=np.float32), device=args.device)
    # Points spread over the volume plus half a voxel outside, corner origin.
    coords = torch.from_numpy(
        (rng.random((args.nb_points, 3)) * (np.array(args.shape[:3]) + 1) - 0.5)
        .astype(np.float32)).to(args.device)

    print(f"volume {tuple(volume.shape)}, {args.nb_points} points, device "
          f"{args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for method in INTERPOLATION_METHODS:
        results[method] = interpolate_volume_at_coordinates(volume, coords, method)
        seconds = _best_seconds(
            lambda m=method: interpolate_volume_at_coordinates(volume, coords, m),
            args.repeats, args.device)
        _print_speed(method, args.nb_points, seconds)
    seconds = _best_seconds(lambda: interpolate_volume_at_coordinates(volume, coords),
                            args.repeats, args.device)
    _print_speed("chosen", args.nb_points, seconds)
    difference = (results["gather"] - results["grid_sample"]).abs().max().item()
    print(f"max |gather - grid_sample| = {difference:.2e}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
