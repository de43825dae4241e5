"""Evaluate a trained model on a subset: per-subject losses and angles.

The loop is the validation loop of the trainer (no augmentation, no
gradients), run subject by subject over every streamline of any subset.
"""
import numpy as np
import torch

from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.layout import SPLITS
from dwi_ml.io_utils.arg_checks import check_choice, check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import compute_direction_targets
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.training.experiment_builder import (
    build_loader,
    check_streamlines_not_too_short,
    refuse_beyond_max_len,
)
from dwi_ml.training.monitors import BatchMeanMonitor
from dwi_ml.training.trainer_optimization import (
    combine_losses,
    compute_batch_loss,
    loss_log_values,
)


class WeightedMeans:
    """Points-weighted means of named values (one monitor per name).

    ``add(values, n_points)`` adds a batch's means; ``mean_of(name)`` and
    ``means()`` read them.
    """

    def __init__(self):
        self.monitors = {}
        self.n_points = 0

    def add(self, values, n_points):
        for name, value in values.items():
            self.monitors.setdefault(name, BatchMeanMonitor(name)).update(
                value, n_points)
        self.n_points += n_points

    def mean_of(self, name):
        """The mean of one value; None (JSON null) when it was never added."""
        monitor = self.monitors.get(name)
        return None if monitor is None else monitor.running_mean

    def means(self):
        return {**{name: monitor.running_mean
                   for name, monitor in self.monitors.items()},
                "n_points": self.n_points}


def angles_deg_mm(directions, other_directions, linear):
    """Angles (degrees) between two (M, 3) sets of voxel directions, taken
    in mm through ``linear``, the (3, 3) voxel-to-RAS part of the affine."""
    cosines = torch.nn.functional.cosine_similarity(
        directions @ linear.T, other_directions @ linear.T, dim=1)
    return torch.rad2deg(torch.arccos(cosines.clamp(-1, 1)))


def gives_directions(model):
    """Whether ``model`` gives tracking directions (``get_tracking_directions``,
    as the tracking models do): only then are angles measured. A model
    without ``add_eos`` is taken to predict at every point but the last."""
    return callable(getattr(model, "get_tracking_directions", None))


def _batch_angles_deg(model, outputs, target_streamlines, linear):
    """Angles (degrees) between predicted and true directions, in mm."""
    predicted, _ = model.get_tracking_directions(outputs, "det")
    targets, eos = compute_direction_targets(
        target_streamlines, getattr(model, "add_eos", False))
    if eos is not None:
        predicted, targets = predicted[eos == 0], targets[eos == 0]
    return angles_deg_mm(predicted, targets, linear)


def spread_ids(nb_streamlines, max_streamlines=None):
    """Up to ``max_streamlines`` streamline ids, evenly spread over
    ``range(nb_streamlines)`` (all when None or when there are fewer):
    files often store streamlines bundle after bundle."""
    if max_streamlines is None or nb_streamlines <= max_streamlines:
        return np.arange(nb_streamlines)
    return np.unique(np.linspace(0, nb_streamlines - 1,
                                 max_streamlines).round().astype(np.int64))


def subject_requests(dataset, split, streamline_group, batch_size,
                     max_streamlines=None):
    """The batches of every streamline of each subject of ``split``, or of
    up to ``max_streamlines`` of each (:func:`spread_ids`).

    Yields
    ------
    subject_id : str
    linear : np.ndarray, shape (3, 3)
        The voxel-to-RAS part of the streamline group's affine (for angles
        in mm).
    requests : list of BatchRequest
        ``batch_size`` streamlines each, in order.
    """
    group_idx = dataset.streamline_groups.index(streamline_group)
    subset = getattr(dataset, f"{split}_set")
    for subj_idx, subject_id in enumerate(subset.subjects):
        sft_data = subset.get_subject(subj_idx).sft_data_list[group_idx]
        linear = np.asarray(sft_data.space_attributes[0])[:3, :3]
        ids = spread_ids(sft_data.nb_streamlines, max_streamlines)
        yield subject_id, linear, [
            BatchRequest(split, 0, start // batch_size,
                         [(subj_idx, ids[start:start + batch_size])])
            for start in range(0, len(ids), batch_size)]


def add_angles(batch_angles, *means):
    """Add a batch's mean angle (with its count) to each WeightedMeans."""
    if len(batch_angles):
        for each in means:
            each.add({"angular_error_deg": batch_angles.mean().item()},
                     len(batch_angles))


def evaluate_model(model, dataset, split, input_group, streamline_group,
                   batch_size=200, device="cpu", max_streamlines=None):
    """Losses and mean angular error of ``model`` per subject of ``split``.

    Parameters
    ----------
    model : MainModelOneInput
        On ``device``; evaluated in eval mode (no dropout), then given back
        in the mode it came in.
    dataset : MultiSubjectDataset
        With ``split`` loaded (refused when it has no subject).
    split : str
        'training', 'validation' or 'testing'.
    input_group, streamline_group : str
        The dataset's groups the model reads and predicts.
    batch_size : int
        Streamlines per forward pass.
    device : str or torch.device
        Where the batches are moved and interpolated.
    max_streamlines : int or None
        Evaluate up to this many streamlines of each subject, evenly spread
        over its file (all when None).

    Returns
    -------
    dict
        ``{subject_id: {'loss': ..., 'loss_NAME': ..., 'angular_error_deg':
        ..., 'n_points': ...}, ..., 'all': {...}}``. Losses are means over
        predicted points; angles compare the deterministic directions with
        the streamlines' next segments, in RAS mm (anisotropic voxels do
        not bend them), leaving out points where the target is "stop";
        ``'all'`` averages the losses over all loss points and the angles
        over all angles of the subset. A mean of nothing (a subject without
        streamlines, or without an angle) is None, and so is every angle of
        a model without tracking directions (:func:`gives_directions`).
    """
    owner = "evaluate_model"
    split = check_choice("split", split, SPLITS, owner)
    check_int("batch_size", batch_size, 1, owner)
    if max_streamlines is not None:
        check_int("max_streamlines", max_streamlines, 1, owner)
    if not getattr(dataset, f"{split}_set").nb_subjects:
        raise DwiMLUserError(
            f"{owner}: expected {split} subjects in the dataset, found none "
            f"loaded (load_data(load_{split}=True), or a split that the "
            f"file {dataset.hdf5_file} lists).")
    loader = build_loader(dataset, {"streamline_group": streamline_group,
                                    "input_group": input_group}, model, device)
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, dataset, loader, split, streamline_group,
                         batch_size, device, max_streamlines)
    finally:
        model.train(was_training)


