#!/usr/bin/env python3
"""How well a trained model's first step finds the fibre's axis.

A seed has no history: the model's first direction comes from the inputs
at one point. At a bundle's end the way in is clear; in the middle of a
bundle both ways along the fibre are equally right, so a loss that scores
the direction (not the axis) gives the model no preferred answer there.

This runs the model over the testing subject's true streamlines (from the
HDF5, at its step size) started at four places: at their first point
("start"), at their last going back ("end"), and from their middle point
each way ("middle", "middle back"). For each it prints the angle between
the model's first direction and the true step's axis (sign ignored: the
tracker follows both ways from a seed), and, over all points, the share of
predictions more than 90 degrees from the true next step.

    python bench/bench_first_step.py EXPERIMENT HDF5 [--nb_streamlines 200]
"""
import argparse

import numpy as np
import torch

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
    prepare_volume_for_interpolation,
)
from dwi_ml.tracking.tracking_io import load_experiment_model


def _angles(model, volume, affine, points):
    """Angles (degrees) between the model's direction at each point but
    the last and the true step from it, in mm."""
    points_t = torch.as_tensor(points)
    with torch.no_grad():
        outputs = model([interpolate_volume_at_coordinates(volume, points_t)],
                        [points_t])
    directions, _ = model.get_tracking_directions(outputs, "det", None)
    true = np.diff(points, axis=0) @ affine[:3, :3].T
    predicted = directions.numpy()[:len(true)] @ affine[:3, :3].T
    cosines = np.sum(true * predicted, axis=1) / (
        np.linalg.norm(true, axis=1) * np.linalg.norm(predicted, axis=1))
    return np.degrees(np.arccos(np.clip(cosines, -1, 1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("hdf5")
    parser.add_argument("--input_group", default="input")
    parser.add_argument("--nb_streamlines", type=int, default=200,
                        help="Testing streamlines used, drawn at random "
                             "(seed 0) from all bundles (default: 200).")
    args = parser.parse_args()

    dataset = MultiSubjectDataset(args.hdf5)
    dataset.load_data()
    subject = dataset.testing_set.get_subject(0)
    mri = subject.mri_data_list[dataset.volume_groups.index(args.input_group)]
    volume = prepare_volume_for_interpolation(
        torch.as_tensor(np.asarray(mri.data)), "cpu").double()
    sft = subject.sft_data_list[0]
    ids = np.sort(np.random.default_rng(0).choice(
        sft.nb_streamlines, min(args.nb_streamlines, sft.nb_streamlines),
        replace=False))
    streamlines = [np.asarray(s, np.float64)
                   for s in sft.get_streamlines(ids)]
    model = load_experiment_model(args.experiment).double().eval()

    starts = {"start": lambda s: s, "end": lambda s: s[::-1],
              "middle": lambda s: s[len(s) // 2:],
              "middle back": lambda s: s[:len(s) // 2 + 1][::-1]}
    print(f"{len(streamlines)} testing streamlines; first step's angle to "
          "the fibre axis (degrees), and all points' share > 90 degrees")
    print(f"{'start':12s} {'median':>7s} {'> 25 deg':>9s} {'all > 90':>9s}")
    for name, cut in starts.items():
        first, every = [], []
        for streamline in streamlines:
            points = np.ascontiguousarray(cut(streamline))
            if len(points) < 2:
                continue
            angles = _angles(model, volume, mri.affine, points)
            first.append(min(angles[0], 180 - angles[0]))
            every.append(angles)
        first, every = np.array(first), np.concatenate(every)
        print(f"{name:12s} {np.median(first):7.1f} {np.mean(first > 25):9.2f} "
              f"{np.mean(every > 90):9.3f}")


if __name__ == "__main__":
    main()
