"""Which inputs a trained model relies on: gradient x input attribution.

A subject's streamlines run through the model as in validation (no
augmentation, eval mode), with the interpolated inputs ``x``, (P, F * K),
as a leaf tensor. The model's own loss (``compute_loss``, the training
loss) summed over the batch's predictions, i.e. the mean loss times their
number so that nothing depends on the batch size, is backpropagated to
``x``. Each input column ``c`` is neighbour ``k``, feature ``f``, ``c = k *
F + f``: the loader's layout (see
:func:`~dwi_ml.data.processing.neighborhood.interpolate_with_neighborhood`).
Averaged over the points whose input the model reads (its prediction
points, :func:`~dwi_ml.models.directions.prediction_rows`), a column gets:

- ``gradient_x_input``: the mean of ``|dL/dx_c * x_c|``, to first order
  how much the loss changes when that value is replaced by 0 (the mean of
  a standardized input);
- ``gradient``: the mean of ``|dL/dx_c|``, how sensitive the loss is to it.

Aggregates sum these means: per feature over its K neighbours, per
neighbour over its F features, per group of features over its features.

Limits: a local, first-order measure (the slope at the data, not the
effect of a large change); scale-dependent (a feature of larger values
gets a larger gradient x input, hence inputs standardized in the HDF5);
column by column (interactions between inputs are not captured). The
previous directions a model adds to each point's input come from the
streamline, not from ``x``: they are not measured. Only ``forward`` and
``compute_loss`` are used, so any model works; an input embedding (linear,
CNN) is part of the model, after ``x``.
"""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import prediction_rows
from dwi_ml.monitoring.loss_per_point import loaded_split
from dwi_ml.monitoring.plotting import DPI
from dwi_ml.training.evaluation import subject_requests
from dwi_ml.training.experiment_builder import (
    build_loader,
    check_streamlines_not_too_short,
    refuse_beyond_max_len,
)
from dwi_ml.training.trainer_optimization import combine_losses, compute_batch_loss

GRADIENT_X_INPUT = "gradient_x_input"
GRADIENT = "gradient"
MEASURES = (GRADIENT_X_INPUT, GRADIENT)
FIGURE_WIDTH_INCHES = 10.0
PANEL_HEIGHT_INCHES = 4.0


class FeatureGroup(NamedTuple):
    """Features ``start`` to ``stop - 1`` of the input volume, named."""
    name: str
    start: int
    stop: int


@dataclass
class InputImportance:
    """Attribution of each input column, averaged over prediction points.

    Attributes
    ----------
    values : dict of str to np.ndarray (F * K,) float64
        :data:`GRADIENT_X_INPUT` and :data:`GRADIENT`, per column
        ``c = k * F + f`` (module docstring).
    nb_features : int
        F, features of the input volume.
    offsets_mm : np.ndarray (K, 3)
        Each neighbour's offset from its point, RAS mm, centre first.
    nb_points : int
        Prediction points averaged over.
    nb_streamlines : int
    """
    values: dict
    nb_features: int
    offsets_mm: np.ndarray
    nb_points: int
    nb_streamlines: int

    @property
    def nb_neighbours(self):
        """K."""
        return len(self.offsets_mm)

    def _grid(self, measure):
        return self.values[measure].reshape(self.nb_neighbours,
                                            self.nb_features)

    def per_feature(self, measure):
        """(F,) sums over the neighbours of ``measure``'s columns."""
        return self._grid(measure).sum(axis=0)

    def per_neighbour(self, measure):
        """(K,) sums over the features of ``measure``'s columns."""
        return self._grid(measure).sum(axis=1)

    def per_group(self, measure, groups):
        """(G,) sums of :meth:`per_feature` over each group's features."""
        per_feature = self.per_feature(measure)
        return np.array([per_feature[group.start:group.stop].sum()
                         for group in groups])


