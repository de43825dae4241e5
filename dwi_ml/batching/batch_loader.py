"""BatchLoaderOneInput: the collate step, from streamline IDs to model inputs.

For each :class:`~dwi_ml.batching.dataloaders.BatchRequest` it loads the
chosen streamlines packed (voxel space, corner origin), brings them to the
model's format, augments them in training only, then interpolates the input
volume at every point:

1. resampling to the model's step size (mm), number of points or
   compression, when these differ from the HDF5's. This also applies in
   validation (and never augments anything): the model must see streamlines
   with its own step size;
2. splitting ``split_ratio`` of the streamlines long enough to be split, in
   two (short streamlines stay whole, none is dropped);
3. reversing ``reverse_ratio`` of them;
4. truncated Gaussian noise (sigma in mm, truncated at 2 sigma): "forward"
   noise on the points where inputs are interpolated (``input_points``),
   "loss" noise on the streamlines the loss compares to (``target_points``).

Randomness: each batch draws from its own numpy Generator seeded with
``(seed, context, epoch, batch index, rank)``, in the order split, reverse,
forward noise, loss noise. This is stronger than per-worker streams: a batch
gets the same augmentations whichever worker loads it and whatever the
number of workers (0 included), two epochs differ, two batches of one
epoch differ, and a resumed sampler and loader redraw exactly the
augmentations of the uninterrupted run.

Interpolation is one call per subject per batch (one call in all when the
batch holds one subject), in the collate step (DataLoader workers, CPU) or,
with ``interpolation_device`` set, in the main process by
:meth:`BatchLoaderOneInput.compute_inputs`, with the volumes kept on that
device. Both give the same values.
"""
import numbers

import numpy as np
import torch

from dwi_ml.batching.dataloaders import CONTEXT_CODES
from dwi_ml.batching.loaded_batch import LoadedBatch
from dwi_ml.data.processing.augmentation import (
    add_noise_mm,
    count_from_ratio,
    reverse_streamlines,
    split_streamlines,
)
from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
    prepare_volume_for_interpolation,
)
from dwi_ml.data.processing.neighborhood import (
    get_neighborhood_offsets,
    interpolate_with_neighborhood,
)
from dwi_ml.data.processing.resampling import compress as compress_mm
from dwi_ml.data.processing.resampling import (
    resample_to_nb_points,
    resample_to_step_size,
)
from dwi_ml.io_utils.errors import DwiMLUserError


