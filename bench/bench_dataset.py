#!/usr/bin/env python3
"""Benchmark reading random batches of streamlines, eager vs lazy.

For each mode (in its own subprocess, so that peak RSS is its own), loads
every split of HDF5_FILE with only the streamline group NAME (no volumes),
then reads NB_BATCHES random batches of 100 and of 1000 streamline ids
(each batch from one random subject, ids unsorted and without repeats) with
``get_streamlines``. Prints streamlines/s and points/s per batch size, the
load time, the peak RSS (ru_maxrss) and its growth during loading and
reading. Run it twice: the first run also warms the page cache.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.script_args import check_inputs_exist

BATCH_SIZES = (100, 1000)


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(hdf5_file, streamline_group, lazy, nb_batches, seed=0):
    """Load the file in one mode and time random batches; returns a dict."""
    from dwi_ml.data.dataset import MultiSubjectDataset

    rss_before = _peak_rss_mib()
    start = time.perf_counter()
    dataset = MultiSubjectDataset(hdf5_file, lazy=lazy)
    dataset.load_data(volume_groups=[], streamline_groups=[streamline_group])
    load_s = time.perf_counter() - start
    rss_loaded = _peak_rss_mib()
    sft_data_list = [
        subset.get_subject(i).sft_data_list[0]
        for subset in (dataset.training_set, dataset.validation_set,
                       dataset.testing_set)
        for i in range(subset.nb_subjects)]
    rng = np.random.default_rng(seed)
    result = {"load_s": load_s, "nb_subjects": len(sft_data_list),
              "nb_streamlines": int(sum(s.nb_streamlines
                                        for s in sft_data_list))}
    for batch_size in BATCH_SIZES:
        batches = []
        for _ in range(nb_batches + 1):
            sft_data = sft_data_list[rng.integers(len(sft_data_list))]
            batches.append((sft_data, rng.choice(
                sft_data.nb_streamlines,
                min(batch_size, sft_data.nb_streamlines), replace=False)))
        batches[0][0].get_streamlines(batches[0][1])  # warm-up
        nb_points = 0
        start = time.perf_counter()
        for sft_data, ids in batches[1:]:
            nb_points += len(sft_data.get_streamlines(ids)._data)
        seconds = time.perf_counter() - start
        nb_streamlines = sum(len(ids) for _, ids in batches[1:])
        result[f"streamlines_per_s_{batch_size}"] = nb_streamlines / seconds
        result[f"points_per_s_{batch_size}"] = nb_points / seconds
    result.update(rss_start_mib=rss_before, rss_loaded_mib=rss_loaded,
                  rss_peak_mib=_peak_rss_mib())
    return result


def _run_in_subprocess(args, mode):
    command = [sys.executable, __file__, args.hdf5_file, "--streamline_group",
               args.streamline_group, "--nb_batches", str(args.nb_batches),
               "--_mode", mode]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        if done.returncode == 2:   # A user error: the child's one line.
            raise DwiMLUserError(lines[-1].split(": error: ", 1)[-1])
        sys.exit(f"bench_dataset.py: the {mode} run failed (exit status "
                 f"{done.returncode}):\n" + "\n".join(lines[-20:]))
    return json.loads(done.stdout.strip().splitlines()[-1])


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hdf5_file")
    parser.add_argument("--streamline_group", required=True)
    parser.add_argument("--nb_batches", type=int, default=50)
    parser.add_argument("--_mode", choices=("eager", "lazy"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_inputs_exist(args.hdf5_file, what="hdf5_file")
    if args._mode:
        print(json.dumps(measure(args.hdf5_file, args.streamline_group,
                                 args._mode == "lazy", args.nb_batches)))
        return

    results = {mode: _run_in_subprocess(args, mode)
               for mode in ("eager", "lazy")}
    first = results["eager"]
    print(f"{args.hdf5_file}: {first['nb_subjects']} subjects, "
          f"{first['nb_streamlines']} streamlines, {args.nb_batches} batches "
          "per size")
    for mode, result in results.items():
        loading_mib = result["rss_loaded_mib"] - result["rss_start_mib"]
        reading_mib = result["rss_peak_mib"] - result["rss_loaded_mib"]
        print(f"{mode:>5}: load {result['load_s']:.2f} s, peak RSS "
              f"{result['rss_peak_mib']:.0f} MiB (+{loading_mib:.0f} loading, "
              f"+{reading_mib:.0f} reading)")
        for batch_size in BATCH_SIZES:
            ratio = (result[f"streamlines_per_s_{batch_size}"]
                     / first[f"streamlines_per_s_{batch_size}"])
            print(f"       batch {batch_size:>4}: "
                  f"{result[f'streamlines_per_s_{batch_size}'] / 1e3:8.1f} k "
                  f"streamlines/s, "
                  f"{result[f'points_per_s_{batch_size}'] / 1e6:7.2f} M "
                  f"points/s ({100 * ratio:.0f}% of eager)")


if __name__ == "__main__":
    main()
