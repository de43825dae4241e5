"""Tracking validation: judge the model by the streamlines it tracks.

A callback (:class:`TrackingValidationCallback`) that, every ``every``
epochs (epochs 0, N, 2N...), after the local validation and before the
best epoch is chosen, tracks on the validation subjects with the current
model (eval mode, no gradients, on the training device) using the tracker
of ``dwiml_track_from_model.py`` (:class:`~dwi_ml.tracking.propagation.
BatchedTracker`, deterministic directions), and writes its metrics as
per-epoch monitors (``logs/NAME.npy``, Comet, ``visualize_logs.py``). On
the epochs in between, each metric repeats its last value and
``tracking_time`` is 0. Two modes:

``generation`` (the reference dwi_ml's generation validation)
    Each validation streamline (or ``nb_streamlines`` of them per subject,
    drawn once) is resampled to the tracking step, its first ``nb_points``
    points are kept and the model tracks on from there, forward.
    ``tracking_endpoint_distance``: mean distance (mm) from the last
    generated point to the true streamline's last point.
    ``connectivity_score`` (when the HDF5 holds the group's connectivity,
    :mod:`dwi_ml.data.hdf5.connectivity`): the share of generated
    streamlines whose endpoints join a connection of the subject's known
    matrix (the reference's "1 - connectivity loss").

``whole_subject``
    ``nb_seeds`` seeds drawn in the seeding mask group, tracked both ways
    as ``dwiml_track_from_model.py`` does with its defaults (45 degrees,
    10 to 300 mm, EOS above 0.5 unless ``eos_stop`` is given), scored by
    :func:`dwi_ml.tracking.scoring.score_tractogram` against the subject's
    streamline group: ``tracking_f1``, ``tracking_ol``, ``tracking_or``
    (means over bundles when ``bundle_key`` labels exist, else of the
    voxel masks of the whole tractograms), ``tracking_vc``, ``tracking_ic``,
    ``tracking_nc`` (with labels only) and ``tracking_points_within_1_vox``,
    ``tracking_points_within_2_vox``, ``tracking_points_aligned``.

Metrics are pooled over the validation subjects (generation: over all
streamlines; whole_subject: the mean of the subjects' scores).

Determinism: the streamlines and seeds of subject ``i`` come from
``np.random.default_rng([trainer.seed, i])``, the same at every epoch, and
deterministic tracking draws nothing, so the global random streams are
untouched: a resumed run tracks exactly as an uninterrupted one. Under
torchrun every rank tracks the same streamlines, so that all agree on the
best epoch.
"""
import logging
import time

import numpy as np

from dwi_ml.data.hdf5.connectivity import FROM_BLOCS
from dwi_ml.data.packed import make_array_sequence, packed_arrays
from dwi_ml.data.processing.resampling import resample_to_step_size
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.bundle_scoring import overlap_scores
from dwi_ml.tracking.connectivity import (
    connectivity_from_blocs,
    connectivity_from_labels,
    score_connectivity,
)
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.scoring import DenseReference, densify, score_tractogram
from dwi_ml.tracking.seeding import make_seeds
from dwi_ml.tracking.stopping import (
    DEFAULT_MAX_ANGLE_DEG,
    DEFAULT_MAX_LENGTH_MM,
    DEFAULT_MIN_LENGTH_MM,
    TrackingMask,
    default_eos_threshold,
    keep_by_length,
    max_nb_points,
)
from dwi_ml.tracking.tracker_args import check_tracking_model
from dwi_ml.tracking.tracking_validation_args import (
    GENERATION,
    TRACKING_TIME,
    TrackingValidationParams,
    check_tracking_validation_data,
)
from dwi_ml.tracking.training_facts import choose_step_size, model_max_length_mm
from dwi_ml.tracking.voxel_masks import point_voxel_indices, voxel_set
from dwi_ml.training.callbacks import Callback

logger = logging.getLogger(__name__)

# score_tractogram's key of each whole_subject metric.
_SCORE_KEYS = {
    "tracking_vc": "VC", "tracking_ic": "IC", "tracking_nc": "NC",
    "tracking_f1": "mean_F1", "tracking_ol": "mean_OL",
    "tracking_or": "mean_OR",
    "tracking_points_within_1_vox": "points_within_1_vox",
    "tracking_points_within_2_vox": "points_within_2_vox",
    "tracking_points_aligned": "points_aligned",
}


