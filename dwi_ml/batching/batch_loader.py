"""BatchLoaderOneInput: the collate step, from streamline IDs to model inputs.

For each :class:`~dwi_ml.batching.dataloaders.BatchRequest` it loads the
chosen streamlines packed, augments them (training only), then interpolates
the input volume at every point:

1. resampling to the model's step size (mm), number of points or
   compression, when these differ from the HDF5's;
2. splitting a ``split_ratio`` of the streamlines in two;
3. reversing a ``reverse_ratio`` of them;
4. truncated Gaussian noise (sigma in mm): "forward" noise on the points
   where inputs are interpolated, "loss" noise on the target streamlines.

All coordinates are in voxel space with a corner origin. The random stream of
a batch derives from ``(seed, context, epoch, batch index)``: it does not
depend on the worker that loads it, and a resumed run redraws exactly the
same augmentations. Interpolation is one call per subject per batch, in the
worker (CPU) or, with ``interpolation_device='cuda'``, in the main process
with the volumes cached on the GPU (:meth:`compute_inputs`).
"""
import numpy as np
import torch

from dwi_ml.batching.dataloaders import CONTEXT_CODES
from dwi_ml.batching.loaded_batch import LoadedBatch
from dwi_ml.data.processing.augmentation import (add_noise_mm,
                                                 count_from_ratio,
                                                 reverse_streamlines,
                                                 split_streamlines)
from dwi_ml.data.processing.interpolation import \
    prepare_volume_for_interpolation
from dwi_ml.data.processing.neighborhood import (get_neighborhood_offsets,
                                                 interpolate_with_neighborhood)
