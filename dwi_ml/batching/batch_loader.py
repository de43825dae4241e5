"""BatchLoaderOneInput: the collate step, from streamline IDs to model inputs.

For each :class:`~dwi_ml.batching.dataloaders.BatchRequest` it loads the
chosen streamlines packed (voxel space, corner origin), brings them to the
model's format, augments them in training only, then interpolates the input
volume at every point. What the model needs (format, neighbourhood) comes
from its :class:`~dwi_ml.data.processing.input_spec.InputSpec`:

1. resampling to the model's ``StreamlineFormat`` (step size in mm, number
   of points or compression) when it differs from the HDF5's, in validation
   too: the model must see streamlines with its own step size;
2. splitting ``split_ratio`` of the streamlines long enough to be split, in
   two (short streamlines stay whole, none is dropped);
3. reversing ``reverse_ratio`` of them;
4. truncated Gaussian noise (sigma in mm, truncated at 2 sigma): "forward"
   noise on the points where inputs are interpolated (``input_points``),
   "loss" noise on the streamlines the loss compares to (``target_points``).

Randomness: each batch draws from its own numpy Generator seeded with
``(seed, split, epoch, batch index, rank)``, in the order split, reverse,
forward noise, loss noise, each drawn once over all the batch's
streamlines, whatever their subjects (ratios count over the batch).
This is stronger than per-worker streams: a batch gets the same
augmentations whichever worker loads it and whatever the number of workers
(0 included), two epochs differ, two batches of one epoch differ, and a
resumed sampler and loader redraw exactly the augmentations of the
uninterrupted run.

:meth:`BatchLoaderOneInput.load_streamlines` gives a request's streamlines
as :meth:`~BatchLoaderOneInput.load_batch` does, with the source of each,
without inputs.

Interpolation on the CPU is one pass over the batch with eager volumes,
one per group of subjects that the volume cache holds with lazy ones; on
another device, one call per subject. It runs in the collate step
(DataLoader workers, CPU) or, with ``interpolation_device`` set, in the
main process, with the volumes kept on that device. Both give the same
values. Whoever consumes a batch (trainer, evaluation) calls
:meth:`BatchLoaderOneInput.prepare_batch`, the one place that moves it to
the device and interpolates what is left to interpolate.
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from dwi_ml.batching.loaded_batch import LoadedBatch
from dwi_ml.data.dataset.sft_data import read_points_of_many
from dwi_ml.data.packed import (
    gather,
    make_array_sequence,
    offsets_from_lengths,
    packed_arrays,
    ranges_to_indices,
    subject_runs,
)
from dwi_ml.data.processing.augmentation import (
    draw_noise_vox_runs,
    open_ended_pieces,
    reverse_rows,
    split_ranges,
)
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
    interpolate_volumes_at_runs,
    prepare_volume_for_interpolation,
)
from dwi_ml.data.processing.neighborhood import interpolate_with_neighborhood
from dwi_ml.data.processing.resampling import nb_points_for_step_size
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.arg_checks import (
    InvalidValue,
    check_choice,
    check_device,
    check_int,
    check_non_negative_float,
    check_ratio,
)

# Below this length (mm), step-size resampling may keep 1 point.
_ZERO_LENGTH_MM = 1e-3
# The dataset's subset of each split (keys hash as the splits' strings).
_SUBSET_ATTRIBUTES = {split: f"{split.value}_set" for split in Split}


class SubjectStreamlines(NamedTuple):
    """One subject's streamlines of a batch, as the model gets them.

    Attributes
    ----------
    targets, input_points : np.ndarray (P, 3), float32
        Voxel space, corner origin; compact. The same array when no noise
        tells them apart.
    lengths : np.ndarray (N,), int64
    open_ends : np.ndarray (N,) bool, or None
        With splitting: True where a streamline ends at a cut
        (:func:`~dwi_ml.data.processing.augmentation.open_ended_pieces`).
    source_ids : np.ndarray (N,), int64
        Position in the request's ids of the streamline each one comes
        from (the two pieces of a split streamline share it).
    """

    targets: np.ndarray
    input_points: np.ndarray
    lengths: np.ndarray
    open_ends: Optional[np.ndarray]
    source_ids: np.ndarray


class _EntryRows(NamedTuple):
    """One request entry's streamlines: rows ``[offsets, offsets +
    lengths)`` of ``data``, and the subject's voxel-to-RAS mm affine."""

    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    affine: np.ndarray


