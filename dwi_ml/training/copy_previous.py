"""The "copy the previous direction" baseline: its loss on a subset.

Streamlines are smooth, so predicting at each point the direction of the
segment that led there already scores well under a direction loss. A
model's loss means something only next to this rule's, on the same
streamlines, in the same format and with the same loss.

The rule's output at a point is the previous segment's direction (voxel
space, as the models see it), as the getter scales its targets: a unit
vector by default, at ``normalize_targets``'s norm when set, the segment
itself for targets left unscaled (the previous target, so that the L2
loss measures the turn, not a difference of norms). It is a zero vector at
the first point of a streamline, where there is none: there, the cosine
loss is 1 and the L2 loss is the target's norm. ``skip_first_point``
leaves first points out. With EOS, the rows are the model's (one per
point, the last one's target being "stop"): the rule's direction loss is 0
where the target is "stop", so its mean is comparable to the model's
``loss_direction``.

Only regression getters have such an output: the rule gives no
probability, so the negative log-likelihood of the Gaussian, Fisher-von
Mises and classification getters is not defined for it.
"""
import math

import torch

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.regression import (
    REGRESSION_KEYS,
    CosineRegressionDG,
)
from dwi_ml.models.directions import (
    compute_direction_targets,
    compute_previous_dirs,
    nb_predictions,
    streamline_lengths,
)
from dwi_ml.training.callbacks import Callback
from dwi_ml.training.evaluation import (
    WeightedMeans,
    add_angles,
    angles_deg_mm,
    subject_requests,
    with_null_means,
)


def check_regression_getter(direction_getter, where):
    """Refuse a direction getter whose output is not a direction."""
    if direction_getter.key not in REGRESSION_KEYS:
        raise DwiMLUserError(
            f"{where}: expected a regression direction getter "
            f"({', '.join(REGRESSION_KEYS)}), found '{direction_getter.key}': "
            "copying the previous direction gives no probability, so its "
            "loss is not defined.")


def copy_previous_point_losses(direction_getter, streamlines,
                               skip_first_point=False):
    """The rule's direction loss at each prediction point of a batch.

    Parameters
    ----------
    direction_getter : regression direction getter
        Gives the loss (and whether rows include the last points: EOS).
    streamlines : list of torch.Tensor (n_i, 3)
        Voxel space, corner origin.
    skip_first_point : bool
        Leave out each streamline's first point (no previous direction).

    Returns
    -------
    losses : torch.Tensor (M,)
        In prediction order; 0 where the target is "stop".
    previous, targets : torch.Tensor (M, 3)
        The rule's outputs and the target directions, voxel units.
    has_direction : torch.Tensor (M,) bool
        Rows with both a previous and a target direction (for angles).
    """
    add_eos = direction_getter.add_eos
    targets, eos = compute_direction_targets(streamlines, add_eos)
    counts = nb_predictions(streamline_lengths(streamlines), add_eos)
    first_rows = torch.cumsum(counts, 0) - counts
    is_first = torch.zeros(len(targets), dtype=torch.bool)
    is_first[first_rows[counts > 0]] = True
    previous = _previous_as_targets(direction_getter, streamlines, targets,
                                    is_first)
    losses = direction_getter.compute_direction_losses(previous, targets)
    has_direction = ~is_first
    if eos is not None:
        losses = (1 - eos) * losses
        has_direction &= eos == 0
    if skip_first_point:
        keep = ~is_first
        return (losses[keep], previous[keep], targets[keep],
                has_direction[keep])
    return losses, previous, targets, has_direction


def _previous_as_targets(direction_getter, streamlines, targets, is_first):
    """Each row's previous segment, scaled as the getter scales targets
    (the cosine loss ignores norms: unit vectors)."""
    norm = direction_getter.normalize_targets
    if norm is None and direction_getter.key != CosineRegressionDG.key:
        # Unscaled targets: the previous row's target, the segment itself.
        previous = torch.zeros_like(targets)
        previous[1:] = targets[:-1]
        previous[is_first] = 0
        return previous
    unit = compute_previous_dirs(streamlines, 1, direction_getter.add_eos)
    return unit if norm is None else norm * unit


