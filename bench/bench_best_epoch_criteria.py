#!/usr/bin/env python3
"""Which epoch would each best-model criterion pick, and how does it track?

Trains the demo's Learn2track on the demo's data as
``bench_demo_validation.py`` does (its functions, imported), keeps each
epoch's weights, and for every epoch computes three validation criteria
from the per-point angles on the validation subject:

(a) ``valid_loss`` as logged by the trainer (1 - cosine, all points);
(b) 1 - cosine over the points from the third on (the first two, with no
    or one previous direction, left out);
(c) the sign-free first point: 1 - |cosine| on the first point, 1 - cosine
    on the others, mean over all points.

Each epoch's model then tracks the testing subject with the README's
options (``--tracking_mask_group wm_mask --npv 2``), its ``--seed`` set to
``--tracking_seed`` (default 0), and the tractogram is scored against the
subject's true streamlines
(:func:`dwi_ml.tracking.scoring.score_tractogram`: points within 1 voxel
of a true streamline, points within 30 degrees). Prints a markdown table
per seed, which epoch each criterion picks (lowest value) and each
criterion's rank correlation with the scores over the epochs.

    OMP_NUM_THREADS=1 python bench/bench_best_epoch_criteria.py \\
        /tmp/best_epoch --seeds 0 1 2
"""
import argparse
import os
import re
import shutil
import time

import numpy as np
import torch
from bench_demo_validation import _angles_by_place, _prepare_data, _SaveEachEpoch
from bench_out_folder import prepare_out
from scipy.stats import spearmanr

from dwi_ml.cli.dwiml_run_demo import demo_training_args
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import train_from_args
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import BEST_MODEL_DIR, PARAMETERS_FILE
from dwi_ml.tracking.scoring import score_tractogram
from dwi_ml.tracking.scoring_io import load_tractogram_vox_corner

CRITERIA = ("valid_loss", "without_first_2", "sign_free_first")


def criteria_of(angles, places):
    """Criteria (b) and (c) from per-point angles (degrees) and places."""
    cosines = np.cos(np.deg2rad(angles))
    sign_free = np.where(places == 0, 1 - np.abs(cosines), 1 - cosines)
    return {"without_first_2": float(np.mean(1 - cosines[places >= 2])),
            "sign_free_first": float(np.mean(sign_free)),
            "all_points": float(np.mean(1 - cosines))}


def track_epoch(folder, experiment, weights, hdf5_file, subject, dwi,
                tracking_seed):
    """Track ``subject`` with one epoch's weights, as an experiment folder
    whose best model is those weights; returns the tractogram's streamlines
    in voxel space, corner origin."""
    os.makedirs(folder)
    shutil.copy(os.path.join(experiment, PARAMETERS_FILE), folder)
    shutil.copytree(weights, os.path.join(folder, BEST_MODEL_DIR))
    out = os.path.join(folder, "tracked.trk")
    track_main([folder, hdf5_file, subject, "input", out,
                "--tracking_mask_group", "wm_mask", "--npv", "2",
                "--seed", str(tracking_seed), "-v", "WARNING"])
    return load_tractogram_vox_corner(out, dwi).streamlines


def run_seed(out_folder, seed, nb_streamlines, epochs, tracking_seed):
    """One seed: per-epoch criteria and tracking scores (list of dicts)."""
    os.makedirs(out_folder)  # new: main() prepared its parent
    hdf5_file = _prepare_data(out_folder, nb_streamlines, seed)
    experiments = os.path.join(out_folder, "experiments")
    os.makedirs(experiments)
    weights = os.path.join(out_folder, "weights")
    train_from_args(train_parser().parse_args(
        demo_training_args(experiments, hdf5_file, epochs, seed)
        + ["-v", "WARNING"]), [_SaveEachEpoch(weights)])
    experiment = os.path.join(experiments, "demo")
    valid_loss = np.load(os.path.join(experiment, "logs", "valid_loss.npy"))

    dataset = MultiSubjectDataset(hdf5_file, lazy=False)
    dataset.load_data(load_training=False, volume_groups=["input",
                                                          "wm_mask"],
                      streamline_groups=["streamlines"])
    testing = dataset.testing_set.get_subject(0)
    subject = dataset.testing_set.subjects[0]
    dwi = os.path.join(out_folder, "synthetic", "dwi_ml_ready", subject,
                       "dwi.nii.gz")
    true = testing.sft_data_list[0]
    true_streamlines = true.get_streamlines(np.arange(true.nb_streamlines))
    mask = testing.mri_data_list[dataset.volume_groups.index("wm_mask")]
    rows = []
    for epoch, loss in enumerate(valid_loss):
        epoch_weights = os.path.join(weights, f"epoch_{epoch}")
        row = {"epoch": epoch, "valid_loss": float(loss),
               **criteria_of(*_angles_by_place(epoch_weights, dataset))}
        tracked = track_epoch(os.path.join(out_folder, f"track_{epoch}"),
                              experiment, epoch_weights, hdf5_file, subject,
                              dwi, tracking_seed)
        row.update(score_tractogram(tracked, true_streamlines, mask.shape,
                                    mask.affine))
        rows.append(row)
        print(f"seed {seed} epoch {epoch}: valid_loss {loss:.4f}, "
              f"recomputed over all points {row['all_points']:.4f}",
              flush=True)
    dataset.close()
    return rows


