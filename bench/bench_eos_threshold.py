#!/usr/bin/env python3
"""EOS threshold at tracking: which ``--eos_stop`` tracks best?

Takes folders written by ``bench_model_comparison.py --add_eos --seeding
fibres`` (each with its ``data.hdf5``, which then holds the ``fibre_mask``
group, and one experiment per model type, trained with EOS) and, without
retraining, tracks each model's best model on the validation subject and
on the testing subject at every ``--eos_stops`` threshold, the way that
bench tracks the testing subject (its :func:`track_subject`: seeds in the
fibre voxels, tracking in the white-matter mask, ``--nt``, ``--theta``, the
run's seed), and scores each tractogram with its :func:`score_subject`.

Each family's threshold is chosen on the validation subject (the mean
over the folders of ``--choose_by``); the testing subject's paired
differences (Transformer minus Learn2track, mean +- standard error over
the folders) are printed at the chosen thresholds and at 0.5, then the
full table (a standard error needs two folders: N/A with one). Every
score is also written, one JSON line per tractogram, to
``OUT_DIR/scores.jsonl``, beside the grids and the last tractogram. The
inputs are checked before OUT_DIR is made; an existing OUT_DIR is refused
unless -f, which removes what this script wrote there (and refuses a
folder holding anything else). Run with ``OMP_NUM_THREADS=1``.
"""
import argparse
import json
import os
import sys

import h5py
import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model_comparison import (  # noqa: E402
    add_tracking_args,
    score_subject,
    track_subject,
)
from bench_out_folder import prepare_out  # noqa: E402

from dwi_ml.data.dataset import MultiSubjectDataset  # noqa: E402
from dwi_ml.io_utils.errors import (  # noqa: E402
    DwiMLUserError,
    script_entry_point,
)
from dwi_ml.tracking.stopping import eos_stop_value  # noqa: E402

SPLITS = ("validation", "testing")
# What this script writes in OUT_DIR (-f removes these only).
OWN_FILES = ("scores.jsonl", "tracked.trk",
             *(f"{split}_grid.nii.gz" for split in SPLITS))
KEYS = ("points_within_1_vox", "points_aligned", "nb_tracked",
        "nb_tracked_points", "mean_length_mm")


def check_input_folder(folder, model_types):
    """Refuse, in one line, a folder that is not a run of
    ``bench_model_comparison.py --add_eos --seeding fibres`` with these
    model types."""
    hdf5_file = os.path.join(folder, "data.hdf5")
    if not os.path.isfile(hdf5_file):
        raise DwiMLUserError(
            f"folder '{folder}': expected data.hdf5 (a folder of "
            "bench_model_comparison.py --add_eos --seeding fibres), not "
            "found.")
    with h5py.File(hdf5_file, "r") as f:
        groups = json.loads(f.attrs.get("groups_config", "{}"))
    if "fibre_mask" not in groups:
        raise DwiMLUserError(
            f"folder '{folder}': expected a fibre_mask group in data.hdf5 "
            "(bench_model_comparison.py --seeding fibres), found "
            f"{sorted(groups)}.")
    for model_type in model_types:
        parameters = os.path.join(folder, model_type, "parameters.json")
        if not os.path.isfile(parameters):
            raise DwiMLUserError(
                f"folder '{folder}': expected the experiment {model_type} "
                f"(--model_types), {parameters} not found.")
        with open(parameters) as f:
            dg_args = json.load(f)["model"].get("dg_args") or {}
        if not dg_args.get("add_eos"):
            raise DwiMLUserError(
                f"folder '{folder}': expected {model_type} trained with EOS "
                "(bench_model_comparison.py --add_eos), found none.")


def _pm(mean, se, digits=3):
    """'+0.012 +- 0.004', or '+- N/A' where one folder gives no error."""
    if se is None:
        return f"{mean:+.{digits}f} +- N/A"
    return f"{mean:+.{digits}f} +- {se:.{digits}f}"


def folder_seed(folder, model_types):
    """The training seed of the folder's runs (the same for all)."""
    seeds = set()
    for model_type in model_types:
        with open(os.path.join(folder, model_type, "parameters.json")) as f:
            seeds.add(json.load(f)["trainer"]["seed"])
    if len(seeds) != 1:
        raise ValueError(f"{folder}: expected one seed, found {seeds}")
    return seeds.pop()


def write_grid(subject_data, volume_groups, path):
    """A NIfTI on the subject's grid (the HDF5 keeps no source file)."""
    mri = subject_data.mri_data_list[volume_groups.index("wm_mask")]
    nib.save(nib.Nifti1Image(np.zeros(mri.shape[:3], np.uint8), mri.affine),
             path)


def score_folder(folder, out_dir, args):
    """Scores of every (model type, split, threshold) of one folder."""
    seed = folder_seed(folder, args.model_types)
    hdf5_file = os.path.join(folder, "data.hdf5")
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    track_args = argparse.Namespace(seeding="fibres", nt=args.nt,
                                    theta=args.theta, seed=seed)
    rows = []
    for split in SPLITS:
        subset = getattr(dataset, split + "_set")
        subject_data = subset.get_subject(0)
        grid = os.path.join(out_dir, f"{split}_grid.nii.gz")
        write_grid(subject_data, dataset.volume_groups, grid)
        for model_type in args.model_types:
            for eos_stop in args.eos_stops:
                out = os.path.join(out_dir, "tracked.trk")
                track_subject(os.path.join(folder, model_type), hdf5_file,
                              subset.subjects[0], out, track_args, eos_stop)
                scores = score_subject(out, grid, subject_data,
                                       dataset.volume_groups)
                rows.append(dict(folder=folder, seed=seed, split=split,
                                 model_type=model_type,
                                 eos_stop=str(eos_stop),
                                 **{k: float(scores[k]) for k in KEYS}))
    return rows