class BatchLoaderOneInput:
    """Load, augment and interpolate the batches of one input group.

    Parameters
    ----------
    dataset : MultiSubjectDataset
        With its data loaded (eager or lazy).
    streamline_group, input_group : str
        Group names of the HDF5.
    step_size, nb_points, compress : float, int, float or None
        The model's streamline format (at most one): step in mm, fixed
        number of points, or compression tolerance in mm. Applied in
        training and validation when it differs from the HDF5's.
    split_ratio, reverse_ratio : float in [0, 1]
        Share of the streamlines split in two / reversed (training only).
    noise_gaussian_size_forward, noise_gaussian_size_loss : float
        Sigma in mm (>= 0) of the noise on input points / on target
        streamlines (training only), truncated at 2 sigma.
    neighborhood_type : None, 'axes' or 'grid'
        'axes': 6 * radius + 1 points; 'grid': (2 * radius + 1)^3 points.
    neighborhood_radius : int
        Number of neighbourhood layers (required with a neighbourhood).
    neighborhood_resolution : float
        Distance between layers, in mm.
    seed : int
        Source of every batch's random stream (see the module docstring).
    interpolation_device : None or str
        None: interpolate in the collate step (workers, CPU). A device
        (e.g. 'cuda'): leave it to :meth:`compute_inputs` in the main
        process, with the volumes kept on that device.
    """

    def __init__(self, dataset, streamline_group, input_group,
                 step_size=None, nb_points=None, compress=None,
                 split_ratio=0.0, reverse_ratio=0.0,
                 noise_gaussian_size_forward=0.0,
                 noise_gaussian_size_loss=0.0, neighborhood_type=None,
                 neighborhood_radius=None, neighborhood_resolution=None,
                 seed=1234, interpolation_device=None):
        self.dataset = dataset
        self.streamline_group_idx = _group_index(
            dataset.streamline_groups, streamline_group, "streamline_group")
        self.input_group_idx = _group_index(
            dataset.volume_groups, input_group, "input_group")
        self.streamline_group = streamline_group
        self.input_group = input_group
        self.step_size, self.nb_points, self.compress = _check_format(
            step_size, nb_points, compress)
        self.split_ratio = _check_ratio("split_ratio", split_ratio)
        self.reverse_ratio = _check_ratio("reverse_ratio", reverse_ratio)
        self.noise_forward = _check_sigma("noise_gaussian_size_forward",
                                          noise_gaussian_size_forward)
        self.noise_loss = _check_sigma("noise_gaussian_size_loss",
                                       noise_gaussian_size_loss)
        self.neighborhood_type = neighborhood_type
        self.neighborhood_radius = neighborhood_radius
        self.neighborhood_resolution = neighborhood_resolution
        # Checks the neighbourhood now, not in a worker at the first batch.
        self.nb_neighbours = len(self._neighborhood_offsets(np.eye(4)))
        if (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)
                or seed < 0):
            raise _argument_error("seed", "an integer >= 0", seed)
        self.seed = int(seed)
        self.interpolation_device = interpolation_device
        self._offsets_cache = {}

    @property
    def params_for_checkpoint(self):
        """Constructor arguments, JSON-able (the dataset excluded)."""
        return {"streamline_group": self.streamline_group,
                "input_group": self.input_group,
                "step_size": self.step_size, "nb_points": self.nb_points,
                "compress": self.compress, "split_ratio": self.split_ratio,
                "reverse_ratio": self.reverse_ratio,
                "noise_gaussian_size_forward": self.noise_forward,
                "noise_gaussian_size_loss": self.noise_loss,
                "neighborhood_type": self.neighborhood_type,
                "neighborhood_radius": self.neighborhood_radius,
                "neighborhood_resolution": self.neighborhood_resolution,
                "seed": self.seed}

    @property
    def nb_input_features(self):
        """Features per point of the inputs: F * K (K neighbours)."""
        return (self.dataset.nb_features[self.input_group_idx]
                * self.nb_neighbours)

    def state_dict(self):
        """The seed: each batch's stream derives from it and its request."""
        return {"seed": self.seed}

    def load_state_dict(self, state):
        """Restore the seed saved by :meth:`state_dict`.

        Call it before the DataLoader starts its (persistent) workers: they
        keep the copy of the loader they started with.
        """
        self.seed = int(state["seed"])

    def __getstate__(self):
        # Spawned workers rebuild their own caches (possibly of GPU tensors).
        state = self.__dict__.copy()
        state["_offsets_cache"] = {}
        return state

    # ------------------------------------------------------------------
    def make_generator(self, request):
        """The numpy Generator of one batch.

        Seeded with (seed, context, epoch, batch index, rank): in a
        distributed run, the ranks' parts of one global batch draw
        independently.
        """
        return np.random.default_rng(
            [self.seed, CONTEXT_CODES[request.context], request.epoch,
             request.batch_index, request.rank])

    def load_batch(self, request):
        """Collate: load, augment and (optionally) interpolate one batch.

        Parameters
        ----------
        request : BatchRequest
            The context, epoch, batch index and ``[(subject_index, ids)]``.

        Returns
        -------
        LoadedBatch
            Packed target and input streamlines (voxel space, corner
            origin), subject by subject in the request's order, the subject
            of each streamline and, unless ``interpolation_device`` is set,
            the inputs.
        """
        rng = self.make_generator(request)
        is_training = request.context == "training"
        subset = self._subset(request.context)
        targets, input_points, subject_indices = [], [], []
        for subj_idx, ids in request.subject_ids:
            sft_data = subset.get_subject(subj_idx).sft_data_list[
                self.streamline_group_idx]
            affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
            streamlines = self.resample(sft_data.get_streamlines(ids), affine)
            inputs_at = streamlines
            if is_training:
                streamlines = self.augment(streamlines, rng)
                inputs_at = add_noise_mm(streamlines, self.noise_forward,
                                         affine, rng)
                streamlines = add_noise_mm(streamlines, self.noise_loss,
                                           affine, rng)
            targets.append(streamlines)
            input_points.append(inputs_at)
            subject_indices.append(np.full(len(streamlines), subj_idx))
        batch = LoadedBatch.from_array_sequences(
            targets, input_points, np.concatenate(subject_indices),
            request.context)
        if self.interpolation_device is None:
            batch.inputs = self.compute_inputs(batch, "cpu")
        return batch

    def resample(self, streamlines, affine):
        """Bring streamlines to the model's format if it differs from the HDF5's.

        ``streamlines`` in voxel space, corner origin; ``affine`` maps them
        to RAS mm (steps and tolerances are in mm).
        """
        dataset = self.dataset
        if self.step_size is not None and self.step_size != dataset.step_size:
            return resample_to_step_size(streamlines, affine, self.step_size)
        if self.nb_points is not None and self.nb_points != dataset.nb_points:
            return resample_to_nb_points(streamlines, affine, self.nb_points)
        if self.compress is not None and self.compress != dataset.compress:
            return compress_mm(streamlines, affine, self.compress)
        return streamlines

    def augment(self, streamlines, rng):
        """Split, then reverse (training only); noise is added after."""
        if self.split_ratio > 0:
            streamlines, _ = split_streamlines(streamlines, self.split_ratio,
                                               rng)
        if self.reverse_ratio > 0:
            streamlines, _ = reverse_streamlines(streamlines,
                                                 self.reverse_ratio, rng)
        return streamlines

    def compute_inputs(self, batch, device):
        """Interpolate the input volume at every input point of ``batch``.

        One interpolation call per run of consecutive streamlines of the same
        subject (one per subject for batches from :meth:`load_batch`). The
        features of the neighbourhood are laid out neighbour by neighbour,
        centre first.

        Parameters
        ----------
        batch : LoadedBatch
            Its ``input_points`` are in voxel space, corner origin.
        device : str or torch.device
            Where to interpolate; the volumes are kept there.

        Returns
        -------
        torch.Tensor, shape (P, F * K), float32, on ``device``.
        """
        device = torch.device(device)
        points = batch.input_points.to(device)
        runs = _subject_runs(batch.subject_indices, batch.lengths)
        if not runs:
            return torch.zeros((0, self.nb_input_features),
                               dtype=torch.float32, device=device)
        if len(runs) == 1:
            return self._interpolate(batch.context, runs[0][0], points, device)
        outputs = torch.empty((len(points), self.nb_input_features),
                              dtype=torch.float32, device=device)
        for subj_idx, start, stop in runs:
            outputs[start:stop] = self._interpolate(
                batch.context, subj_idx, points[start:stop], device)
        return outputs

    def _interpolate(self, context, subj_idx, points, device):
        """Inputs of one subject at ``points`` (voxel space, corner origin)."""
        mri = self._subset(context).get_subject(subj_idx).mri_data_list[
            self.input_group_idx]
        # Eager volumes keep one tensor per device; lazy ones sit in the
        # dataset's LRU cache. Both are already float32 and contiguous, so
        # preparing them makes no copy.
        volume = prepare_volume_for_interpolation(mri.as_tensor(device))
        if self.neighborhood_type is None:
            return interpolate_volume_at_coordinates(volume, points)
        key = (context, subj_idx, str(device))
        offsets = self._offsets_cache.get(key)
        if offsets is None:
            offsets = torch.as_tensor(
                self._neighborhood_offsets(np.asarray(mri.affine)),
                dtype=torch.float32, device=device)
            self._offsets_cache[key] = offsets
        return interpolate_with_neighborhood(volume, points, offsets)

    def _neighborhood_offsets(self, affine):
        """(K, 3) offsets in voxel units, or a user error naming our arguments."""
        try:
            return get_neighborhood_offsets(
                self.neighborhood_type, self.neighborhood_radius,
                self.neighborhood_resolution, affine)
        except DwiMLUserError as error:
            raise DwiMLUserError(
                f"BatchLoaderOneInput neighborhood_type="
                f"{self.neighborhood_type!r}, neighborhood_radius="
                f"{self.neighborhood_radius!r}, neighborhood_resolution="
                f"{self.neighborhood_resolution!r}: {error}") from None

    def _subset(self, context):
        # 'testing' batches (evaluation only) are loaded like validation ones.
        return getattr(self.dataset, f"{context}_set")