def parse_feature_groups(tokens, nb_features):
    """Named groups of features from ``NAME START [NAME START ...]``.

    Each group runs from its first feature (0-based) to the next group's;
    the last one to the end. The reference's syntax: ``T1 0 FA 1 fODF 2``.

    Parameters
    ----------
    tokens : list of str or None
        ``--feature_names``' values; None gives no group.
    nb_features : int
        F, features of the model's input.

    Returns
    -------
    list of FeatureGroup

    Raises
    ------
    DwiMLUserError
        An odd count, a start that is not an integer, a first group not at
        feature 0, starts not increasing, a start beyond the features, or a
        name given twice.
    """
    if not tokens:
        return []
    option = "--feature_names"
    if len(tokens) % 2:
        raise DwiMLUserError(
            f"{option}: expected pairs NAME START, found {len(tokens)} "
            "values.")
    names, starts = tokens[0::2], []
    for name, start in zip(names, tokens[1::2]):
        try:
            starts.append(int(start))
        except ValueError:
            raise DwiMLUserError(
                f"{option}: expected the first feature of '{name}' as an "
                f"integer, found '{start}'.") from None
    if starts[0] != 0:
        raise DwiMLUserError(
            f"{option}: expected the first group to start at feature 0 "
            f"(every feature in a group), found '{names[0]}' at "
            f"{starts[0]}.")
    for previous, start, name in zip(starts, starts[1:], names[1:]):
        if start <= previous:
            raise DwiMLUserError(
                f"{option}: expected increasing starts, found '{name}' at "
                f"{start} after {previous}.")
    if starts[-1] >= nb_features:
        raise DwiMLUserError(
            f"{option}: expected starts below the model's {nb_features} "
            f"input features, found '{names[-1]}' at {starts[-1]}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DwiMLUserError(
            f"{option}: expected distinct names, found "
            f"{', '.join(repeated)} more than once.")
    return [FeatureGroup(name, start, stop) for name, start, stop
            in zip(names, starts, starts[1:] + [nb_features])]


def batch_attribution_sums(model, batch):
    """Sums over a batch's prediction points of ``|dL/dx * x|`` and ``|dL/dx|``.

    Parameters
    ----------
    model : MainModelOneInput
        In eval mode; ``x`` is cast to its dtype (float64 after
        ``model.double()``).
    batch : LoadedBatch
        Prepared, with its inputs, on the model's device.

    Returns
    -------
    sums : dict of str to torch.Tensor (F * K,) float64
        One per name of :data:`MEASURES`.
    nb_points : int
        The prediction points summed over.
    """
    inputs = batch.inputs.detach().to(model.dtype).requires_grad_(True)
    # cuDNN runs an RNN's backward in training mode only; the model stays
    # in eval mode (no dropout).
    with torch.backends.cudnn.flags(enabled=False):
        outputs = model(list(torch.split(inputs, batch.lengths.tolist())),
                        batch.input_streamlines())
        losses, n_points = compute_batch_loss(model, outputs, batch)
        gradient, = torch.autograd.grad(combine_losses(losses)[0] * n_points,
                                        inputs)
    # A model without EOS (or without the attribute: one of your own)
    # predicts at every point but the last.
    rows = prediction_rows(batch.lengths.to(inputs.device),
                           getattr(model, "add_eos", False))
    gradient, inputs = gradient[rows], inputs.detach()[rows]
    return {GRADIENT_X_INPUT: (gradient * inputs).abs().sum(
                0, dtype=torch.float64),
            GRADIENT: gradient.abs().sum(0, dtype=torch.float64)}, len(rows)


def compute_input_importance(model, hdf5_file, subject_id, input_group,
                             streamline_group, batch_size=200, device="cpu",
                             max_streamlines=None):
    """The attribution of each input column over one subject's streamlines.

    Parameters
    ----------
    model : MainModelOneInput
        In eval mode, on ``device``; any model of the batch contract
        (:mod:`dwi_ml.models.directions`).
    hdf5_file, subject_id : str
        The subject may be in any split.
    input_group, streamline_group : str
    batch_size : int
        Streamlines per forward and backward pass.
    device : str or torch.device
    max_streamlines : int or None
        Up to this many streamlines, evenly spread over the subject's file
        (:func:`~dwi_ml.training.evaluation.spread_ids`); None: all.

    Returns
    -------
    InputImportance
    """
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject_id, volume_groups=[input_group],
                      streamline_groups=[streamline_group])
    where = (f"HDF5 file {hdf5_file}, subject '{subject_id}', group "
             f"'{streamline_group}'")
    try:
        split = loaded_split(dataset)
        loader = build_loader(dataset, {"streamline_group": streamline_group,
                                        "input_group": input_group},
                              model, device)
        check_streamlines_not_too_short(model, loader, split)
        refuse_beyond_max_len(model, loader, split, where)
        _, _, requests = next(subject_requests(
            dataset, split, streamline_group, batch_size, max_streamlines))
        if not requests:
            raise DwiMLUserError(f"{where}: expected streamlines, found none.")
        sums, nb_points, nb_streamlines = dict.fromkeys(MEASURES, 0), 0, 0
        for request in requests:
            batch = loader.prepare_batch(loader.load_batch(request), device)
            batch_sums, batch_points = batch_attribution_sums(model, batch)
            sums = {name: sums[name] + batch_sums[name] for name in MEASURES}
            nb_points += batch_points
            nb_streamlines += batch.nb_streamlines
    finally:
        dataset.close()
    values = {name: (total / nb_points).cpu().numpy()
              for name, total in sums.items()}
    if not all(np.isfinite(array).all() for array in values.values()):
        raise DwiMLUserError(
            f"{where}: expected finite gradients of the loss, found NaN or "
            "infinite ones (a diverged model?).")
    return InputImportance(values, model.nb_features,
                           model.input_spec.neighborhood.offsets_mm(),
                           nb_points, nb_streamlines)


