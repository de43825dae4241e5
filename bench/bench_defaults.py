#!/usr/bin/env python3
"""Does a model trained with the default options track well?

Runs the README's pipeline on a synthetic example (3 subjects: training,
validation, testing), with the training options given after ``--`` added
to the defaults (none: the defaults alone), then tracks the held-out
testing subject in its white-matter mask and scores the result against its
reference streamlines (``dwi_ml.tracking.scoring``). Prints one line: the
options, the best validation loss, the share of points within 1 voxel, the
share aligned within 30 degrees, the share of seeds kept, whether dipy's
bbox check passed, and the CPU time.

    python bench/bench_defaults.py /tmp/defaults_run -- --nb_previous_dirs 2

The synthetic files and the HDF5 file are made once per output folder and
reused by later runs with the same --nb_streamlines and --seed (their
options are kept in ``data_options.json``); a folder holding data of other
options, or a run of the same training options, is refused unless -f,
which rebuilds the data (and removes that run) first.
"""
import argparse
import json
import os
import shutil
import sys
import time

import nibabel as nib
import numpy as np
from dipy.io.streamline import load_tractogram

from dwi_ml.cli import dwiml_hdf5_extract_data as extract_cli
from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import train_from_args
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.run_paths import script_run
from dwi_ml.tracking.scoring import score_tractogram
from dwi_ml.tracking.scoring_io import load_grid, load_tractogram_vox_corner

DATA_OPTIONS = "data_options.json"
# What _prepare_data writes in the output folder (-f removes these only).
DATA_ENTRIES = ("synthetic", "data.hdf5", DATA_OPTIONS)


def _prepare_data(folder, nb_streamlines, seed, overwrite):
    """Make the synthetic files and the HDF5 together, or reuse both when
    ``data_options.json`` says they were made with these options."""
    hdf5_file = os.path.join(folder, "data.hdf5")
    options_file = os.path.join(folder, DATA_OPTIONS)
    wanted = {"nb_streamlines": nb_streamlines, "seed": seed}
    found = None
    if os.path.isfile(options_file):
        with open(options_file) as f:
            found = json.load(f)
    present = [name for name in DATA_ENTRIES
               if os.path.lexists(os.path.join(folder, name))]
    if found == wanted and len(present) == len(DATA_ENTRIES):
        print(f"reusing the data of {folder} ({nb_streamlines} streamlines "
              f"per subject, seed {seed})")
    else:
        if present and not overwrite:
            raise DwiMLUserError(
                f"out_folder '{folder}': expected data made with "
                f"{wanted}, found {found or 'incomplete data'}; use -f to "
                "rebuild it, or another folder.")
        for name in present:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        # The reference tractogram is extracted from the old HDF5.
        for name in os.listdir(folder):
            if name.endswith("_reference.trk"):
                os.remove(os.path.join(folder, name))
    paths = make_synthetic_dataset(
        os.path.join(folder, "synthetic"), nb_subjects=3,
        nb_streamlines=nb_streamlines, seed=seed, overwrite=True)
    if not os.path.exists(hdf5_file):
        create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                            hdf5_file, paths.config, paths.splits["training"],
                            paths.splits["validation"],
                            paths.splits["testing"], step_size=1.0)
        with open(options_file, "w") as f:
            json.dump(wanted, f)
    return paths, hdf5_file


@script_entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_folder")
    parser.add_argument("--nb_streamlines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--npv", type=int, default=2)
    parser.add_argument("--track_options", default="",
                        help="Extra options of dwiml_track_from_model.py, "
                             "in one string.")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Rebuild data made with other options, and "
                             "replace the run of the same training options.")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out_folder))):
        raise DwiMLUserError(f"out_folder '{args.out_folder}': its parent "
                             "folder does not exist.")
    os.makedirs(args.out_folder, exist_ok=True)
    # Each step is a run of its own: one's output is the next's input.
    with script_run():
        paths, hdf5_file = _prepare_data(args.out_folder, args.nb_streamlines,
                                         args.seed, args.overwrite)
    testing = paths.splits["testing"][0]
    subject_dir = os.path.join(paths.out_folder, "dwi_ml_ready", testing)

    experiments = os.path.join(args.out_folder, "experiments")
    name = "run_" + ("_".join(a.lstrip("-") for a in extra) or "defaults")
    if os.path.exists(os.path.join(experiments, name)):
        if not args.overwrite:
            raise DwiMLUserError(
                f"experiment '{os.path.join(experiments, name)}' already "
                "exists (a run of these options); use -f to replace it.")
        print(f"-f: replacing {os.path.join(experiments, name)}")
        shutil.rmtree(os.path.join(experiments, name))
    os.makedirs(experiments, exist_ok=True)
    cpu_start = time.process_time()
    with script_run():
        train_from_args(train_parser().parse_args(
            [experiments, name, hdf5_file, "input", "streamlines", *extra]))
    tracked_path = os.path.join(args.out_folder, name + ".trk")
    track_cli.main([os.path.join(experiments, name), hdf5_file, testing,
                    "input", tracked_path, "--tracking_mask_group", "wm_mask",
                    "--npv", str(args.npv), "-f",
                    *args.track_options.split()])
    cpu = time.process_time() - cpu_start

    try:
        load_tractogram(tracked_path, "same", bbox_valid_check=True)
        bbox_ok = True
    except ValueError:
        bbox_ok = False
    mask_path = os.path.join(subject_dir, "wm_mask.nii.gz")
    tracked = load_tractogram_vox_corner(tracked_path, mask_path)
    reference_path = os.path.join(args.out_folder, testing + "_reference.trk")
    if not os.path.exists(reference_path):
        extract_cli.main([hdf5_file, testing, "streamlines", reference_path])
    reference = load_tractogram_vox_corner(reference_path, mask_path)
    shape, affine = load_grid(mask_path)
    scores = score_tractogram(tracked.streamlines, reference.streamlines,
                              shape, affine)
    valid_loss = np.load(os.path.join(experiments, name, "logs",
                                      "valid_loss.npy"))
    nb_seeds = _count_seeds(mask_path, args.npv)
    print(f"options [{' '.join(extra) or 'defaults'}] tracking "
          f"[{args.track_options}]: best valid loss "
          f"{valid_loss.min():.4f}; within 1 vox "
          f"{scores['points_within_1_vox']:.3f}; aligned 30 deg "
          f"{scores['points_aligned']:.3f}; kept "
          f"{scores['nb_tracked'] / nb_seeds:.3f} of {nb_seeds} seeds; "
          f"bbox {'ok' if bbox_ok else 'FAILED'}; CPU {cpu:.0f} s")


def _count_seeds(mask_path, npv):
    return int(np.sum(nib.load(mask_path).get_fdata() >= 0.5)) * npv


if __name__ == "__main__":
    main()