class _LoadedStreamlines(NamedTuple):
    """A request's streamlines, augmented, entry after entry.

    ``targets``, ``input_points``, ``lengths``, ``open_ends`` and
    ``sources`` (over the request's ids, all entries in turn) as in
    :class:`SubjectStreamlines`; ``entries`` is the request entry of each
    streamline, and entry ``e`` holds streamlines
    ``piece_bounds[e]:piece_bounds[e + 1]`` and points
    ``row_bounds[e]:row_bounds[e + 1]``.
    """

    targets: np.ndarray
    input_points: np.ndarray
    lengths: np.ndarray
    open_ends: Optional[np.ndarray]
    sources: np.ndarray
    entries: np.ndarray
    piece_bounds: np.ndarray
    row_bounds: np.ndarray


class BatchLoaderOneInput:
    """Load, augment and interpolate the batches of one input group.

    Parameters
    ----------
    dataset : MultiSubjectDataset
        With its data loaded (eager or lazy).
    streamline_group, input_group : str
        Group names of the HDF5.
    input_spec : InputSpec, optional
        The model's ``input_spec``: its streamline format (applied in
        training and validation when it differs from the HDF5's) and its
        neighbourhood. Default: streamlines as stored, no neighbourhood.
    split_ratio, reverse_ratio : float in [0, 1]
        Share of the streamlines split in two / reversed (training only).
    noise_gaussian_size_forward, noise_gaussian_size_loss : float
        Sigma in mm (0 to ``MAX_NOISE_MM``) of the noise on input points
        / on target streamlines (training only), truncated at 2 sigma.
    seed : int
        Source of every batch's random stream (see the module docstring).
    interpolation_device : None or str
        None: interpolate in the collate step (workers, CPU). A device
        (e.g. 'cuda'): leave it to :meth:`prepare_batch` in the main
        process, which interpolates on the device that it is given (the
        trainer's), with the volumes kept there.
    """

    def __init__(self, dataset, streamline_group, input_group,
                 input_spec=None, split_ratio=0.0, reverse_ratio=0.0,
                 noise_gaussian_size_forward=0.0,
                 noise_gaussian_size_loss=0.0, seed=1234,
                 interpolation_device=None):
        owner = type(self).__name__
        self.dataset = dataset
        self.streamline_group_idx = dataset.streamline_groups.index(check_choice(
            "streamline_group", streamline_group, dataset.streamline_groups,
            owner))
        self.input_group_idx = dataset.volume_groups.index(check_choice(
            "input_group", input_group, dataset.volume_groups, owner))
        self.streamline_group = streamline_group
        self.input_group = input_group
        if input_spec is not None and not isinstance(input_spec, InputSpec):
            raise InvalidValue("input_spec", owner, "an InputSpec (the "
                               "model's input_spec) or None", input_spec)
        self.input_spec = input_spec or InputSpec()
        self.split_ratio = check_ratio("split_ratio", split_ratio, owner)
        self.reverse_ratio = check_ratio("reverse_ratio", reverse_ratio, owner)
        self.noise_forward = check_noise_size(
            "noise_gaussian_size_forward", noise_gaussian_size_forward, owner)
        self.noise_loss = check_noise_size(
            "noise_gaussian_size_loss", noise_gaussian_size_loss, owner)
        self.seed = check_int("seed", seed, 0, owner)
        if interpolation_device is not None:
            check_device(interpolation_device, "interpolation_device")
        self.interpolation_device = interpolation_device
        # (split, subject, device): (subset, eager volume or None, offsets)
        self._inputs_cache = {}

    @property
    def params_for_checkpoint(self):
        """Constructor arguments, JSON-able (the dataset and the model's
        ``input_spec`` excluded)."""
        return {"streamline_group": self.streamline_group,
                "input_group": self.input_group,
                "split_ratio": self.split_ratio,
                "reverse_ratio": self.reverse_ratio,
                "noise_gaussian_size_forward": self.noise_forward,
                "noise_gaussian_size_loss": self.noise_loss,
                "seed": self.seed}

    @property
    def nb_input_features(self):
        """Features per point of the inputs: F * K (K neighbours)."""
        return self.input_spec.input_size(
            self.dataset.nb_features[self.input_group_idx])

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
        state["_inputs_cache"] = {}
        return state

    # ------------------------------------------------------------------
    def make_generator(self, request):
        """The numpy Generator of one batch.

        Seeded with (seed, split, epoch, batch index, rank): in a
        distributed run, the ranks' parts of one global batch draw
        independently.
        """
        return np.random.default_rng(
            [self.seed, Split(request.split).code, request.epoch,
             request.batch_index, request.rank])

    def load_batch(self, request):
        """Collate: load, augment and (optionally) interpolate one batch.

        Parameters
        ----------
        request : BatchRequest
            The split, epoch, batch index and ``[(subject_index, ids)]``.

        Returns
        -------
        LoadedBatch
            Packed target and input streamlines (voxel space, corner
            origin), subject by subject in the request's order, the subject
            of each streamline and, unless ``interpolation_device`` is set,
            the inputs.
        """
        loaded = self._load_request(request)
        subjects = np.array([subj for subj, _ in request.subject_ids],
                            dtype=np.int64)
        targets = torch.from_numpy(loaded.targets)
        batch = LoadedBatch(
            target_points=targets,
            input_points=(targets if loaded.input_points is loaded.targets
                          else torch.from_numpy(loaded.input_points)),
            lengths=torch.from_numpy(loaded.lengths),
            subject_indices=torch.from_numpy(subjects[loaded.entries]),
            split=request.split,
            open_ends=(None if loaded.open_ends is None
                       else torch.from_numpy(loaded.open_ends)))
        if self.interpolation_device is None:
            batch.inputs = self.compute_inputs(batch, "cpu")
        return batch

    def load_streamlines(self, request):
        """The streamlines of :meth:`load_batch`, subject by subject, with
        the source of each; no inputs.

        The same draws as :meth:`load_batch` for the same request: what a
        batch's streamlines are, and where each comes from (e.g. to look at
        the augmentations, ``dwiml_visualize_noise_on_streamlines.py``).

        Parameters
        ----------
        request : BatchRequest

        Returns
        -------
        list of SubjectStreamlines
            One per ``(subject_index, ids)`` of the request, in its order;
            ``source_ids`` index that entry's ids.
        """
        loaded = self._load_request(request)
        first_sources = offsets_from_lengths(np.array(
            [len(ids) for _, ids in request.subject_ids], dtype=np.int64))
        parts = []
        for entry, first_source in enumerate(first_sources):
            pieces = slice(*loaded.piece_bounds[entry:entry + 2])
            rows = slice(*loaded.row_bounds[entry:entry + 2])
            targets = loaded.targets[rows]
            parts.append(SubjectStreamlines(
                targets, (targets if loaded.input_points is loaded.targets
                          else loaded.input_points[rows]),
                loaded.lengths[pieces],
                None if loaded.open_ends is None
                else loaded.open_ends[pieces],
                loaded.sources[pieces] - first_source))
        return parts

    def _load_request(self, request):
        """A request's streamlines in the model's format, augmented in one
        pass over the whole batch.

        Each entry ``(subject, ids)`` is read (and resampled) on its own;
        the augmentations then choose row indices over all the batch's
        streamlines at once, the points are gathered once and the noise
        added to them, with the draws and the values of
        ``split_streamlines``, ``reverse_streamlines`` then ``add_noise_mm``
        (forward, then loss) applied to the concatenation of the entries'
        ``get_streamlines(ids)``, the noise converted to each subject's
        voxels. Ratios thus count over the batch: a batch of one
        streamline per subject reverses ``reverse_ratio`` of them, not
        every one (counts rounded per subject did).

        Returns
        -------
        _LoadedStreamlines
        """
        rng = self.make_generator(request)
        is_training = request.split == Split.TRAINING
        subset = self._subset(request.split)
        reads = self._read_entries(
            [subset.get_subject(subj_idx).sft_data_list[
                self.streamline_group_idx]
             for subj_idx, _ in request.subject_ids],
            [ids for _, ids in request.subject_ids])
        offsets = _concat_int64([read.offsets for read in reads])
        lengths = _concat_int64([read.lengths for read in reads])
        entries = np.repeat(np.arange(len(reads)),
                            [len(read.lengths) for read in reads])
        # The functions would act on the compact copy of the streamlines
        # (the "layout", get_streamlines' array); splitting and reversing
        # act on (offsets, lengths) alone, so they run on the rows of each
        # entry's data directly. Only the noise of split, unreversed
        # streamlines (drawn over the layout's rows, cut points shared)
        # needs the layout's rows.
        noisy = is_training and (self.noise_forward or self.noise_loss)
        layout_shift = open_ends = is_reversed = noise_rows = None
        noise_bounds = _entry_bounds(entries, lengths, len(reads))
        sources = np.arange(len(lengths))
        if is_training and self.split_ratio > 0:
            if noisy and not self.reverse_ratio:
                layout_shift = offsets_from_lengths(lengths) - offsets
            offsets, lengths, sources = split_ranges(
                offsets, lengths, self.split_ratio, rng)
            entries = entries[sources]
        if is_training and self.reverse_ratio > 0:
            rows, is_reversed = reverse_rows(offsets, lengths,
                                             self.reverse_ratio, rng)
        else:
            rows = ranges_to_indices(offsets, lengths)
        if is_training and self.split_ratio > 0:
            open_ends = open_ended_pieces(sources, is_reversed)
        piece_bounds = np.searchsorted(entries, np.arange(len(reads) + 1))
        row_bounds = _entry_bounds(entries, lengths, len(reads))
        # The one copy of the points.
        points = _gather_rows([read.data for read in reads], rows, row_bounds)
        loaded = _LoadedStreamlines(points, points, lengths, open_ends,
                                    sources, entries, piece_bounds,
                                    row_bounds)
        if not noisy:
            return loaded
        if layout_shift is not None:
            noise_rows = ranges_to_indices(offsets + layout_shift[sources],
                                           lengths)
        else:
            noise_bounds = row_bounds
        affines = [read.affine for read in reads]

        def add_noise(sigma_mm):
            if sigma_mm == 0:
                return points
            noise = draw_noise_vox_runs(noise_bounds, sigma_mm, affines, rng)
            if noise_rows is not None:
                noise = np.take(noise, noise_rows, axis=0)
            noise += points
            return noise
        input_points = add_noise(self.noise_forward)
        return loaded._replace(targets=add_noise(self.noise_loss),
                               input_points=input_points)

    def _read_entries(self, sft_datas, ids_list):
        """Each entry's streamlines ``ids`` in the model's format, as rows
        of a packed array (not copied when not resampled; lazy entries of
        one file read together, into one buffer)."""
        reads = []
        for sft_data, read in zip(sft_datas,
                                  read_points_of_many(sft_datas, ids_list)):
            affine = sft_data.space_attributes[0]
            if self._resamples:
                points, offsets, lengths = gather(*read)
                read = packed_arrays(self.resample(
                    make_array_sequence(points.astype(np.float32,
                                                      copy=False),
                                        offsets, lengths),
                    np.asarray(affine, dtype=np.float64)))
            reads.append(_EntryRows(*read, affine))
        return reads

    @property
    def _resamples(self):
        streamline_format = self.input_spec.streamline_format
        return (streamline_format.is_set
                and streamline_format != self.dataset.streamline_format)

    def resample(self, streamlines, affine):
        """Bring streamlines to the model's format if it differs from the HDF5's.

        ``streamlines`` in voxel space, corner origin; ``affine`` maps them
        to RAS mm (steps and tolerances are in mm). Streamlines stored in
        the model's format are returned as they are, point for point.
        """
        if not self._resamples:
            return streamlines
        return self.input_spec.streamline_format.apply(streamlines, affine)

    def longest_streamline(self, split, at_least):
        """``max(at_least, most points of a streamline of split)`` once in
        the model's format (augmentation never lengthens a streamline).

        Only the streamlines that may exceed ``at_least`` are resampled:
        the stored counts (no resampling, or compression), the fixed
        ``nb_points``, or the step count of the stored length in mm (one
        step of margin for its rounding) bound them from above."""
        streamline_format = self.input_spec.streamline_format
        for _, sft_data in self._subjects_streamlines(split):
            bounds = sft_data.lengths
            if self._resamples and streamline_format.nb_points is not None:
                bounds = np.full_like(bounds, streamline_format.nb_points)
            elif self._resamples and streamline_format.step_size is not None:
                bounds = nb_points_for_step_size(
                    sft_data.lengths_mm, streamline_format.step_size) + 1
            ids = np.flatnonzero(bounds > at_least)
            at_least = max(at_least, int(self._nb_points_in_format(
                sft_data, ids).max(initial=0)))
        return at_least

    def streamlines_shorter_than(self, split, nb_points):
        """``(subject_id, ids)`` of the first subject of ``split`` with
        streamlines of fewer than ``nb_points`` (1 or 2) points in the
        model's format, or None. Only candidates are resampled: fewer
        points stored, or (step size) about 0 mm, which keeps 1 point."""
        step_size = self.input_spec.streamline_format.step_size
        for subject_id, sft_data in self._subjects_streamlines(split):
            ids = np.flatnonzero((sft_data.lengths < nb_points) | (
                (step_size is not None) & (sft_data.lengths_mm < _ZERO_LENGTH_MM)))
            ids = ids[self._nb_points_in_format(sft_data, ids) < nb_points]
            if len(ids):
                return subject_id, ids
        return None

    def _subjects_streamlines(self, split):
        """``(subject_id, sft_data)`` of each subject of ``split``."""
        subset = self._subset(split)
        return [(subject_id, subset.get_subject(subj_idx).sft_data_list[
            self.streamline_group_idx])
            for subj_idx, subject_id in enumerate(subset.subjects)]

    def _nb_points_in_format(self, sft_data, ids):
        """Points of the streamlines ``ids`` in the model's format."""
        if not len(ids) or not self._resamples:
            return sft_data.lengths[ids]
        affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
        return packed_arrays(self.resample(sft_data.get_streamlines(ids),
                                           affine))[2]

    def prepare_batch(self, batch, device):
        """The batch on ``device``, with its inputs: call it on every batch.

        The one place that knows who interpolates: when the collate step
        left ``inputs`` to the main process (``interpolation_device`` set,
        e.g. on CUDA), they are computed here on ``device``.

        Parameters
        ----------
        batch : LoadedBatch
            As returned by :meth:`load_batch`.
        device : str or torch.device

        Returns
        -------
        LoadedBatch
        """
        batch = batch.to(device, non_blocking=True)
        if batch.inputs is None:
            batch.inputs = self.compute_inputs(batch, device)
        return batch

    def compute_inputs(self, batch, device):
        """Interpolate the input volume at every input point of ``batch``.

        On the CPU, one pass over the runs of consecutive streamlines of
        the same subject (lazy: per group of runs whose volumes fit the
        volume cache); elsewhere one call per run. The same values either
        way. The features of the neighbourhood are laid out neighbour by neighbour,
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
        runs = subject_runs(batch.subject_indices, batch.lengths,
                             len(points))
        if not runs:
            return torch.zeros((0, self.nb_input_features),
                               dtype=torch.float32, device=device)
        if len(runs) == 1:
            return self._interpolate(batch.split, runs[0][0], points, device)
        on_cpu = device.type == "cpu" and points.dtype == torch.float32
        if on_cpu and not self.dataset.lazy:
            return self._interpolate_runs(batch.split, runs, points)
        outputs = torch.empty((len(points), self.nb_input_features),
                              dtype=torch.float32, device=device)
        if on_cpu:
            # Lazy volumes: as many subjects at once as the volume cache
            # holds, so that no more than its bound is held.
            for group in self._runs_within_volume_cache(batch.split, runs):
                outputs[group[0][1]:group[-1][2]] = self._interpolate_runs(
                    batch.split, group, points)
            return outputs
        for subj_idx, start, stop in runs:
            outputs[start:stop] = self._interpolate(
                batch.split, subj_idx, points[start:stop], device)
        return outputs

    def _interpolate(self, split, subj_idx, points, device):
        """Inputs of one subject at ``points`` (voxel space, corner origin)."""
        volume, offsets = self._volume_and_offsets(split, subj_idx, device)
        if offsets is None:
            return interpolate_volume_at_coordinates(volume, points)
        return interpolate_with_neighborhood(volume, points, offsets)

    def _interpolate_runs(self, split, runs, points):
        """:meth:`_interpolate` of consecutive runs on the CPU, the corners
        of all their points computed at once (a batch of many subjects paid
        a call's fixed cost per subject); the same values, bit for bit.

        Returns the inputs of ``points[runs[0][1]:runs[-1][2]]``."""
        volumes, bounds, all_points = [], [0], []
        for subj_idx, start, stop in runs:
            volume, offsets = self._volume_and_offsets(split, subj_idx, "cpu")
            volumes.append(volume)
            run_points = points[start:stop]
            if offsets is not None:
                # As interpolate_with_neighborhood: neighbours of a point
                # consecutive, centre first.
                run_points = (run_points[:, None, :]
                              + offsets[None]).reshape(-1, 3)
            all_points.append(run_points)
            bounds.append(bounds[-1] + len(run_points))
        values = interpolate_volumes_at_runs(volumes, bounds,
                                             torch.cat(all_points))
        return values.reshape(runs[-1][2] - runs[0][1], -1)

    def _runs_within_volume_cache(self, split, runs):
        """``runs`` cut into groups of consecutive runs whose distinct
        subjects' volumes fit the dataset's volume cache together (a
        volume bigger than the cache makes a group alone)."""
        cache = self.dataset.volume_cache
        subset = self._subset(split)
        groups, group, subjects, nb_bytes = [], [], set(), 0
        for run in runs:
            if run[0] not in subjects:
                shape = subset.get_subject(run[0]).mri_data_list[
                    self.input_group_idx].shape
                size = 4 * math.prod(shape)  # float32
                fits = ((cache.max_items is None
                         or len(subjects) < cache.max_items)
                        and (cache.max_bytes is None
                             or nb_bytes + size <= cache.max_bytes))
                if group and not fits:
                    groups.append(group)
                    group, subjects, nb_bytes = [], set(), 0
                subjects.add(run[0])
                nb_bytes += size
            group.append(run)
        return groups + [group]

    def _volume_and_offsets(self, split, subj_idx, device):
        """A subject's input volume on ``device``, ready to interpolate, and
        its neighbourhood's offsets in voxels (None without one)."""
        key = (split, subj_idx, str(device))
        subset = self._subset(split)
        cached = self._inputs_cache.get(key)
        if cached is not None and cached[0] is not subset:
            # The dataset was loaded again: its subjects may have changed.
            self._inputs_cache.clear()
            cached = None
        if cached is not None and cached[1] is not None:
            return cached[1:]  # a lookup, where a batch pays it per subject
        mri = subset.get_subject(subj_idx).mri_data_list[
            self.input_group_idx]
        # Eager volumes keep one tensor per device; lazy ones sit in the
        # dataset's LRU cache. Both are already float32 and contiguous:
        # the interpolation uses them as they are.
        volume = prepare_volume_for_interpolation(mri.as_tensor(device))
        neighborhood = self.input_spec.neighborhood
        offsets = None if cached is None else cached[2]
        if neighborhood.type is not None and offsets is None:
            offsets = torch.as_tensor(
                neighborhood.offsets_vox(np.asarray(mri.affine)),
                dtype=torch.float32, device=device)
        # Eager volumes stay on each device anyway (MRIData.as_tensor);
        # lazy ones are not kept here, beyond the volume cache's bound.
        self._inputs_cache[key] = (subset,
                                   None if self.dataset.lazy else volume,
                                   offsets)
        return volume, offsets

    def _subset(self, split):
        # Testing batches (evaluation only) are loaded like validation ones.
        attribute = _SUBSET_ATTRIBUTES.get(split)
        if attribute is None:  # not a split: Split names the choices
            attribute = f"{Split(split).value}_set"
        return getattr(self.dataset, attribute)


def _concat_int64(arrays):
    if len(arrays) == 1:
        return np.asarray(arrays[0], dtype=np.int64)
    return np.concatenate([np.zeros(0, dtype=np.int64), *arrays]).astype(
        np.int64, copy=False)


def _entry_bounds(entries, lengths, nb_entries):
    """First point of each entry, and the number of points: ``(E + 1,)``.
    ``entries`` (the entry of each streamline) is non-decreasing."""
    ends = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    return ends[np.searchsorted(entries, np.arange(nb_entries + 1))]


def _gather_rows(datas, rows, bounds):
    """Rows ``rows[bounds[e]:bounds[e + 1]]`` of ``datas[e]`` for every
    entry, in one compact float32 (P, 3) array."""
    if datas and all(data is datas[0] for data in datas):  # one buffer
        return np.take(datas[0], rows, axis=0).astype(np.float32,
                                                       copy=False)
    points = np.empty((len(rows), 3), dtype=np.float32)
    for data, start, stop in zip(datas, bounds[:-1], bounds[1:]):
        points[start:stop] = np.take(data, rows[start:stop], axis=0)
    return points


def add_loader_args(parser):
    """The script options of :class:`BatchLoaderOneInput` (training only)."""
    group = parser.add_argument_group("Batch loader (training augmentation)")
    group.add_argument("--split_ratio", type=float, default=0.0,
                       help="Share in [0, 1] of the streamlines split in two "
                            "at a random point.")
    group.add_argument("--reverse_ratio", type=float, default=0.5,
                       help="Share in [0, 1] of the streamlines reversed: "
                            "0.5 trains for two-way tracking (the backward "
                            "half runs against the stored direction).")
    group.add_argument("--noise_gaussian_size_forward", type=float,
                       default=0.0,
                       help="Sigma in mm of the Gaussian noise (truncated "
                            "at 2 sigma) on the points where inputs are "
                            "interpolated.")
    group.add_argument("--noise_gaussian_size_loss", type=float, default=0.0,
                       help="Sigma in mm of the noise on the target "
                            "streamlines of the loss.")
    return group


# A head is ~200 mm across: a larger sigma only moves points off every
# volume, and much larger ones overflow float32 coordinates into NaN.
MAX_NOISE_MM = 1000.0


def check_noise_size(name, value, owner=None):
    """Return a noise sigma (mm) as float, refusing anything outside
    [0, ``MAX_NOISE_MM``], NaN included."""
    value = check_non_negative_float(name, value, owner)
    if value > MAX_NOISE_MM:
        raise InvalidValue(name, owner, f"a sigma in mm in [0, "
                           f"{MAX_NOISE_MM:g}] (a head is ~200 mm across)",
                           value)
    return value


LOADER_OPTIONS = ("split_ratio", "reverse_ratio",
                  "noise_gaussian_size_forward", "noise_gaussian_size_loss")


def loader_options_from_args(args):
    """The options of :func:`add_loader_args`, checked before any work.

    Returns
    -------
    dict
        ``{name: value}`` for the names of ``LOADER_OPTIONS``.

    Raises
    ------
    DwiMLUserError
        A ratio outside [0, 1] or a negative noise, naming the option.
    """
    options = {name: getattr(args, name) for name in LOADER_OPTIONS}
    for name in ("split_ratio", "reverse_ratio"):
        check_ratio(f"--{name}", options[name])
    for name in ("noise_gaussian_size_forward", "noise_gaussian_size_loss"):
        check_noise_size(f"--{name}", options[name])
    return options