from dwi_ml.data.processing.resampling import (compress,
                                               resample_to_nb_points,
                                               resample_to_step_size)
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
        The model's streamline format (at most one): mm step, fixed number
        of points, or compression tolerance in mm. Applied in training and
        validation when it differs from the HDF5's.
    split_ratio, reverse_ratio : float in [0, 1]
        Share of the streamlines split in two / reversed (training only).
    noise_gaussian_size_forward, noise_gaussian_size_loss : float
        Sigma in mm of the noise on input points / on target streamlines
        (training only), truncated at 2 sigma.
    neighborhood_type : None, 'axes' or 'grid'
    neighborhood_radius : int
        Number of neighbourhood layers.
    neighborhood_resolution : float
        Distance between layers, in mm.
    seed : int
    interpolation_device : None or str
        None: interpolate in the collate step (workers, CPU). A device
        (e.g. 'cuda'): leave it to :meth:`compute_inputs` in the main
        process, with the volumes cached on that device.
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
        if sum(v is not None for v in (step_size, nb_points, compress)) > 1:
            raise DwiMLUserError(
                "step_size, nb_points, compress: expected at most one, got "
                f"{step_size}, {nb_points}, {compress}.")
        self.step_size = step_size
        self.nb_points = nb_points
        self.compress = compress
        count_from_ratio(split_ratio, 0, "split_ratio")
        count_from_ratio(reverse_ratio, 0, "reverse_ratio")
        self.split_ratio = float(split_ratio)
        self.reverse_ratio = float(reverse_ratio)
        for name, value in (("noise_gaussian_size_forward",
                             noise_gaussian_size_forward),
                            ("noise_gaussian_size_loss",
                             noise_gaussian_size_loss)):
            if not value >= 0:
                raise DwiMLUserError(
                    f"{name}: expected a sigma >= 0 mm, got {value}.")
        self.noise_forward = float(noise_gaussian_size_forward)
        self.noise_loss = float(noise_gaussian_size_loss)
        self.neighborhood_type = neighborhood_type
        self.neighborhood_radius = neighborhood_radius
        self.neighborhood_resolution = neighborhood_resolution
        # Checks the neighbourhood arguments now, with a unit affine.
        get_neighborhood_offsets(neighborhood_type, neighborhood_radius,
                                 neighborhood_resolution, np.eye(4))
        self.seed = int(seed)
        self.interpolation_device = interpolation_device
        self._volume_cache = {}

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

    def state_dict(self):
        """The seed: batch streams derive from it and from the request."""
        return {"seed": self.seed}

    def load_state_dict(self, state):
        """Restore the seed saved by :meth:`state_dict`."""
        self.seed = int(state["seed"])

    def __getstate__(self):
        # Each worker builds its own volume cache.
        state = self.__dict__.copy()
        state["_volume_cache"] = {}
        return state

    # ------------------------------------------------------------------
    def make_generator(self, request):
        """The numpy Generator of one batch, from (seed, context, epoch, index)."""
        return np.random.default_rng(
            [self.seed, CONTEXT_CODES[request.context], request.epoch,
             request.batch_index])

    def load_batch(self, request):
        """Collate: load, augment and (optionally) interpolate one batch.

        Returns
        -------
        LoadedBatch
            Packed target and input streamlines (VOX, corner), the subject
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
            if is_training:
                streamlines = self.augment(streamlines, affine, rng)
            inputs_at = (add_noise_mm(streamlines, self.noise_forward, affine,
                                      rng) if is_training else streamlines)
            if is_training:
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
        """Bring streamlines to the model's format, if it differs the HDF5's."""
        dataset = self.dataset
        if self.step_size is not None and self.step_size != dataset.step_size:
            return resample_to_step_size(streamlines, affine, self.step_size)
        if self.nb_points is not None and self.nb_points != dataset.nb_points:
            return resample_to_nb_points(streamlines, affine, self.nb_points)
        if self.compress is not None and self.compress != dataset.compress:
            return compress(streamlines, affine, self.compress)
        return streamlines

    def augment(self, streamlines, affine, rng):
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

        One interpolation call per subject; the neighbourhood's features
        are laid out neighbour by neighbour.

        Returns
        -------
        torch.Tensor, shape (P, F * K), float32, on ``device``.
        """
        device = torch.device(device)
        subset = self._subset(batch.context)
        points = batch.input_points.to(device)
        point_subjects = torch.repeat_interleave(
            batch.subject_indices.to(device), batch.lengths.to(device))
        nb_neighbours_features = None
        outputs = None
        for subj_idx in torch.unique(batch.subject_indices).tolist():
            volume, offsets = self._volume_and_offsets(
                subset, batch.context, subj_idx, device)
            rows = torch.nonzero(point_subjects == subj_idx).squeeze(1)
            values = interpolate_with_neighborhood(volume, points[rows],
                                                   offsets)
            if outputs is None:
                nb_neighbours_features = values.shape[1]
                outputs = torch.empty((len(points), nb_neighbours_features),
                                      dtype=torch.float32, device=device)
            outputs[rows] = values
        if outputs is None:
            outputs = torch.zeros((0, 0), dtype=torch.float32, device=device)
        return outputs

    def _volume_and_offsets(self, subset, context, subj_idx, device):
        key = (context, subj_idx, str(device))
        if key not in self._volume_cache:
            mri = subset.get_subject(subj_idx).mri_data_list[
                self.input_group_idx]
            offsets = get_neighborhood_offsets(
                self.neighborhood_type, self.neighborhood_radius,
                self.neighborhood_resolution, np.asarray(mri.affine))
            volume = prepare_volume_for_interpolation(mri.as_tensor(device))
            if self.dataset.lazy:
                # The dataset's own LRU cache bounds lazy volumes.
                return volume, offsets
            self._volume_cache[key] = (volume, offsets)
        return self._volume_cache[key]

    def _subset(self, context):
        return (self.dataset.training_set if context == "training"
                else self.dataset.validation_set)


def _group_index(groups, name, argument):
    if name not in groups:
        raise DwiMLUserError(
            f"{argument}: '{name}' is not a group of the HDF5 (expected one "
            f"of {', '.join(groups)}).")
    return groups.index(name)
