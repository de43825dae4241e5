"""The loss of a trained model at every point of a subject's streamlines.

Where along the streamlines does a model fail? The subject's streamlines
run through the model as in validation (no augmentation, no gradients), and
each prediction's loss and angular error go back to the point that made it
(see :mod:`dwi_ml.models.directions`): point ``i`` holds the loss of the
direction ``s[i + 1] - s[i]`` predicted there. Without EOS the last point
of each streamline predicts nothing: its values are NaN. With EOS it holds
the loss of "stop here" (EOS term only) and a NaN angular error, as do all
points where the target is to stop.

Streamlines are the ones the model saw: resampled to its step size (or
number of points, or compression) when it differs from the HDF5's, in
voxel space with a corner origin.
"""
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.layout import SPLITS
from dwi_ml.data.packed import make_array_sequence
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import compute_direction_targets, prediction_rows
from dwi_ml.tracking.tracking_io import save_tractogram_atomic
from dwi_ml.training.experiment_builder import (
    build_loader,
    check_streamlines_not_too_short,
)

ANGLE_KEY = "angular_error_deg"
LOSS_KEY = "loss"


@dataclass
class SubjectPointLosses:
    """Per-point values of one subject's streamlines.

    Attributes
    ----------
    streamlines : nibabel ArraySequence
        As the model saw them: voxel space, corner origin, float32, packed
        (P points in all), in the order of the HDF5.
    values : dict of str to np.ndarray (P,) float32
        ``loss`` (the sum of the terms), with EOS its terms
        ``loss_direction`` and ``loss_eos``, and ``angular_error_deg``;
        NaN where no value exists (module docstring).
    affine : np.ndarray (4, 4)
        Voxel (centre) to RAS mm of the streamline group's grid.
    dimensions : tuple of 3 int
        That grid's shape.
    """
    streamlines: object
    values: dict
    affine: np.ndarray
    dimensions: tuple


def compute_per_prediction_losses(model, outputs, streamlines):
    """Each loss term at each of the M predictions of a batch.

    The unreduced counterpart of ``model.compute_loss``: the mean of each
    term over the M rows is the term ``compute_loss`` returns.

    Parameters
    ----------
    model : MainModelOneInput
        With a ``direction_getter`` and ``add_eos`` (e.g. Learn2track).
    outputs : torch.Tensor (M, output_size)
    streamlines : list of torch.Tensor (n_i, 3)
        Target streamlines, voxel space, corner origin.

    Returns
    -------
    dict of str to torch.Tensor (M,)
        ``{'direction': ...}``, plus ``'eos'`` with EOS.
    """
    target_dirs, eos_targets = compute_direction_targets(streamlines,
                                                         model.add_eos)
    return model.direction_getter.compute_per_point_losses(
        outputs, target_dirs, eos_targets)


def compute_angular_errors_deg(model, outputs, streamlines, linear):
    """Angle (degrees) between the predicted and the true direction, (M,).

    Deterministic directions against the streamlines' segments, compared
    in RAS mm through ``linear`` (the affine's 3x3 part) so that
    anisotropic voxels do not bend them; NaN where the target is "stop".
    """
    predicted, _ = model.get_tracking_directions(outputs, "det")
    targets, eos_targets = compute_direction_targets(streamlines,
                                                     model.add_eos)
    cosines = torch.nn.functional.cosine_similarity(
        predicted @ linear.T, targets @ linear.T, dim=1)
    angles = torch.rad2deg(torch.arccos(cosines.clamp(-1, 1)))
    if eos_targets is not None:
        angles[eos_targets == 1] = torch.nan
    return angles


def predictions_to_points(values, lengths, add_eos):
    """Spread per-prediction values (M,) over the packed points (P,).

    Point ``i`` gets the value of the prediction made there; without EOS
    the last point of each streamline predicts nothing and gets NaN.
    """
    points = values.new_full((int(lengths.sum()),), torch.nan)
    points[prediction_rows(lengths, add_eos)] = values
    return points


def loaded_split(dataset):
    """The split of the one subject loaded."""
    return next(split for split in SPLITS
                if getattr(dataset, f"{split}_set").nb_subjects > 0)