def _evaluate(model, dataset, loader, split, streamline_group, batch_size,
              device, max_streamlines):
    """:func:`evaluate_model`'s work, with the model in eval mode."""
    # Refused before any batch, not at the first too long one.
    refuse_beyond_max_len(model, loader, split, f"--subset {split}")
    check_streamlines_not_too_short(model, loader, split)
    # Angles are averaged over their own points: with EOS a streamline has
    # one angle fewer than loss points (none where the target is "stop").
    results, overall, overall_angles = {}, WeightedMeans(), WeightedMeans()
    with torch.no_grad():
        for subject_id, linear, requests in subject_requests(
                dataset, split, streamline_group, batch_size,
                max_streamlines):
            linear = torch.as_tensor(linear, dtype=torch.float32,
                                     device=device)
            losses, angles = WeightedMeans(), WeightedMeans()
            for request in requests:
                batch = loader.prepare_batch(loader.load_batch(request), device)
                outputs = model(batch.inputs_list(), batch.input_streamlines())
                batch_losses, n_points = compute_batch_loss(model, outputs,
                                                            batch)
                losses.add(loss_log_values(*combine_losses(batch_losses)),
                           int(n_points))
                if gives_directions(model):
                    add_angles(_batch_angles_deg(
                        model, outputs, batch.target_streamlines(), linear),
                        angles, overall_angles)
            values = {**losses.means(),
                      "angular_error_deg": angles.mean_of("angular_error_deg")}
            results[subject_id] = values
            overall.add({key: value for key, value in values.items()
                         if key not in ("n_points", "angular_error_deg")},
                        values["n_points"])
    results["all"] = {**overall.means(), "angular_error_deg":
                      overall_angles.mean_of("angular_error_deg")}
    return with_null_means(results)


def subject_table(results, names):
    """The lines of a text table of per-subject results, for a script's
    output: a header, then one row per subject (and 'all') with the means
    of ``names`` ('n/a' for None) and ``n_points``.

    Parameters
    ----------
    results : dict
        As :func:`evaluate_model` returns it.
    names : sequence of str
        The columns, in order.

    Returns
    -------
    list of str
    """
    def column(mean):
        return f"{'n/a':>20}" if mean is None else f"{mean:>20.5f}"
    lines = [f"{'subject':<16}" + "".join(f"{name:>20}" for name in names)
             + f"{'n_points':>10}"]
    lines += [f"{subject:<16}" + "".join(column(values[name])
                                        for name in names)
              + f"{values['n_points']:>10d}"
              for subject, values in results.items()]
    return lines


def with_null_means(results):
    """Every entry with every value: a subject without streamlines (no loss
    point) gets None for the means of nothing, never NaN (not JSON)."""
    names = dict.fromkeys(name for values in results.values()
                          for name in values)
    return {subject: {name: values.get(name) for name in names}
            for subject, values in results.items()}


def evaluate_model_folder(model_dir, hdf5_file, split, input_group,
                          streamline_group, batch_size=200, device="cpu"):
    """:func:`evaluate_model` for a saved model, on a lazily read HDF5.

    Parameters
    ----------
    model_dir : str
        A saved model folder (an experiment's ``best_model/`` or
        ``checkpoint/model``).
    hdf5_file : str
    split, input_group, streamline_group, batch_size, device
        As in :func:`evaluate_model`.

    Returns
    -------
    dict
        As :func:`evaluate_model` returns it.
    """
    return evaluate_model_on_hdf5(
        load_model_from_params_and_state(model_dir, device), hdf5_file, split,
        input_group, streamline_group, batch_size, device)


def evaluate_model_on_hdf5(model, hdf5_file, split, input_group,
                           streamline_group, batch_size=200, device="cpu"):
    """:func:`evaluate_model` on a lazily read HDF5 file.

    Parameters
    ----------
    model : MainModelOneInput
        In eval mode, on ``device``.
    hdf5_file : str
        Only ``split``'s subjects and the two groups are loaded.
    split, input_group, streamline_group, batch_size, device
        As in :func:`evaluate_model`.

    Returns
    -------
    dict
        As :func:`evaluate_model` returns it.
    """
    check_choice("split", split, SPLITS, "evaluate_model_on_hdf5")
    check_int("batch_size", batch_size, 1, "evaluate_model_on_hdf5")
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=split == "training",
                      load_validation=split == "validation",
                      load_testing=split == "testing",
                      volume_groups=[input_group],
                      streamline_groups=[streamline_group])
    try:
        return evaluate_model(model, dataset, split, input_group,
                              streamline_group, batch_size, device)
    finally:
        dataset.close()