def _subject_runs(subject_indices, lengths):
    """``[(subject, first point, end point)]`` of runs of one subject.

    Computed on the CPU from the (N,) tensors, with no per-point work.
    """
    subjects = subject_indices.cpu().numpy()
    if len(subjects) == 0:
        return []
    if subjects[0] == subjects[-1] and np.all(subjects == subjects[0]):
        return [(int(subjects[0]), 0, int(lengths.sum()))]
    starts = np.concatenate(
        ([0], np.flatnonzero(subjects[1:] != subjects[:-1]) + 1))
    point_bounds = np.zeros(len(subjects) + 1, dtype=np.int64)
    np.cumsum(lengths.cpu().numpy(), out=point_bounds[1:])
    ends = np.append(starts[1:], len(subjects))
    return [(int(subjects[start]), int(point_bounds[start]),
             int(point_bounds[end])) for start, end in zip(starts, ends)]


def _argument_error(name, expected, found):
    return DwiMLUserError(
        f"BatchLoaderOneInput argument {name}: expected {expected}, "
        f"got {found!r}.")


def _group_index(groups, name, argument):
    if name not in groups:
        raise _argument_error(
            argument, f"one of the HDF5's groups {list(groups)}", name)
    return groups.index(name)


def _check_format(step_size, nb_points, tolerance_mm):
    """At most one of step_size (mm), nb_points, compress (mm); all valid."""
    chosen = {name: value for name, value in (
        ("step_size", step_size), ("nb_points", nb_points),
        ("compress", tolerance_mm)) if value is not None}
    if len(chosen) > 1:
        raise _argument_error(
            ", ".join(chosen), "at most one of step_size, nb_points, "
            "compress", tuple(chosen.values()))
    for name in ("step_size", "compress"):
        if name in chosen and not _is_positive_number(chosen[name]):
            raise _argument_error(name, "a number of mm > 0", chosen[name])
    if nb_points is not None and not (
            _is_positive_number(nb_points)
            and float(nb_points).is_integer() and nb_points >= 2):
        raise _argument_error("nb_points", "an integer >= 2", nb_points)
    return (None if step_size is None else float(step_size),
            None if nb_points is None else int(nb_points),
            None if tolerance_mm is None else float(tolerance_mm))


def _check_ratio(name, ratio):
    try:
        count_from_ratio(ratio, 0, name)
    except DwiMLUserError:
        raise _argument_error(name, "a number in [0, 1]", ratio) from None
    return float(ratio)


def _check_sigma(name, sigma_mm):
    if not (_is_positive_number(sigma_mm) or sigma_mm == 0):
        raise _argument_error(name, "a sigma in mm >= 0", sigma_mm)
    return float(sigma_mm)


def _is_positive_number(value):
    """True for a finite real number > 0 (not a bool)."""
    try:
        return (not isinstance(value, bool) and np.isfinite(float(value))
                and float(value) > 0)
    except (TypeError, ValueError):
        return False