def compute_subject_point_losses(model, hdf5_file, subject_id, input_group,
                                 streamline_group, batch_size=200,
                                 device="cpu"):
    """Run ``model`` over every streamline of one subject, point by point.

    Parameters
    ----------
    model : MainModelOneInput
        In eval mode, on ``device``; see :func:`compute_per_prediction_losses`.
    hdf5_file, subject_id : str
        The subject may be in any split.
    input_group, streamline_group : str
    batch_size : int
        Streamlines per forward pass.
    device : str or torch.device

    Returns
    -------
    SubjectPointLosses
    """
    if not hasattr(model, "direction_getter"):
        raise DwiMLUserError(
            f"model: expected a model with a direction getter (such as "
            f"Learn2track), found a {type(model).__name__}.")
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject_id, volume_groups=[input_group],
                      streamline_groups=[streamline_group])
    try:
        split = loaded_split(dataset)
        loader = build_loader(dataset, {"streamline_group": streamline_group,
                                        "input_group": input_group},
                              model, device)
        sft_data = getattr(dataset, f"{split}_set").get_subject(0) \
            .sft_data_list[0]
        if not sft_data.nb_streamlines:
            raise DwiMLUserError(
                f"HDF5 file {hdf5_file}, subject '{subject_id}', group "
                f"'{streamline_group}': expected streamlines, found none.")
        check_streamlines_not_too_short(model, loader, split)
        affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
        linear = torch.as_tensor(affine[:3, :3], dtype=torch.float32,
                                 device=device)
        ids = np.arange(sft_data.nb_streamlines)
        points, lengths, values = [], [], {}
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                request = BatchRequest(Split(split), 0, start // batch_size,
                                       [(0, ids[start:start + batch_size])])
                batch = loader.prepare_batch(loader.load_batch(request),
                                             device)
                targets = batch.target_streamlines()
                outputs = model(batch.inputs_list(), batch.input_streamlines())
                per_prediction = _named(compute_per_prediction_losses(
                    model, outputs, targets))
                per_prediction[ANGLE_KEY] = compute_angular_errors_deg(
                    model, outputs, targets, linear)
                batch_lengths = batch.lengths.to(device)
                for name, batch_values in per_prediction.items():
                    values.setdefault(name, []).append(predictions_to_points(
                        batch_values, batch_lengths, model.add_eos).cpu())
                points.append(batch.target_points.cpu())
                lengths.append(batch.lengths.cpu())
    finally:
        dataset.close()
    lengths = torch.cat(lengths).numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    streamlines = make_array_sequence(torch.cat(points).numpy(), offsets,
                                      lengths)
    return SubjectPointLosses(
        streamlines,
        {name: torch.cat(parts).numpy().astype(np.float32)
         for name, parts in values.items()},
        affine, tuple(int(d) for d in sft_data.space_attributes[1]))


def _named(losses):
    """Terms as the trainer names them, with their sum as ``loss``."""
    named = {LOSS_KEY: sum(losses.values())}
    if len(losses) > 1:
        named.update({f"{LOSS_KEY}_{name}": values
                      for name, values in losses.items()})
    return named


def save_loss_tractogram(point_losses, out_path):
    """Write the streamlines with their per-point values, in RAS mm.

    Each value of :attr:`SubjectPointLosses.values` becomes a
    ``data_per_point`` key (one float32 per point); ``out_path`` is a .trk
    or .trx file, on the streamline group's grid.
    """
    streamlines = point_losses.streamlines
    data_per_point = {
        name: make_array_sequence(values[:, None], streamlines._offsets,
                                  streamlines._lengths)
        for name, values in point_losses.values.items()}
    save_tractogram_atomic(streamlines, point_losses.affine,
                           point_losses.dimensions, out_path,
                           data_per_point=data_per_point,
                           bbox_valid_check=False)


def draw_histograms(point_losses, nb_bins=50):
    """A figure with one histogram per value (loss, its terms, angle).

    Only finite values are counted; each title gives their number, mean
    and median.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = list(point_losses.values)
    figure = Figure(figsize=(5.0 * len(names), 4.0), dpi=100,
                    layout="constrained")
    for ax, name in zip(figure.subplots(1, len(names), squeeze=False)[0],
                        names):
        values = point_losses.values[name]
        values = values[np.isfinite(values)]
        ax.hist(values, bins=nb_bins)
        ax.set_title(f"{name}: {len(values)} points, mean "
                     f"{values.mean():.4g}, median {np.median(values):.4g}",
                     fontsize="small")
        ax.set_xlabel("degrees" if name == ANGLE_KEY else "loss")
        ax.set_ylabel("points")
    return figure