def endpoint_distances_mm(end_points_vox, true_end_points_vox, affine):
    """Distance (mm) between generated and true endpoints, row by row.

    Parameters
    ----------
    end_points_vox, true_end_points_vox : np.ndarray, shape (N, 3)
        Voxel space (any origin, the same for both).
    affine : np.ndarray, shape (4, 4)
        Voxel-to-RAS mm affine.

    Returns
    -------
    np.ndarray, shape (N,), float64
    """
    differences = (np.asarray(end_points_vox, dtype=np.float64)
                   - np.asarray(true_end_points_vox, dtype=np.float64))
    return np.linalg.norm(differences @ np.asarray(affine)[:3, :3].T, axis=1)


def endpoint_pairs(start_points_vox, end_points_vox):
    """Two-point streamlines (start, end): all connectivity looks at."""
    nb_streamlines = len(start_points_vox)
    points = np.stack([start_points_vox, end_points_vox], axis=1)
    return make_array_sequence(
        points.reshape(-1, 3).astype(np.float32),
        np.arange(nb_streamlines, dtype=np.int64) * 2,
        np.full(nb_streamlines, 2, dtype=np.int64))


def nb_in_true_connections(streamlines_vox, connectivity, shape):
    """How many streamlines join a connection of the known matrix.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin (only endpoints matter).
    connectivity : dwi_ml.data.hdf5.connectivity.Connectivity
    shape : tuple of 3 int
        Grid of the streamlines (for blocs).

    Returns
    -------
    int
    """
    if connectivity.matrix_type == FROM_BLOCS:
        predicted = connectivity_from_blocs(streamlines_vox, shape,
                                            connectivity.nb_blocs)
    else:
        predicted = connectivity_from_labels(streamlines_vox,
                                             connectivity.label_volume)
    scores = score_connectivity(predicted, connectivity.matrix)
    share = scores["streamlines_in_true_connections"]
    # Undefined (None) without streamlines: none of them joins anything.
    return 0 if share is None else int(round(
        share * scores["nb_predicted_streamlines"]))


def whole_tractogram_overlap(tracked_vox, reference_vox, shape, affine):
    """OL, OR and F1 of the tracked voxel mask against the reference's.

    Both are densified (:func:`dwi_ml.tracking.scoring.densify`) first, as
    for the bundle scores; ``reference_vox`` may be a
    :class:`~dwi_ml.tracking.scoring.DenseReference` (of the default step)
    already, whose voxels are then found once for all epochs. All 0 when
    the reference covers no voxel.
    """
    if not isinstance(reference_vox, DenseReference):
        reference_vox = DenseReference(reference_vox, affine)
    reference_mask = reference_vox.voxel_set(shape)
    if len(reference_mask) == 0:
        return 0.0, 0.0, 0.0
    tracked_mask = voxel_set(point_voxel_indices(
        packed_arrays(densify(tracked_vox, affine))[0], shape))
    return overlap_scores(tracked_mask, reference_mask)


def tracking_validation_callbacks(saved_params):
    """``[TrackingValidationCallback]`` from ``parameters.json``'s
    ``tracking_validation`` section; ``[]`` when it is absent or null."""
    if not saved_params:
        return []
    return [TrackingValidationCallback(
        TrackingValidationParams(**saved_params))]



def check_nb_prefix_points(nb_points, max_length_mm, step_size_mm):
    """Refuse generation prefixes of ``nb_points`` points that leave no
    step to track within ``max_length_mm`` at ``step_size_mm``."""
    most_points = max_nb_points(max_length_mm, step_size_mm)
    if nb_points >= most_points:
        raise DwiMLUserError(
            f"--tracking_validation_nb_points: expected fewer than "
            f"{most_points} points ({max_length_mm:g} mm at "
            f"{step_size_mm} mm steps), found {nb_points}.")


def check_eos_stop_for_model(eos_stop, add_eos):
    """Refuse an EOS threshold (``eos_stop`` not None) for a model without
    EOS (``add_eos`` False)."""
    if eos_stop is not None and not add_eos:
        raise DwiMLUserError(
            f"argument --tracking_validation_eos_stop: expected a model "
            f"with EOS (add_eos), found one without (threshold {eos_stop}).")