def offset_label(offset_mm):
    """``(+1.5, 0, -1.5)``: a neighbour's offset in mm, for an axis."""
    return "(" + ", ".join(f"{value:+g}" if value else "0"
                           for value in offset_mm) + ")"


def draw_importance(importance, groups=()):
    """Bar charts of the mean ``|gradient x input|`` per feature and, when the
    model reads a neighbourhood, per neighbour.

    Parameters
    ----------
    importance : InputImportance
    groups : list of FeatureGroup
        Colour the features by group, with a legend.

    Returns
    -------
    matplotlib.figure.Figure
        ``FIGURE_WIDTH_INCHES`` wide, ``PANEL_HEIGHT_INCHES`` per panel, at
        :data:`~dwi_ml.monitoring.plotting.DPI`.
    """
    with_neighbours = importance.nb_neighbours > 1
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES,
                             PANEL_HEIGHT_INCHES * (1 + with_neighbours)),
                    dpi=DPI, layout="constrained")
    axes = figure.subplots(1 + with_neighbours, 1, squeeze=False)[:, 0]
    figure.suptitle(f"Mean |gradient x input| of the loss over "
                    f"{importance.nb_points} points of "
                    f"{importance.nb_streamlines} streamlines",
                    fontsize="medium")
    _draw_features(axes[0], importance, groups)
    if with_neighbours:
        _draw_neighbours(axes[1], importance)
    return figure


def _draw_features(ax, importance, groups):
    colors = np.full(importance.nb_features, "C0", dtype=object)
    for index, group in enumerate(groups):
        colors[group.start:group.stop] = f"C{index % 10}"
    ax.bar(np.arange(importance.nb_features),
           importance.per_feature(GRADIENT_X_INPUT), color=list(colors))
    if groups:
        ax.legend(handles=[Patch(color=f"C{index % 10}", label=group.name)
                           for index, group in enumerate(groups)],
                  fontsize="small")
    ax.set_xlabel("input feature (index in the input volume)")
    ax.set_ylabel("mean |gradient x input|"
                  + ("\nsummed over neighbours" * (importance.nb_neighbours > 1)))


def _draw_neighbours(ax, importance):
    positions = np.arange(importance.nb_neighbours)
    ax.bar(positions, importance.per_neighbour(GRADIENT_X_INPUT), color="C7")
    ax.set_xticks(positions, [offset_label(offset)
                              for offset in importance.offsets_mm],
                  rotation=90, fontsize="x-small")
    ax.set_xlabel("neighbour: offset from the point (RAS mm), centre first")
    ax.set_ylabel("mean |gradient x input|\nsummed over features")


def importance_as_dict(importance, groups=()):
    """The values of ``importance``, JSON-able (lists of floats).

    Keys: ``nb_points``, ``nb_streamlines``, ``nb_features``,
    ``nb_neighbours``, ``per_column`` (``c = neighbour * nb_features +
    feature``), ``per_feature``, ``per_neighbour`` (with ``offsets_mm``) and
    ``per_group`` (by name, with ``first_feature`` and ``nb_features``;
    empty without groups), each with one value per measure of
    :data:`MEASURES`.
    """
    def lists(values):
        return {name: values(name).tolist() for name in MEASURES}
    per_group = {group.name: {"first_feature": group.start,
                              "nb_features": group.stop - group.start}
                 for group in groups}
    for name in MEASURES:
        for group, value in zip(groups, importance.per_group(name, groups)):
            per_group[group.name][name] = float(value)
    return {"nb_points": importance.nb_points,
            "nb_streamlines": importance.nb_streamlines,
            "nb_features": importance.nb_features,
            "nb_neighbours": importance.nb_neighbours,
            "per_column": lists(importance.values.get),
            "per_feature": lists(importance.per_feature),
            # + 0.0: no "-0.0" in the file.
            "per_neighbour": {"offsets_mm": (importance.offsets_mm
                                             + 0.0).tolist(),
                              **lists(importance.per_neighbour)},
            "per_group": per_group}
