#!/usr/bin/env python3
"""Benchmark the training data pipeline: BatchSampler + BatchLoaderOneInput.

Runs the sampler and the loader through ``make_dataloader`` on the training
set of HDF5_FILE (any file in the reference dwi_ml layout; name its groups
with --input_group and --streamline_group), with training augmentations
(noise 0.1 mm on the inputs, split 0.5, reverse 0.5 by default) and
batches of --batch_size streamlines. Cases: no neighbourhood and an 'axes'
neighbourhood of radius 1 (1 mm), eager and lazy datasets, 0 and 2
DataLoader workers. Each case runs in its own subprocess and reports
streamlines/s (after splitting, as the model sees them), centre points/s,
the peak RSS of the main process and of the largest worker
(``resource.getrusage``). The first batch (worker start, lazy cache fill)
is not timed.

The "bare interpolation" floor, in another subprocess, times only
``torch.nn.functional.grid_sample`` on the same input points and volume:
one call per batch and subject (as the loader makes), and one call on all
the points at once. The last column is loader points/s over the per-batch
floor (with a neighbourhood, the floor interpolates the 7 points of each
centre too).

With --make_synthetic FOLDER, first writes a synthetic dataset of 3
subjects x --nb_streamlines streamlines (45 features: b0 + 44 directions)
in FOLDER and its HDF5 at HDF5_FILE (one training subject).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.output_folders import check_output_folder
from dwi_ml.io_utils.script_args import check_inputs_exist, check_output_free

CASES = [(neighborhood, lazy, nb_workers)
         for neighborhood in ("none", "axes")
         for lazy in (False, True)
         for nb_workers in (0, 1, 2, 4)]
AXES_RADIUS, AXES_RESOLUTION_MM = 1, 1.
BARE_REPEATS = 3
# The main process stays light (no torch, no data): a child's ru_maxrss
# starts from its parent's RSS at fork, and every job runs in a child.


def _peak_rss_mib(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024


def _make_pipeline(args, neighborhood, lazy, interpolation_device=None):
    """Dataset, sampler and loader of one case (training set only)."""
    from dwi_ml.batching.batch_loader import BatchLoaderOneInput
    from dwi_ml.batching.batch_sampler import BatchSampler
    from dwi_ml.data.dataset.multi_subject_dataset import MultiSubjectDataset
    from dwi_ml.data.processing.input_spec import InputSpec

    dataset = MultiSubjectDataset(args.hdf5_file, lazy=lazy)
    dataset.load_data(load_validation=False, load_testing=False,
                      volume_groups=[args.input_group],
                      streamline_groups=[args.streamline_group])
    sampler = BatchSampler(dataset, args.streamline_group, args.batch_size,
                           args.batch_size, "nb_streamlines", seed=args.seed)
    with_axes = neighborhood == "axes"
    loader = BatchLoaderOneInput(
        dataset, args.streamline_group, args.input_group,
        split_ratio=args.split, reverse_ratio=args.reverse,
        noise_gaussian_size_forward=args.noise,
        input_spec=InputSpec.from_options(
            neighborhood_type="axes" if with_axes else None,
            neighborhood_radius=AXES_RADIUS if with_axes else None,
            neighborhood_resolution=AXES_RESOLUTION_MM if with_axes else None),
        seed=args.seed, interpolation_device=interpolation_device)
    return dataset, sampler, loader


def measure_case(args, neighborhood, lazy, nb_workers):
    """Time the DataLoader of one case over ``args.nb_batches`` batches."""
    import torch

    from dwi_ml.batching.dataloaders import make_dataloader

    _, sampler, loader = _make_pipeline(args, neighborhood, lazy)
    dataloader = make_dataloader(sampler, loader, "training", nb_workers,
                                 generator=torch.Generator())
    iterator = iter(dataloader)
    first = next(iterator)
    assert first.inputs is not None and len(first.inputs) == len(
        first.input_points)
    nb_streamlines = nb_points = nb_batches = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in iterator:
        nb_streamlines += batch.nb_streamlines
        nb_points += len(batch.input_points)
        nb_batches += 1
        if nb_batches == args.nb_batches - 1:
            break
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    # Persistent workers exit here; their peak RSS shows in RUSAGE_CHILDREN.
    del iterator, dataloader
    return {"nb_batches": nb_batches, "seconds": seconds,
            "streamlines_per_s": nb_streamlines / seconds,
            "points_per_s": nb_points / seconds,
            # Main process only: all the work with 0 workers.
            "points_per_cpu_s": nb_points / cpu_seconds,
            "rss_main_mib": _peak_rss_mib(),
            "rss_worker_mib": (_peak_rss_mib(resource.RUSAGE_CHILDREN)
                               if nb_workers else 0.)}


def measure_bare(args, neighborhood):
    """Time interpolation alone on the loader's points of the same batches.

    The floor is ``grid_sample``; dwi_ml's own interpolation
    (``interpolate_volume_at_coordinates``, what the loader calls) is timed
    on the same points too, to show the share of the loader's time it takes.
    """
    import numpy as np
    import torch
    import torch.nn.functional as torch_functional

    from dwi_ml.batching.dataloaders import make_dataloader
    from dwi_ml.data.processing.interpolation import (
        interpolate_volume_at_coordinates,
    )
    from dwi_ml.data.processing.neighborhood import get_neighborhood_offsets

    dataset, sampler, loader = _make_pipeline(args, "none", lazy=False,
                                              interpolation_device="cpu")
    subset = dataset.training_set
    volumes, calls = {}, []
    for batch_index, batch in enumerate(make_dataloader(sampler, loader,
                                                        "training")):
        if batch_index == args.nb_batches:
            break
        point_subjects = torch.repeat_interleave(batch.subject_indices,
                                                 batch.lengths)
        for subj_idx in torch.unique(batch.subject_indices).tolist():
            if subj_idx not in volumes:
                mri = subset.get_subject(subj_idx).mri_data_list[0]
                volumes[subj_idx] = _bare_volume(
                    mri, neighborhood, get_neighborhood_offsets(
                        None if neighborhood == "none" else "axes",
                        AXES_RADIUS, AXES_RESOLUTION_MM,
                        np.asarray(mri.affine)))
            _, _, offsets, dims = volumes[subj_idx]
            centres = batch.input_points[point_subjects == subj_idx]
            points = (centres[:, None] + offsets[None]).reshape(-1, 3)
            # Corner origin to grid_sample's [-1, 1] (align_corners=False);
            # the grid's last axis is (z, y, x).
            grid = (2 * points / dims - 1).flip(-1).reshape(1, 1, 1, -1, 3)
            calls.append((subj_idx, len(centres), points, grid.contiguous()))

    def grid_sample(volume, grid):
        return torch_functional.grid_sample(
            volume, grid, mode="bilinear", padding_mode="border",
            align_corners=False)

    nb_centre_points = sum(call[1] for call in calls)
    per_batch = _best_seconds(lambda: [
        grid_sample(volumes[subj][0], grid) for subj, _, _, grid in calls])
    all_grids = {subj: torch.cat([call[3] for call in calls
                                  if call[0] == subj], dim=3)
                 for subj in volumes}
    all_at_once = _best_seconds(lambda: [
        grid_sample(volumes[subj][0], grid) for subj, grid in all_grids.items()])
    dwi_ml = _best_seconds(lambda: [
        interpolate_volume_at_coordinates(volumes[subj][1], points)
        for subj, _, points, _ in calls])
    return {"points_per_s": nb_centre_points / per_batch[0],
            "points_per_cpu_s": nb_centre_points / per_batch[1],
            "points_per_s_all_at_once": nb_centre_points / all_at_once[0],
            "dwi_ml_points_per_cpu_s": nb_centre_points / dwi_ml[1],
            "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
            "nb_centre_points": nb_centre_points,
            "nb_features": int(volumes[calls[0][0]][1].shape[3])}


# Stages of one batch, timed by wrapping the functions that do them:
# (label, owner, attribute). Nested ones are subtracted from their caller.
PROFILE_STAGES = [
    ("random stream (seeded Generator)", "BatchLoaderOneInput",
     "make_generator"),
    ("reading (read_points_of_many)", "batch_loader", "read_points_of_many"),
    ("splitting (split_ranges)", "batch_loader", "split_ranges"),
    ("reversing (reverse_rows)", "batch_loader", "reverse_rows"),
    ("rows, unreversed (ranges_to_indices)", "batch_loader",
     "ranges_to_indices"),
    ("noise draws (draw_noise_vox_runs)", "batch_loader",
     "draw_noise_vox_runs"),
    ("gather + noise add (_load_request)", "BatchLoaderOneInput",
     "_load_request"),
    ("interpolation (compute_inputs)", "BatchLoaderOneInput",
     "compute_inputs"),
    ("other (load_batch)", "BatchLoaderOneInput", "load_batch"),
]
# The stages each one calls (its own time excludes theirs).
_NESTED = {"gather + noise add (_load_request)": [
    label for label, _, _ in PROFILE_STAGES[:6]],
    "other (load_batch)": [PROFILE_STAGES[index][0] for index in (6, 7)]}


def _time_stages(totals):
    """Wrap the stage functions so that each call adds its process time to
    ``totals[label]`` (about 1 us per call for the two clock reads)."""
    from dwi_ml.batching import batch_loader, loaded_batch
    from dwi_ml.data.dataset import sft_data

    owners = {"BatchLoaderOneInput": batch_loader.BatchLoaderOneInput,
              "_SFTDataBase": sft_data._SFTDataBase,
              "batch_loader": batch_loader,
              "LoadedBatch": loaded_batch.LoadedBatch}
    for label, owner_name, attribute in PROFILE_STAGES:
        owner = owners[owner_name]
        function = owner.__dict__[attribute]
        is_classmethod = isinstance(function, classmethod)
        function = function.__func__ if is_classmethod else function

        def timed(*args, _function=function, _label=label, **kwargs):
            start = time.process_time()
            try:
                return _function(*args, **kwargs)
            finally:
                totals[_label] += time.process_time() - start
        setattr(owner, attribute, classmethod(timed) if is_classmethod
                else timed)


def profile_batches(args, lazy):
    """Process time per stage of the loader's batches, in this process.

    No cProfile (its per-call cost inflates the many small calls): the
    stage functions are wrapped with ``time.process_time``. Planning (the
    sampler's epoch plan) is timed apart. Lazy datasets run the requests
    twice: the first pass verifies the checksums of every chunk it
    touches for the first time (once per process), the second is the
    steady state. Then the same requests go through ``make_dataloader``
    (0 workers): its cost per batch beyond ``load_batch``'s.
    """
    from collections import defaultdict

    from dwi_ml.batching.dataloaders import BatchRequest, make_dataloader

    _, sampler, loader = _make_pipeline(args, "none", lazy)
    start = time.process_time()
    plan = sampler.for_split("training")
    requests = [BatchRequest("training", 0, index, subject_ids)
                for index, subject_ids in enumerate(plan)][:args.nb_batches]
    planning = time.process_time() - start
    loader.load_batch(requests[0])  # warm-up
    totals = defaultdict(float)
    _time_stages(totals)
    passes = []
    for _ in range(2 if lazy else 1):
        totals.clear()
        start = time.process_time()
        nb_points = sum(len(loader.load_batch(request).input_points)
                        for request in requests[1:])
        cpu_seconds = time.process_time() - start
        stages = {label: totals[label] - sum(
            totals[nested] for nested in _NESTED.get(label, []))
            for label, _, _ in PROFILE_STAGES}
        nb_batches = len(requests) - 1
        passes.append({
            "total_per_batch": cpu_seconds / nb_batches,
            "stages_per_batch": {label: seconds / nb_batches
                                 for label, seconds in stages.items()},
            "points_per_cpu_s": nb_points / cpu_seconds,
            "nb_points_per_batch": nb_points / nb_batches})
    # The epoch's plan (planning, above) is made with the iterator.
    iterator = iter(make_dataloader(sampler, loader, "training"))
    totals.clear()
    start = time.process_time()
    for index, _ in enumerate(iterator):
        if index == args.nb_batches - 1:
            break
    dataloader_seconds = time.process_time() - start
    overhead = dataloader_seconds - totals["other (load_batch)"]
    return {"planning_per_batch": planning / max(len(plan), 1),
            "dataloader_overhead_per_batch": overhead / args.nb_batches,
            "passes": passes}


def print_profile(args):
    for lazy in (False, True):
        result = _run_in_subprocess(args, {"kind": "profile", "lazy": lazy})
        for index, one_pass in enumerate(result["passes"]):
            total = one_pass["total_per_batch"]
            name = "eager" if not lazy else (
                "lazy, first pass (first reads verify checksums)"
                if index == 0 else "lazy, second pass")
            print(f"{name}: {1e3 * total:.3f} ms per batch of process "
                  f"time ({one_pass['nb_points_per_batch']:.0f} points; "
                  f"{one_pass['points_per_cpu_s'] / 1e6:.2f} M points per "
                  f"CPU s)")
            for label, seconds in one_pass["stages_per_batch"].items():
                print(f"  {label:<38} {1e3 * seconds:6.3f} ms "
                      f"{100 * seconds / total:5.1f} %")
        print(f"  planning (sampler, per batch of the epoch) "
              f"{1e3 * result['planning_per_batch']:.3f} ms; DataLoader "
              f"(0 workers) beyond load_batch "
              f"{1e3 * result['dataloader_overhead_per_batch']:.3f} ms")


def _bare_volume(mri, neighborhood, offsets_vox):
    """Channels-first and channels-last volumes, offsets (voxels), dims."""
    import torch

    volume = mri.as_tensor("cpu")
    return (volume.permute(3, 0, 1, 2)[None].contiguous(), volume,
            torch.from_numpy(offsets_vox).float(),
            torch.tensor(volume.shape[:3]))


def _best_seconds(function):
    """Best wall and CPU seconds of a few calls, after a warm-up call."""
    function()
    wall, cpu = [], []
    for _ in range(BARE_REPEATS):
        start, cpu_start = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return min(wall), min(cpu)


def _run_in_subprocess(args, job):
    command = [sys.executable, os.path.abspath(__file__), args.hdf5_file,
               "--input_group", args.input_group, "--streamline_group",
               args.streamline_group, "--batch_size", str(args.batch_size),
               "--nb_batches", str(args.nb_batches), "--noise",
               str(args.noise), "--split", str(args.split), "--reverse",
               str(args.reverse), "--seed", str(args.seed),
               "--threads", str(args.threads), "--_job", json.dumps(job)]
    if job["kind"] == "synthetic":
        command += ["--make_synthetic", args.make_synthetic,
                    "--nb_streamlines", str(args.nb_streamlines)]
        command += ["-f"] if args.overwrite else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 2:
        # A user error in the child: its one line, without its prefix.
        last = (result.stderr.strip().splitlines() or [""])[-1]
        raise DwiMLUserError(last.split(": error: ", 1)[-1])
    if result.returncode != 0:
        sys.exit(f"{job} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_synthetic(args):
    """Write the synthetic dataset and its HDF5 (3 subjects)."""
    from dwi_ml.data.hdf5.creation import create_hdf5_dataset
    from dwi_ml.data.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    paths = make_synthetic_dataset(args.make_synthetic, nb_subjects=3,
                                   nb_streamlines=args.nb_streamlines,
                                   seed=args.seed, overwrite=args.overwrite)
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        args.hdf5_file, paths.config,
                        *(paths.splits[split] for split in
                          ("training", "validation", "testing")),
                        overwrite=args.overwrite)
    return {"seconds": time.perf_counter() - start}


def _run_job(args, job):
    """Run one job in this (child) process; returns a JSON-able dict."""
    if job["kind"] == "synthetic":
        return make_synthetic(args)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if job["kind"] == "profile":
        return profile_batches(args, job["lazy"])
    if job["kind"] == "bare":
        return measure_bare(args, job["neighborhood"])
    return measure_case(args, job["neighborhood"], job["lazy"],
                        job["nb_workers"])


def _build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hdf5_file")
    parser.add_argument("--input_group", default="input")
    parser.add_argument("--streamline_group", default="streamlines")
    parser.add_argument("--batch_size", type=int, default=100,
                        help="streamlines per batch, before splitting")
    parser.add_argument("--nb_batches", type=int, default=200,
                        help="batches per case (at most one epoch)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="forward noise sigma, mm")
    parser.add_argument("--split", type=float, default=0.5)
    parser.add_argument("--reverse", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process, 0 for "
                        "torch's choice (DataLoader workers always use 1). "
                        "Default 1: on a shared machine, many threads make "
                        "small per-batch ops wait for each other")
    parser.add_argument("--neighborhoods", nargs="+", default=["none", "axes"],
                        choices=["none", "axes"],
                        help="cases to run (default: none axes)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts to run (default: 0 2)")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the batches (0 workers, no "
                        "neighbourhood, eager then lazy): process time per "
                        "stage, measured by timing the stage functions "
                        "(not cProfile)")
    parser.add_argument("--make_synthetic", metavar="FOLDER")
    parser.add_argument("--nb_streamlines", type=int, default=20_000,
                        help="per synthetic subject")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="overwrite FOLDER and HDF5_FILE")
    parser.add_argument("--_job", help=argparse.SUPPRESS)
    return parser


@script_entry_point
def main(argv=None):
    args = _build_parser().parse_args(argv)
    if args._job:
        print(json.dumps(_run_job(args, json.loads(args._job))))
        return
    if args.make_synthetic:
        check_output_folder(args.make_synthetic, "synthetic_dataset",
                            args.overwrite, what="--make_synthetic folder")
        check_output_free(args.hdf5_file, args.overwrite, what="HDF5_FILE")
        result = _run_in_subprocess(args, {"kind": "synthetic"})
        print(f"synthetic dataset (3 x {args.nb_streamlines} streamlines) "
              f"and HDF5 written in {result['seconds']:.1f} s")
    else:
        # With --make_synthetic, HDF5_FILE is this run's output, then read
        # by the benchmark's children only.
        check_inputs_exist(args.hdf5_file, what="HDF5_FILE")
    if args.profile:
        print_profile(args)
        return

    start = time.perf_counter()
    bare = {neighborhood: _run_in_subprocess(
        args, {"kind": "bare", "neighborhood": neighborhood})
        for neighborhood in args.neighborhoods}
    first = bare[args.neighborhoods[0]]
    print(f"{args.hdf5_file}: {first['nb_features']} features, "
          f"batches of {args.batch_size} streamlines, noise {args.noise} mm, "
          f"split {args.split}, reverse {args.reverse}, torch "
          f"{first['torch']}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    for neighborhood, result in bare.items():
        print(f"bare grid_sample, neighbourhood {neighborhood}: "
              f"{result['points_per_s'] / 1e6:.2f} M points/s per batch "
              f"({result['points_per_cpu_s'] / 1e6:.2f} per CPU s), "
              f"{result['points_per_s_all_at_once'] / 1e6:.2f} M points/s "
              f"all at once ({result['nb_centre_points']} centre points); "
              f"dwi_ml interpolation per batch "
              f"{result['dwi_ml_points_per_cpu_s'] / 1e6:.2f} M points/CPU s")
    print("M points/s: centre points; per CPU s: main process, 0 workers "
          "only; vs bare: wall points/s (CPU points/s) over the floor's")
    print(f"{'neighb.':>7} {'mode':>5} {'workers':>7} {'batches':>7} "
          f"{'k stream/s':>10} {'M points/s':>10} {'per CPU s':>9} "
          f"{'RSS MiB':>8} {'worker MiB':>10} {'vs bare':>13}")
    for neighborhood, lazy, nb_workers in CASES:
        if (neighborhood not in args.neighborhoods
                or nb_workers not in args.workers):
            continue
        result = _run_in_subprocess(
            args, {"kind": "case", "neighborhood": neighborhood,
                   "lazy": lazy, "nb_workers": nb_workers})
        floor = bare[neighborhood]
        ratio = f"{100 * result['points_per_s'] / floor['points_per_s']:.0f}%"
        per_cpu = "-"
        if nb_workers == 0:
            per_cpu = f"{result['points_per_cpu_s'] / 1e6:.2f}"
            cpu_ratio = result["points_per_cpu_s"] / floor["points_per_cpu_s"]
            ratio += f" ({100 * cpu_ratio:.0f}%)"
        print(f"{neighborhood:>7} {'lazy' if lazy else 'eager':>5} "
              f"{nb_workers:>7} {result['nb_batches']:>7} "
              f"{result['streamlines_per_s'] / 1e3:>10.1f} "
              f"{result['points_per_s'] / 1e6:>10.2f} {per_cpu:>9} "
              f"{result['rss_main_mib']:>8.0f} "
              f"{result['rss_worker_mib']:>10.0f} {ratio:>13}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