def copy_previous_losses(dataset, split, streamline_group, direction_getter,
                         streamline_format=None, skip_first_point=False,
                         batch_size=1000, max_streamlines=None):
    """The rule's loss and angles per subject of ``split``.

    Parameters
    ----------
    dataset : MultiSubjectDataset
        With ``split`` loaded, and at least one volume group (none is read).
    split : str
        'training', 'validation' or 'testing'.
    streamline_group : str
    direction_getter : regression direction getter
        Its loss (and EOS rows), e.g. an experiment model's.
    streamline_format : StreamlineFormat or None
        The model's format: streamlines are resampled or compressed to it,
        as the loader does in validation. None keeps them as stored.
    skip_first_point : bool
    batch_size : int
        Streamlines per pass.
    max_streamlines : int or None
        Score up to this many streamlines of each subject, evenly spread
        over its file (all when None).

    Returns
    -------
    dict
        As :func:`~dwi_ml.training.evaluation.evaluate_model`:
        ``{subject_id: {'loss', 'angular_error_deg', 'n_points'}, ...,
        'all': {...}}``. The loss is the mean over loss points; the angle,
        in degrees and RAS mm, between the previous and the next segment,
        over points that have both.
    """
    check_regression_getter(direction_getter, "direction getter")
    if not dataset.volume_groups:
        raise DwiMLUserError(
            f"HDF5 file '{dataset.hdf5_file}': expected a volume group to "
            "read streamlines through, found none.")
    spec = (InputSpec() if streamline_format is None
            else InputSpec(streamline_format=streamline_format))
    # Interpolation is left to prepare_batch, which is never called: no
    # volume is read.
    loader = BatchLoaderOneInput(dataset, streamline_group,
                                 dataset.volume_groups[0], input_spec=spec,
                                 interpolation_device="cpu")
    results, overall, overall_angles = {}, WeightedMeans(), WeightedMeans()
    with torch.no_grad():
        for subject_id, linear, requests in subject_requests(
                dataset, split, streamline_group, batch_size,
                max_streamlines):
            linear = torch.as_tensor(linear, dtype=torch.float32)
            losses, angles = WeightedMeans(), WeightedMeans()
            for request in requests:
                streamlines = loader.load_batch(request).target_streamlines()
                point_losses, previous, targets, has_direction = \
                    copy_previous_point_losses(direction_getter, streamlines,
                                               skip_first_point)
                if len(point_losses):
                    losses.add({"loss": point_losses.mean().item()},
                               len(point_losses))
                add_angles(angles_deg_mm(previous[has_direction],
                                         targets[has_direction], linear),
                           angles, overall_angles)
            values = {"loss": losses.mean_of("loss"),
                      "angular_error_deg": angles.mean_of("angular_error_deg"),
                      "n_points": losses.n_points}
            results[subject_id] = values
            if values["loss"] is not None:
                overall.add({"loss": values["loss"]}, values["n_points"])
    results["all"] = {"loss": overall.mean_of("loss"),
                      "angular_error_deg":
                          overall_angles.mean_of("angular_error_deg"),
                      "n_points": overall.n_points}
    return with_null_means(results)



def copy_previous_losses_on_hdf5(hdf5_file, split, streamline_group,
                                 direction_getter, streamline_format=None,
                                 skip_first_point=False, batch_size=1000):
    """:func:`copy_previous_losses` on a lazily read HDF5 file (only the
    streamline group of ``split`` is read)."""
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    try:
        dataset.load_data(load_training=split == "training",
                          load_validation=split == "validation",
                          load_testing=split == "testing",
                          streamline_groups=[streamline_group])
        return copy_previous_losses(dataset, split, streamline_group,
                                    direction_getter, streamline_format,
                                    skip_first_point, batch_size)
    finally:
        dataset.close()


BASELINE_LOG = "copy_previous_valid_loss"
# Streamlines of each validation subject the logged baseline is computed on:
# its standard error is then far below its differences with a model's loss,
# and a large validation set costs seconds, not minutes, at each start.
BASELINE_MAX_STREAMLINES = 10_000


class CopyPreviousBaseline(Callback):
    """Log the rule's loss on the validation set beside ``valid_loss``.

    At each epoch end it sets ``copy_previous_valid_loss``: the loss of
    "copy the previous direction" on the run's validation streamlines, in
    the model's format and with its direction getter's loss, on up to
    :data:`BASELINE_MAX_STREAMLINES` streamlines of each validation subject
    (computed once per process; the same value at every epoch). With EOS
    it compares with ``valid_loss_direction``. Models without a regression direction
    getter, and runs without validation, get no such log.
    """

    name = None  # no state: the value is computed again on resume

    def __init__(self):
        self.value = None

    def on_validation_end(self, trainer, epoch):
        getter = getattr(trainer.model, "direction_getter", None)
        if (not trainer.use_validation or getter is None
                or getter.key not in REGRESSION_KEYS):
            return
        if self.value is None:
            loader = trainer.batch_loader
            self.value = copy_previous_losses(
                loader.dataset, "validation", loader.streamline_group, getter,
                trainer.model.input_spec.streamline_format,
                max_streamlines=BASELINE_MAX_STREAMLINES)["all"]["loss"]
        trainer.monitors.get_or_create(BASELINE_LOG).set_epoch_value(
            math.nan if self.value is None else self.value)
