#!/usr/bin/env python3
"""Benchmark HDF5 creation: time and peak RSS as the number of subjects grows.

Writes a synthetic dataset of max(--nb_subjects) subjects in FOLDER (once;
kept for later runs unless -f), then, for each count N of --nb_subjects,
creates the HDF5 of its first N subjects (all in training) with
``create_hdf5_dataset`` in a fresh subprocess, with --step_size (0.5 mm by
default, as the issue's reference figure). Each subprocess reports its wall
and CPU time, the time of the check pass (every volume read whole once
before writing) and its peak RSS (``VmHWM``). Creation streams
subject by subject, so the peak RSS should not grow with N. A reused
dataset is said so in the header, with its own size (subjects,
streamlines per subject, shape), which may differ from the options.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point


def _create(args, nb_subjects):
    """One creation of the first ``nb_subjects`` subjects; a JSON-able dict."""
    from dwi_ml.data.hdf5 import creation

    checking = {"seconds": 0.}
    check_subject_data = creation.check_subject_data

    def timed_check(*check_args, **kwargs):
        start = time.perf_counter()
        check_subject_data(*check_args, **kwargs)
        checking["seconds"] += time.perf_counter() - start
    creation.check_subject_data = timed_check

    subjects = sorted(os.listdir(os.path.join(args.folder, "dwi_ml_ready")))
    out_hdf5 = os.path.join(args.folder, f"bench_{nb_subjects}.hdf5")
    start, cpu_start = time.perf_counter(), time.process_time()
    creation.create_hdf5_dataset(
        os.path.join(args.folder, "dwi_ml_ready"), out_hdf5,
        os.path.join(args.folder, "config.json"), subjects[:nb_subjects], [],
        [], step_size=args.step_size, overwrite=True)
    result = {"seconds": time.perf_counter() - start,
              "cpu_seconds": time.process_time() - cpu_start,
              "check_seconds": checking["seconds"],
              "peak_rss_mib": _peak_rss_mib(),
              "file_mib": os.path.getsize(out_hdf5) / 2 ** 20}
    os.remove(out_hdf5)
    return result


def _peak_rss_mib():
    """This process's peak RSS (MiB) since it started its program.

    Linux's ``ru_maxrss`` survives ``exec``: a job started right after the
    parent wrote the dataset (~1 GiB) would report the parent's peak.
    ``VmHWM`` belongs to the address space, which ``exec`` replaces.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dataset_size(ready):
    """Subjects, streamlines of the first subject, DWI shape of the
    synthetic dataset in ``ready`` (its dwi_ml_ready folder)."""
    import glob

    import nibabel as nib

    subjects = sorted(os.listdir(ready))
    first = os.path.join(ready, subjects[0])
    nb_streamlines = sum(
        int(nib.streamlines.load(path, lazy_load=True).header[
            "nb_streamlines"])
        for path in glob.glob(os.path.join(first, "bundles", "*.trk")))
    shape = nib.load(os.path.join(first, "dwi.nii.gz")).shape
    return len(subjects), nb_streamlines, tuple(shape)


def _make_synthetic(args, nb_subjects):
    from dwi_ml.data.synthetic import make_synthetic_dataset
    make_synthetic_dataset(args.folder, nb_subjects=nb_subjects,
                           nb_streamlines=args.nb_streamlines,
                           shape=tuple(args.shape), voxel_size=(2., 2., 2.),
                           nb_directions=args.nb_features - 1,
                           overwrite=args.overwrite)


def _build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="Synthetic dataset folder (written "
                        "if missing or with -f).")
    parser.add_argument("--nb_subjects", type=int, nargs="+", default=[3, 12],
                        help="Subject counts to create (default: 3 12).")
    parser.add_argument("--nb_streamlines", type=int, default=20_000,
                        help="Streamlines per synthetic subject (default: "
                        "20000).")
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 48, 40],
                        help="Volume shape, 2 mm voxels (default: 40 48 40).")
    parser.add_argument("--nb_features", type=int, default=28,
                        help="DWI volumes: b0 + directions (default: 28).")
    parser.add_argument("--step_size", type=float, default=0.5,
                        help="--step_size of the creation, mm (default 0.5).")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Rewrite the synthetic dataset.")
    parser.add_argument("--_job", help=argparse.SUPPRESS)
    return parser


@script_entry_point
def main(argv=None):
    args = _build_parser().parse_args(argv)
    if args._job:
        print(json.dumps(_create(args, int(args._job))))
        return
    nb_needed = max(args.nb_subjects)
    ready = os.path.join(args.folder, "dwi_ml_ready")
    if (os.path.isdir(ready) and len(os.listdir(ready)) < nb_needed
            and not args.overwrite):
        raise DwiMLUserError(
            f"folder '{args.folder}': expected at least {nb_needed} subjects "
            f"(--nb_subjects), found {len(os.listdir(ready))}; use -f to "
            "remake the synthetic dataset.")
    if args.overwrite or not os.path.isdir(ready):
        start = time.perf_counter()
        _make_synthetic(args, nb_needed)
        print(f"synthetic dataset: {nb_needed} subjects x "
              f"{args.nb_streamlines} streamlines in "
              f"{time.perf_counter() - start:.0f} s")
    else:
        nb_found, nb_streamlines, shape = _dataset_size(ready)
        asked = (nb_streamlines == args.nb_streamlines
                 and shape == (*args.shape, args.nb_features))
        print(f"REUSED synthetic dataset {args.folder} (not remade; -f "
              f"remakes it): {nb_found} subjects x {nb_streamlines} "
              f"streamlines, DWI {shape}"
              + ("" if asked else
                 f"; NOT the options' {args.nb_streamlines} streamlines, "
                 f"DWI {(*args.shape, args.nb_features)}"))
    print(f"step {args.step_size} mm; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'subjects':>8} {'wall s':>7} {'CPU s':>6} {'check s':>7} "
          f"{'peak RSS MiB':>12} {'file MiB':>8}")
    for nb_subjects in args.nb_subjects:
        command = [sys.executable, os.path.abspath(__file__), args.folder,
                   "--step_size", str(args.step_size), "--_job",
                   str(nb_subjects)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"creation of {nb_subjects} subjects failed:\n"
                     f"{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{nb_subjects:>8} {result['seconds']:>7.1f} "
              f"{result['cpu_seconds']:>6.1f} {result['check_seconds']:>7.1f} "
              f"{result['peak_rss_mib']:>12.0f} {result['file_mib']:>8.0f}")


if __name__ == "__main__":
    main()
