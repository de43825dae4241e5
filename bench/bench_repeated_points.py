"""Cost of looking for points repeated in a row when streamlines are read.

Reference-made HDF5 files may hold them (ours never do): eager loading
looks once per subject, lazy reading once per batch
(``dwi_ml.data.dataset.sft_data.without_repeated_points``). This times
that look on packed random points without repeats (the usual case: one
pass, no copy) and with one repeat per streamline (a copy without them).

    python bench/bench_repeated_points.py [--points 7000 70000 7000000]
"""
import argparse
import time

import numpy as np

from dwi_ml.data.dataset.sft_data import without_repeated_points


def _best_seconds(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+",
                        default=[7000, 70000, 7000000],
                        help="Points per read (7000: a batch of 100 "
                             "streamlines of the bench data; 7 M: a subject "
                             "of 100k streamlines, eager).")
    parser.add_argument("--points_per_streamline", type=int, default=70)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    step = args.points_per_streamline
    print("points      case              best time   M points/s")
    for nb_points in args.points:
        data = rng.random((nb_points, 3)).astype(np.float32)
        lengths = np.full(nb_points // step, step)
        offsets = np.arange(0, len(lengths) * step, step)
        ids = np.arange(len(lengths))
        repeated = data.copy()
        repeated[offsets + 1] = repeated[offsets]
        repeats = max(3, int(2e6 // nb_points))
        for case, points in (("no repeat", data),
                             ("1 per streamline", repeated)):
            arguments = (points, offsets, lengths, ids, "bench.hdf5", "s/g")
            seconds = _best_seconds(
                lambda arguments=arguments: without_repeated_points(
                    *arguments), repeats)
            print(f"{nb_points:>9}   {case:<16} {seconds * 1e6:>10.1f} us "
                  f"{nb_points / seconds / 1e6:>11.1f}")


if __name__ == "__main__":
    main()