class TrackingValidationCallback(Callback):
    """Track on the validation subjects every N epochs (module docstring).

    Parameters
    ----------
    params : TrackingValidationParams
        See :mod:`dwi_ml.tracking.tracking_validation_args`.

    Notes
    -----
    Reads the trainer's ``model``, ``device``, ``seed``, ``experiment_dir``,
    ``monitors``, its BatchLoaderOneInput's ``input_group_idx`` and
    ``streamline_group_idx`` and its dataset's validation set.
    """

    def __init__(self, params):
        self.params = params
        self.metric_names = ()
        self.step_size_mm = None
        self.max_length_mm = None
        # Validation subject index -> its DenseReference: the reference
        # streamlines never change, so they are densified (and their k-d
        # tree built) once per run, not at every tracking epoch.
        self._dense_references = {}

    def on_train_start(self, trainer):
        # Before the first epoch, not at the first tracking epoch.
        check_tracking_model(trainer.model, "--tracking_validation_every")
        self.metric_names = check_tracking_validation_data(
            trainer.batch_sampler.dataset.hdf5_file,
            trainer.batch_loader.streamline_group, self.params,
            trainer.best_tracker.metric)
        self.step_size_mm = choose_step_size(None, trainer.model,
                                             trainer.experiment_dir)
        # A Transformer tracks max_len steps at most: no further.
        self.max_length_mm = model_max_length_mm(
            trainer.model, self.step_size_mm, DEFAULT_MAX_LENGTH_MM)
        check_nb_prefix_points(self.params.nb_points, self.max_length_mm,
                               self.step_size_mm)
        check_eos_stop_for_model(self.params.eos_stop,
                                 getattr(trainer.model, "add_eos", False))
        # A resumed run's tracking, which --max_time must leave room for
        # before this process has timed one (no step is polled during it).
        if TRACKING_TIME in trainer.monitors:
            trainer.interruptions.expect_epoch_end(max(
                trainer.monitors[TRACKING_TIME].epoch_history, default=0.0))

    def on_validation_end(self, trainer, epoch):
        if epoch % self.params.every == 0:
            start = time.perf_counter()
            values = self.track_and_score(trainer)
            values[TRACKING_TIME] = time.perf_counter() - start
            logger.info("Tracking validation, epoch %d: %s.", epoch, ", ".join(
                f"{name} {value:.4g}" for name, value in values.items()))
        else:
            values = {name: self._last_value(trainer, name)
                      for name in self.metric_names}
            values[TRACKING_TIME] = 0.0
        for name, value in values.items():
            trainer.monitors.get_or_create(name).set_epoch_value(value)

    @staticmethod
    def _last_value(trainer, name):
        history = (trainer.monitors[name].epoch_history
                   if name in trainer.monitors else [])
        return history[-1] if history else float("nan")

    @staticmethod
    def _validation_subjects(trainer):
        """(subject index, SFTData) of each validation subject."""
        subset = trainer.batch_sampler.dataset.validation_set
        group_idx = trainer.batch_loader.streamline_group_idx
        return [(i, subset.get_subject(i).sft_data_list[group_idx])
                for i in range(subset.nb_subjects)]

    def track_and_score(self, trainer):
        """Track with the current model; return each metric's value."""
        model = trainer.model
        was_training = model.training
        try:
            if self.params.mode == GENERATION:
                return self._generation_scores(trainer)
            return self._whole_subject_scores(trainer)
        finally:
            model.train(was_training)

    def _make_tracker(self, trainer, subject_idx, track_forward_only):
        subject = trainer.batch_sampler.dataset.validation_set.get_subject(
            subject_idx)
        volume = subject.mri_data_list[trainer.batch_loader.input_group_idx]
        mask_group = self.params.tracking_mask_group
        mask = (None if mask_group is None else self._mask(
            trainer, subject, mask_group))
        tracker = BatchedTracker(
            trainer.model, volume.as_tensor(trainer.device), volume.affine,
            TrackingMask(volume.shape, mask, trainer.device),
            self.step_size_mm, max_angle_deg=DEFAULT_MAX_ANGLE_DEG,
            max_length_mm=self.max_length_mm,
            eos_threshold=default_eos_threshold(trainer.model,
                                                self.params.eos_stop),
            algo="det",
            track_forward_only=track_forward_only, device=trainer.device)
        return tracker, volume, subject

    @staticmethod
    def _mask(trainer, subject, group):
        volume_groups = trainer.batch_sampler.dataset.volume_groups
        data = np.asarray(subject.mri_data_list[
            volume_groups.index(group)].data)
        if data.ndim == 4 and data.shape[3] != 1:
            raise DwiMLUserError(
                f"--tracking_validation mask group '{group}': expected 1 "
                f"feature, found {data.shape[3]}.")
        return data.reshape(data.shape[:3])

    def _generation_scores(self, trainer):
        nb_points = self.params.nb_points
        distance_sum, nb_connected, nb_generated = 0.0, 0, 0
        for subject_idx, sft in self._validation_subjects(trainer):
            tracker, volume, _ = self._make_tracker(trainer, subject_idx, True)
            ids = self._streamline_ids(trainer.seed, subject_idx,
                                       sft.nb_streamlines)
            data, offsets, lengths = packed_arrays(resample_to_step_size(
                sft.get_streamlines(ids), volume.affine, self.step_size_mm))
            usable = lengths > nb_points
            first_rows = offsets[usable]
            prefixes = data[first_rows[:, None] + np.arange(nb_points)]
            true_ends = data[first_rows + lengths[usable] - 1]
            end_points = np.concatenate([np.zeros((0, 3))] + [
                _last_points(tracker.continue_streamlines(
                    prefixes[start:start + self.params.batch_size])[0])
                for start in range(0, len(prefixes), self.params.batch_size)])
            distance_sum += float(endpoint_distances_mm(
                end_points, true_ends, volume.affine).sum())
            nb_generated += len(end_points)
            if "connectivity_score" in self.metric_names:
                nb_connected += nb_in_true_connections(
                    endpoint_pairs(prefixes[:, 0], end_points),
                    sft.connectivity, volume.shape[:3])
        if nb_generated == 0:
            raise DwiMLUserError(
                f"--tracking_validation_nb_points {nb_points}: no validation "
                f"streamline has more than {nb_points} points at the "
                f"tracking step ({self.step_size_mm} mm).")
        values = {"tracking_endpoint_distance": distance_sum / nb_generated}
        if "connectivity_score" in self.metric_names:
            values["connectivity_score"] = nb_connected / nb_generated
        return values

    def _streamline_ids(self, seed, subject_idx, nb_streamlines):
        """The subject's validation streamlines: the same at every epoch."""
        nb_wanted = self.params.nb_streamlines
        if nb_wanted is None or nb_wanted >= nb_streamlines:
            return np.arange(nb_streamlines)
        rng = np.random.default_rng([seed, subject_idx])
        return np.sort(rng.choice(nb_streamlines, nb_wanted, replace=False))

    def _whole_subject_scores(self, trainer):
        all_scores = []
        for subject_idx, sft in self._validation_subjects(trainer):
            tracker, volume, subject = self._make_tracker(trainer, subject_idx,
                                                          False)
            seeding_group = (self.params.seeding_mask_group
                             or self.params.tracking_mask_group)
            seeds = make_seeds(
                self._mask(trainer, subject, seeding_group),
                np.random.default_rng([trainer.seed, subject_idx]),
                nt=self.params.nb_seeds)
            result = tracker.track_in_batches(seeds, self.params.batch_size,
                                              disable_progress=True)
            keep = np.flatnonzero(keep_by_length(
                packed_arrays(result.streamlines)[2], self.step_size_mm,
                DEFAULT_MIN_LENGTH_MM, self.max_length_mm))
            all_scores.append(self._score_subject(
                result.streamlines[keep], sft, volume, subject_idx))
        return {name: float(np.mean([scores[name] for scores in all_scores]))
                for name in self.metric_names}

    def _score_subject(self, tracked, sft, volume, subject_idx):
        reference = self._dense_references.get(subject_idx)
        if reference is None:
            reference = DenseReference(sft.get_streamlines(), volume.affine)
            self._dense_references[subject_idx] = reference
        key = self.params.bundle_key
        labels = (None if key is None else np.asarray(
            sft.get_data_per_streamline()[key]).reshape(
                reference.nb_streamlines, -1)[:, 0].astype(np.int64))
        scores = score_tractogram(tracked, reference, volume.shape[:3],
                                  volume.affine, labels)
        if labels is None:
            scores["mean_OL"], scores["mean_OR"], scores["mean_F1"] = \
                whole_tractogram_overlap(tracked, reference, volume.shape[:3],
                                         volume.affine)
        return {name: scores[_SCORE_KEYS[name]] for name in self.metric_names}


def _last_points(streamlines):
    """(N, 3) last point of each packed streamline."""
    data, offsets, lengths = packed_arrays(streamlines)
    return data[offsets + lengths - 1]
