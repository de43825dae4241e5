"""Cost of planning an epoch of mixed batches over many subjects.

``plan_mixed_batches`` (the sampler's default, ``nb_subjects_per_batch``
unset) shuffles every streamline of every subject and cuts the order into
batches; each batch is then grouped by subject. This times the plan and
the reading of all its batches, and prints the peak RSS the plan added,
for S subjects of N streamlines each (costs of 1: batches of
--batch_size streamlines). Run each size in its own process: the peak RSS
is the process's.

    python bench/bench_planning.py 1000 10000 [--batch_size 1000]
"""
import argparse
import resource
import time

import numpy as np

from dwi_ml.batching.batch_planning import make_generator, plan_mixed_batches


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("nb_subjects", type=int)
    parser.add_argument("nb_streamlines", type=int,
                        help="Streamlines per subject.")
    parser.add_argument("--batch_size", type=float, default=1000.)
    args = parser.parse_args()
    if min(args.nb_subjects, args.nb_streamlines) < 1 or args.batch_size < 1:
        parser.error("expected sizes >= 1.")

    costs = [np.ones(args.nb_streamlines) for _ in range(args.nb_subjects)]
    before = _peak_rss_mib()
    start = time.perf_counter()
    plan = plan_mixed_batches(costs, args.batch_size,
                              make_generator(0, "training", 0))
    plan_s = time.perf_counter() - start
    added = _peak_rss_mib() - before
    start = time.perf_counter()
    segments = sum(len(plan[index]) for index in range(len(plan)))
    read_s = time.perf_counter() - start
    print(f"{args.nb_subjects} subjects x {args.nb_streamlines} "
          f"streamlines, batches of {args.batch_size:g}: plan {plan_s:.2f} "
          f"s, peak RSS +{added:.0f} MiB; {len(plan)} batches of "
          f"{segments / max(len(plan), 1):.0f} subjects on average, all "
          f"read in {read_s:.2f} s ({1e6 * read_s / max(len(plan), 1):.0f} "
          "us a batch)")


if __name__ == "__main__":
    main()