def criterion(row, choose_by):
    if choose_by == "both":
        return row["points_within_1_vox"] + row["points_aligned"]
    return row[choose_by]


def mean_over_seeds(rows, split, model_type, eos_stop, key):
    return float(np.mean([criterion(r, key) for r in rows
                          if (r["split"], r["model_type"], r["eos_stop"])
                          == (split, model_type, eos_stop)]))


def paired(rows, model_type, eos_stop, ref_type, ref_stop):
    """Testing subject: model minus reference, per seed, for both shares
    and the number of points within 1 voxel; returns (means, standard
    errors), each (3,); the errors are None with one seed."""
    def by_seed(kind, stop):
        return {r["seed"]: (r["points_within_1_vox"], r["points_aligned"],
                            within_1_vox_count(r))
                for r in rows if (r["split"], r["model_type"], r["eos_stop"])
                == ("testing", kind, stop)}
    a, b = by_seed(model_type, eos_stop), by_seed(ref_type, ref_stop)
    seeds = sorted(set(a) & set(b))
    diffs = np.array([np.subtract(a[s], b[s]) for s in seeds])
    se = (diffs.std(0, ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1
          else [None] * 3)
    return diffs.mean(0), se


def within_1_vox_count(row):
    """Tracked points within 1 voxel of a true streamline (a number, not a
    share: stopping early lowers it)."""
    return row["points_within_1_vox"] * row["nb_tracked_points"]


def report(rows, args):
    stops = [str(s) for s in args.eos_stops]
    chosen = {m: max(stops, key=lambda s: mean_over_seeds(
        rows, "validation", m, s, args.choose_by)) for m in args.model_types}
    print(f"\nChosen on the validation subject by {args.choose_by}: "
          + ", ".join(f"{m} {s}" for m, s in chosen.items()))
    ref = args.model_types[0]
    for model_type in args.model_types[1:]:
        for label, mine, theirs in (("chosen", chosen[model_type],
                                     chosen[ref]), ("0.5", "0.5", "0.5")):
            mean, se = paired(rows, model_type, mine, ref, theirs)
            print(f"testing, {model_type} ({mine}) minus {ref} ({theirs}), "
                  f"{label}: {_pm(mean[0], se[0])} (within 1 vox) / "
                  f"{_pm(mean[1], se[1])} (within 30 deg) / "
                  f"{_pm(mean[2], se[2], 0)} (points within 1 vox)")
    print("\n| model | eos_stop | subject | within 1 voxel | within 30 deg | "
          "kept streamlines | points within 1 voxel (count) | mean length "
          "(mm) | minus 0.5, within 1 voxel / 30 deg (testing) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_type in args.model_types:
        for split in SPLITS:
            for stop in stops:
                mean = {k: mean_over_seeds(rows, split, model_type, stop, k)
                        for k in KEYS}
                count = np.mean([within_1_vox_count(r) for r in rows
                                 if (r["split"], r["model_type"],
                                     r["eos_stop"]) == (split, model_type,
                                                        stop)])
                gain = ""
                if split == "testing":
                    d, se = paired(rows, model_type, stop, model_type, "0.5")
                    gain = f"{_pm(d[0], se[0])} / {_pm(d[1], se[1])}"
                print(f"| {model_type} | {stop} | {split} | "
                      f"{mean['points_within_1_vox']:.3f} | "
                      f"{mean['points_aligned']:.3f} | "
                      f"{mean['nb_tracked']:.0f} | {count:.0f} | "
                      f"{mean['mean_length_mm']:.1f} | {gain} |")


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_dir", help="New folder for the scores.")
    parser.add_argument("folders", nargs="+",
                        help="Folders of bench_model_comparison.py runs "
                             "with --add_eos (one per seed).")
    parser.add_argument("--model_types", nargs="+",
                        default=["learn2track", "transformer_src_only"],
                        help="Experiments of each folder; the first is the "
                             "reference of the differences (default: "
                             "learn2track transformer_src_only).")
    parser.add_argument("--eos_stops", nargs="+", type=eos_stop_value,
                        default=[0.5, 0.4, 0.3, 0.2, 0.1, "max"],
                        metavar="P|max",
                        help="Thresholds tried (--eos_stop of "
                             "dwiml_track_from_model.py; default: 0.5 0.4 "
                             "0.3 0.2 0.1 max). 0.5 must be one.")
    parser.add_argument("--choose_by", default="both",
                        choices=("both", "points_within_1_vox",
                                 "points_aligned"),
                        help="Validation score that picks each family's "
                             "threshold; 'both': the sum of the two shares "
                             "(default: both).")
    add_tracking_args(parser)
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Replace the files this script wrote in "
                             "out_dir.")
    args = parser.parse_args(argv)
    if 0.5 not in args.eos_stops:
        parser.error("argument --eos_stops: expected 0.5 among them, "
                     f"found {args.eos_stops}.")
    for folder in args.folders:
        if not os.path.isdir(folder):
            raise DwiMLUserError(f"folder '{folder}' does not exist.")
        check_input_folder(folder, args.model_types)
    prepare_out(args.out_dir, args.overwrite, OWN_FILES)
    rows = []
    with open(os.path.join(args.out_dir, "scores.jsonl"), "w") as f:
        for folder in args.folders:
            for row in score_folder(folder, args.out_dir, args):
                f.write(json.dumps(row) + "\n")
                rows.append(row)
            f.flush()
            print(f"{folder}: done", flush=True)
    report(rows, args)


if __name__ == "__main__":
    main()