def print_tables(results):
    """Markdown: one row per seed and epoch, then each criterion's pick."""
    print("| seed | epoch | (a) valid_loss | (b) without first 2 | "
          "(c) sign-free first | tracked | within 1 vox | within 30 deg |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, rows in results.items():
        for r in rows:
            print(f"| {seed} | {r['epoch']} | {r['valid_loss']:.4f} | "
                  f"{r['without_first_2']:.4f} | {r['sign_free_first']:.4f} "
                  f"| {r['nb_tracked']:.0f} | {r['points_within_1_vox']:.3f} "
                  f"| {r['points_aligned']:.3f} |")
    print("\n| seed | criterion | epoch picked | within 1 vox | within 30 deg "
          "| best epoch by within 1 vox (score) |")
    print("|---|---|---|---|---|---|")
    for seed, rows in results.items():
        best = max(rows, key=lambda r: r["points_within_1_vox"])
        for name in CRITERIA:
            pick = min(rows, key=lambda r: r[name])
            print(f"| {seed} | {name} | {pick['epoch']} | "
                  f"{pick['points_within_1_vox']:.3f} | "
                  f"{pick['points_aligned']:.3f} | {best['epoch']} "
                  f"({best['points_within_1_vox']:.3f}) |")
    print("\nSpearman rank correlation over the epochs of each criterion "
          "with the scores (negative: a lower criterion tracks better)\n")
    print("| seed | criterion | with within 1 vox | with within 30 deg |")
    print("|---|---|---|---|")
    for seed, rows in results.items():
        for name in CRITERIA:
            values = [r[name] for r in rows]
            near, aligned = (spearmanr(values, [r[key] for r in rows])[0]
                             for key in ("points_within_1_vox",
                                         "points_aligned"))
            print(f"| {seed} | {name} | {near:+.2f} | {aligned:+.2f} |")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_folder", help="Output folder, one sub-folder "
                        "per seed: new, or one this script wrote (replaced "
                        "with -f).")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Replace what this script wrote in out_folder.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="Seeds of the data and the training (default: "
                             "0 1 2).")
    parser.add_argument("--nb_streamlines", type=int, default=1000,
                        help="Streamlines per subject (default: 1000, the "
                             "demo's).")
    parser.add_argument("--epochs", type=int, default=8,
                        help="Epochs in all (default: 8, the demo's).")
    parser.add_argument("--tracking_seed", type=int, default=0,
                        help="--seed of the tracking: where the seeds fall "
                             "in their voxels (default: 0; others show the "
                             "scores' noise).")
    args = parser.parse_args()
    own = {f"seed_{seed}" for seed in args.seeds}
    if os.path.isdir(args.out_folder):
        own |= {name for name in os.listdir(args.out_folder)
                if re.fullmatch(r"seed_\d+", name)}
    try:
        prepare_out(args.out_folder, args.overwrite, sorted(own))
    except DwiMLUserError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    results = {}
    for seed in args.seeds:
        start = time.process_time()
        results[seed] = run_seed(os.path.join(args.out_folder, f"seed_{seed}"),
                                 seed, args.nb_streamlines, args.epochs,
                                 args.tracking_seed)
        print(f"seed {seed}: {time.process_time() - start:.0f} s CPU",
              flush=True)
    print_tables(results)


if __name__ == "__main__":
    main()
