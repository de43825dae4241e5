#!/usr/bin/env python3
"""Where does the demo's validation loss jump, epoch by epoch?

Makes the demo's data (``dwiml_run_demo.py``: 3 synthetic subjects, HDF5 at
2 mm steps), trains the demo's model with its options plus the options
given after ``--``, in one run of TOTAL epochs (the demo's FIRST + resume
gives the same weights, bitwise on CPU), keeps each epoch's weights, then
splits each epoch's validation loss (1 - cosine, the demo's loss) by the
points' place along the validation streamlines: the first point (no
previous direction), the second (one) and the others. Prints one line per
epoch, with the share of those points more than 90 degrees off, and the
CPU time of the training.

    python bench/bench_demo_validation.py /tmp/demo_bench --seed 0 \\
        -- --learning_rate 0.002
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from bench_out_folder import prepare_out  # bench/, on the path as a script

from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.cli.dwiml_run_demo import demo_training_args
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import train_from_args
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import compute_direction_targets
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.experiment_builder import build_loader


class _SaveEachEpoch(Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        trainer.model.save_params_and_state(
            os.path.join(self.folder, f"epoch_{epoch}"))


def _prepare_data(folder, nb_streamlines, seed):
    """The demo's steps 1 and 2."""
    paths = make_synthetic_dataset(
        os.path.join(folder, "synthetic"), nb_subjects=3,
        nb_streamlines=nb_streamlines, seed=seed, overwrite=True)
    hdf5_file = os.path.join(folder, "dataset.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, paths.splits["training"],
                        paths.splits["validation"], paths.splits["testing"],
                        step_size=2.0, overwrite=True)
    return hdf5_file


def _angles_by_place(model_dir, dataset, batch_size=200):
    """Angles (degrees) to the true directions and each point's index."""
    model = load_model_from_params_and_state(model_dir, "cpu")
    model.eval()
    loader = build_loader(dataset, {"streamline_group": "streamlines",
                                    "input_group": "input"}, model, "cpu")
    nb_streamlines = dataset.validation_set.get_subject(0).sft_data_list[
        0].nb_streamlines
    angles, places = [], []
    with torch.no_grad():
        for start in range(0, nb_streamlines, batch_size):
            ids = np.arange(start, min(start + batch_size, nb_streamlines))
            request = BatchRequest("validation", 0, start // batch_size,
                                   [(0, ids)])
            batch = loader.prepare_batch(loader.load_batch(request), "cpu")
            outputs = model(batch.inputs_list(), batch.input_streamlines())
            predicted, _ = model.get_tracking_directions(outputs, "det")
            targets, _ = compute_direction_targets(batch.target_streamlines(),
                                                   model.add_eos)
            cosines = torch.nn.functional.cosine_similarity(
                predicted, targets, dim=1).clamp(-1, 1)
            angles.append(torch.rad2deg(torch.arccos(cosines)).numpy())
            places.append(np.concatenate(
                [np.arange(len(s) - 1) for s in batch.target_streamlines()]))
    return np.concatenate(angles), np.concatenate(places)


# What main() writes at the top of its output folder.
OWN_ENTRIES = ("synthetic", "dataset.hdf5", "experiments", "weights")


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_folder", help="Output folder: new, or one "
                        "this script wrote (replaced with -f).")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Replace what this script wrote in out_folder.")
    parser.add_argument("--nb_streamlines", type=int, default=1000,
                        help="Streamlines per subject (default: 1000, the "
                             "demo's).")
    parser.add_argument("--epochs", type=int, default=8,
                        help="Epochs in all (default: 8, the demo's).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the data and the training (default: "
                             "0).")
    args = parser.parse_args(argv)
    try:
        prepare_out(args.out_folder, args.overwrite, OWN_ENTRIES)
    except DwiMLUserError as error:
        parser.error(str(error))
    hdf5_file = _prepare_data(args.out_folder, args.nb_streamlines,
                              args.seed)
    experiments = os.path.join(args.out_folder, "experiments")
    os.makedirs(experiments)
    weights = os.path.join(args.out_folder, "weights")
    cpu_start = time.process_time()
    train_from_args(train_parser().parse_args(
        demo_training_args(experiments, hdf5_file, args.epochs, args.seed)
        + ["-v", "WARNING", *extra]), [_SaveEachEpoch(weights)])
    cpu = time.process_time() - cpu_start
    valid_loss = np.load(os.path.join(experiments, "demo", "logs",
                                      "valid_loss.npy"))
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=False, load_testing=False,
                      volume_groups=["input"],
                      streamline_groups=["streamlines"])
    print(f"seed {args.seed}, options [{' '.join(extra)}]: training CPU "
          f"{cpu:.1f} s")
    for epoch, loss in enumerate(valid_loss):
        angles, places = _angles_by_place(
            os.path.join(weights, f"epoch_{epoch}"), dataset)
        one_minus_cos = 1 - np.cos(np.deg2rad(angles))
        parts = []
        for name, rows in (("first", places == 0), ("second", places == 1),
                           ("others", places >= 2)):
            parts.append(f"{name} {one_minus_cos[rows].mean():.4f} "
                         f"({np.mean(angles[rows] > 90):.1%} > 90 deg)")
        print(f"epoch {epoch}: valid_loss {loss:.4f}; " + "; ".join(parts))
    dataset.close()


if __name__ == "__main__":
    main()
