#!/usr/bin/env python3
"""Two models' testing tractograms, scored on the seeds both kept.

Takes folders written by ``bench_model_comparison.py`` (each with its
``data.hdf5`` and one ``MODEL_TYPE.trk`` per model tracked on the testing
subject). Both models were tracked from the same seeds (same ``--seed``,
``--nt`` and seeding mask), and a streamline keeps its seed as
``data_per_streamline['seeds']``, so the two tractograms can be matched
seed by seed. Each tractogram is cut in two: the streamlines whose seed the
other model also kept ("common"), and the others ("alone": seeds the other
model dropped, as shorter than ``--min_length``). Each part is scored as the
comparison bench scores a whole tractogram (the share of points within 1
voxel of a true streamline, and within 30 degrees of a true direction).

A share over a whole tractogram mixes precision with coverage: a model that
keeps more seeds adds streamlines that the other dropped, often harder
ones. On the common seeds the two models are compared on the same starts.

Prints, over the folders, the mean of each part's scores and the paired
differences (model B minus model A, mean +- standard error over folders;
N/A with one folder). A part without streamlines (e.g. no shared seeds)
has no scores: "no streamlines" in the table, left out of the means. The
testing grid's NIfTI is written in a temporary folder (or --work_dir).
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_eos_threshold import write_grid  # noqa: E402

from dwi_ml.data.dataset import MultiSubjectDataset  # noqa: E402
from dwi_ml.tracking.scoring import score_tractogram  # noqa: E402
from dwi_ml.tracking.scoring_io import load_tractogram_vox_corner  # noqa: E402

PARTS = ("all", "common", "alone")
KEYS = ("nb_tracked", "points_within_1_vox", "points_aligned")


def seed_keys(sft, path):
    """Each streamline's seed (RAS mm, as written by the tracker; dipy
    leaves data_per_streamline as stored), as a hashable row."""
    if len(sft.streamlines) == 0:   # An empty tractogram stores no seeds.
        return []
    if "seeds" not in sft.data_per_streamline:
        sys.exit(f"{path}: expected data_per_streamline 'seeds' (written by "
                 "dwiml_track_from_model.py in a .trk or .trx), found "
                 f"{sorted(sft.data_per_streamline.keys()) or 'none'}.")
    seeds = sft.data_per_streamline["seeds"]
    return [tuple(row) for row in np.asarray(seeds, dtype=np.float32)]


def score_parts(folder, model_a, model_b, folder_b, grid_dir):
    """Scores of each model's tractogram, whole and in parts.

    Returns {(model, part): {key: value}}.
    """
    dataset = MultiSubjectDataset(os.path.join(folder, "data.hdf5"))
    dataset.load_data()
    subject = dataset.testing_set.get_subject(0)
    true = subject.sft_data_list[0]
    reference = true.get_streamlines(np.arange(true.nb_streamlines))
    mri = subject.mri_data_list[dataset.volume_groups.index("wm_mask")]
    grid = os.path.join(grid_dir, "testing_grid.nii.gz")
    write_grid(subject, dataset.volume_groups, grid)
    paths = {model_a: os.path.join(folder, model_a + ".trk"),
             model_b: os.path.join(folder_b, model_b + ".trk")}
    tractograms = {model: load_tractogram_vox_corner(path, grid)
                   for model, path in paths.items()}
    keys = {model: seed_keys(tractograms[model], path)
            for model, path in paths.items()}
    common = set(keys[model_a]) & set(keys[model_b])
    scores = {}
    for model, sft in tractograms.items():
        streamlines = sft.streamlines
        in_common = np.array([key in common for key in keys[model]], bool)
        for part, rows in (("all", np.arange(len(streamlines))),
                           ("common", np.flatnonzero(in_common)),
                           ("alone", np.flatnonzero(~in_common))):
            if len(rows) == 0:
                scores[(model, part)] = dict(nb_tracked=0.0,
                                             points_within_1_vox=np.nan,
                                             points_aligned=np.nan)
                continue
            result = score_tractogram(streamlines[rows], reference,
                                      mri.shape, mri.affine)
            scores[(model, part)] = {key: float(result[key]) for key in KEYS}
    return scores


def mean_se(values):
    """Mean and standard error of the finite values; None for what they
    cannot give (no value: both; one value: the error)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None, None
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 \
        else None
    return values.mean(), se


def _cell(value, digits):
    return "no streamlines" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("folders", nargs="+",
                        help="bench_model_comparison.py folders (model A's "
                             "tractograms, and model B's without "
                             "--folders_b).")
    parser.add_argument("--model_a", default="learn2track")
    parser.add_argument("--model_b", default="transformer_src_only")
    parser.add_argument("--folders_b", nargs="+",
                        help="Model B's folders, one per folder, same seeds "
                             "(default: the same folders).")
    parser.add_argument("--work_dir", default=None,
                        help="An existing folder where the testing grid's "
                             "NIfTI is written (default: a temporary folder, "
                             "removed at the end).")
    args = parser.parse_args()
    folders_b = args.folders_b or args.folders
    if len(folders_b) != len(args.folders):
        parser.error("--folders_b: expected one folder per folder.")
    if args.work_dir is not None and not os.path.isdir(args.work_dir):
        parser.error(f"--work_dir: expected an existing folder, found "
                     f"'{args.work_dir}'.")
    with tempfile.TemporaryDirectory(prefix="bench_common_seeds_") as tmp:
        runs = [score_parts(a, args.model_a, args.model_b, b,
                            args.work_dir or tmp)
                for a, b in zip(args.folders, folders_b)]
    print(f"{len(runs)} folders; model A {args.model_a}, model B "
          f"{args.model_b}\n")
    print("| part | model | streamlines | within 1 voxel | within 30 deg |")
    print("|---|---|---|---|---|")
    for part in PARTS:
        for model in (args.model_a, args.model_b):
            means = [mean_se([run[(model, part)][key] for run in runs])[0]
                     for key in KEYS]
            print(f"| {part} | {model} | {means[0]:.0f} | "
                  f"{_cell(means[1], 3)} | {_cell(means[2], 3)} |")
    print("\nB minus A (paired over folders):")
    for part in ("all", "common"):
        cells = []
        for key in KEYS:
            mean, se = mean_se([run[(args.model_b, part)][key]
                                - run[(args.model_a, part)][key]
                                for run in runs])
            if mean is None:
                cells.append(f"{key} N/A (no " + ("shared seeds)"
                             if part == "common" else "streamlines)"))
                continue
            cells.append(f"{key} {mean:+.3f} +- "
                         + ("N/A" if se is None else f"{se:.3f}"))
        print(f"  {part}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
