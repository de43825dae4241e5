#!/usr/bin/env python3
"""Benchmark tractogram scoring: seconds and peak RSS.

The reference is ``--nb_reference`` streamlines in ``--nb_bundles`` curved
bundles of the synthetic generator, points every 0.5 mm, in a
``--shape`` grid of 1 mm voxels. The tracked tractogram has
``--nb_tracked`` streamlines: 80 % are noisy copies of reference
streamlines (points every 1 mm, moved by up to 1 voxel), 20 % random straight
lines. Everything is scored, with bundle labels, by ``score_tractogram``
in one process.
"""
import argparse
import resource
import time

import numpy as np
from nibabel.streamlines import ArraySequence

from dwi_ml.data.synthetic.bundles import (
    make_bundle_streamlines,
    make_centrelines,
)
from dwi_ml.data.synthetic.subject import (
    bundle_radius_mm,
    centreline_margin_mm,
)
from dwi_ml.tracking.scoring import score_tractogram


def _make_reference(args, rng):
    shape = np.asarray(args.shape, dtype=float)
    voxel_size = np.ones(3)
    centrelines = make_centrelines(
        args.nb_bundles, shape, centreline_margin_mm(args.shape, voxel_size),
        rng)
    per_bundle = args.nb_reference // args.nb_bundles
    bundles = [make_bundle_streamlines(
        centreline, per_bundle, 0.5, bundle_radius_mm(args.shape, voxel_size),
        rng) for centreline in centrelines]
    streamlines = ArraySequence([s for bundle in bundles for s in bundle])
    labels = np.repeat(np.arange(args.nb_bundles), per_bundle)
    return streamlines, labels


def _make_tracked(reference, args, rng):
    nb_copies = int(0.8 * args.nb_tracked)
    picked = rng.integers(0, len(reference), nb_copies)
    copies = [reference[i][::2] + rng.uniform(-1, 1, 3) for i in picked]
    shape = np.asarray(args.shape, dtype=float)
    nb_random = args.nb_tracked - nb_copies
    starts = rng.uniform(0, 1, (nb_random, 3)) * shape
    ends = rng.uniform(0, 1, (nb_random, 3)) * shape
    t = np.linspace(0., 1., 80)[None, :, None]
    lines = starts[:, None, :] + t * (ends - starts)[:, None, :]
    return ArraySequence(copies + list(lines))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--nb_tracked", type=int, default=10000)
    parser.add_argument("--nb_reference", type=int, default=5000)
    parser.add_argument("--nb_bundles", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 96))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    reference, labels = _make_reference(args, rng)
    tracked = _make_tracked(reference, args, rng)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(tracked)} tracked streamlines ({len(tracked._data)} points) "
          f"vs {len(reference)} reference streamlines "
          f"({len(reference._data)} points), {args.nb_bundles} bundles, "
          f"grid {tuple(args.shape)}")

    wall_start, cpu_start = time.perf_counter(), time.process_time()
    scores = score_tractogram(tracked, reference, args.shape, np.eye(4),
                              labels)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scored in {wall:.2f} s wall ({cpu:.2f} s CPU); peak RSS "
          f"{rss:.0f} MiB ({rss_before:.0f} MiB before scoring)")
    print("  ".join(f"{key} {scores[key]:.3f}" for key in (
        "points_within_1_vox", "points_aligned", "VC", "IC", "NC", "VB",
        "IB", "mean_F1")))


if __name__ == "__main__":
    main()
