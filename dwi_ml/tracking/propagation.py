"""Batched tracking: many streamlines grow at once, one model call per step.

All coordinates are in voxel space with a corner origin (dipy ``Space.VOX``,
``Origin.TRACKVIS``), on the tracker's device (CPU or GPU), in the model's
floating dtype (float32 usually; float64 after ``model.double()``, e.g. to
compare two trackings up to logic rather than float32 rounding).

One step, for every active streamline at once:

1. interpolate the input volume (with the model's neighbourhood) at the
   streamlines' last points, in one call;
2. one :meth:`forward_step` of the model gives the outputs and the new RNN
   hidden states, and :meth:`get_tracking_directions` unit directions in
   voxel space (and EOS probabilities);
3. a direction ``d`` becomes a step of ``step_size_mm`` mm:
   ``d * step_size_mm / |A d|`` voxels, with ``A`` the affine's linear part;
4. the stopping criteria (:mod:`dwi_ml.tracking.stopping`) end some
   streamlines; :meth:`select_hidden_states` keeps the others' states.

Both directions (Learn2track's way)
    The seed is first tracked forward. The backward half then starts again
    from the seed, with the RNN fed the reversed forward half, point by
    point, first: its hidden state at the seed is the one it would have had
    had it tracked the whole streamline in that direction, and its previous
    directions at the seed are the reversed forward ones (so the angle
    criterion forbids a U-turn at the seed). All streamlines advance in
    lockstep; those still replaying their forward half take their known
    next point and ignore the model's output. The final streamline runs
    from the end of the forward half, through the seed, to the end of the
    backward half. A forward half that stopped at its first step (the seed
    alone) leaves nothing to replay, and the model would propose the same
    step again: its backward half starts instead with the opposite of that
    refused step, then follows the model.

Random draws ("prob")
    Each half of a streamline draws with its own key (``2 i`` forward,
    ``2 i + 1`` backward, ``i`` its seed's index in the run) and the step
    (:class:`~dwi_ml.models.direction_getters.random_draws.KeyedDraws`): its
    draws depend on ``rng_seed`` and its seed's index only, whatever the
    batch size or the streamlines around it.
"""
import logging

import numpy as np
import torch
from tqdm import tqdm

from dwi_ml.data.processing.interpolation import (
    interpolate_volume_at_coordinates,
    prepare_volume_for_interpolation,
)
from dwi_ml.data.processing.neighborhood import interpolate_with_neighborhood
from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.random_draws import KeyedDraws, key_words
from dwi_ml.tracking.next_points import NextPointChecks
from dwi_ml.tracking.stopping import StopReason, max_nb_points
from dwi_ml.tracking.tracked_streamlines import (
    TrackedStreamlines,
    concatenate_results,
    pack_padded,
    reverse_padded,
    scatter_rows,
)
from dwi_ml.tracking.tracker_args import check_points, check_tracker_args
from dwi_ml.tracking.training_facts import check_model_max_len

logger = logging.getLogger(__name__)


class BatchedTracker(NextPointChecks):
    """Track streamlines with a model, a batch of seeds at a time.

    Parameters
    ----------
    model : MainModelOneInput
        With ``forward_step``, ``select_hidden_states`` and
        ``get_tracking_directions`` (e.g. Learn2TrackModel). Put in eval
        mode here.
    input_volume : torch.Tensor or np.ndarray, shape (X, Y, Z, F)
        The model's input group for this subject.
    affine : np.ndarray, shape (4, 4)
        Voxel-to-RAS mm affine of the input volume.
    tracking_mask : dwi_ml.tracking.stopping.TrackingMask
        On ``device``.
    step_size_mm : float
    max_angle_deg : float
        Largest turn between two steps, degrees, measured in mm.
    max_length_mm : float
        Streamlines stop growing at this length (both halves together).
    eos_threshold : float, "max" or None
        Stop where the EOS probability is above it, or with "max" where EOS
        is the model's most likely class (EOS models only).
    algo : "det" or "prob"
    track_forward_only : bool
    rng_seed : int
        Seed of "prob" sampling. The draws of a streamline depend only on
        it and on the streamline's key: its seed's index among all seeds
        of the run (``first_index`` of :meth:`track`) and its half
        (:class:`~dwi_ml.models.direction_getters.random_draws.KeyedDraws`),
        not on the batch size or the other streamlines.
    device : str or torch.device
    max_invalid_nb_points : int
        Points out of the tracking mask (inside the volume) each half of a
        streamline may add before the next one stops it (0: the first one
        does).
    append_last_point : bool
        A half that stops on the mask, inside the volume, ends with the
        point out of the mask that stopped it, if that point passed the
        angle and EOS tests (a sharper turn or an EOS there is not added).
    """

    def __init__(self, model, input_volume, affine, tracking_mask,
                 step_size_mm, max_angle_deg=45.0, max_length_mm=300.0,
                 eos_threshold=None, algo="det", track_forward_only=False,
                 rng_seed=0, device="cpu", max_invalid_nb_points=0,
                 append_last_point=False):
        self.device = check_tracker_args(
            model, input_volume, affine, tracking_mask, step_size_mm,
            max_angle_deg, algo, device)
        self.model = model.to(self.device).eval()
        self.dtype = model.dtype
        self.volume = prepare_volume_for_interpolation(input_volume,
                                                       self.device)
        self.offsets = torch.as_tensor(
            model.input_spec.neighborhood.offsets_vox(affine),
            dtype=self.dtype, device=self.device)
        # Without a neighbourhood (the point alone) no offset is added.
        self._has_neighbours = bool(len(self.offsets) > 1
                                    or self.offsets.any())
        self._inputs_and_mask = self._join_inputs_and_mask(tracking_mask)
        # Last points of each streamline that forward_step reads (None:
        # all of them).
        self.context_points = getattr(model, "tracking_context_points",
                                      None)
        linear_part = np.asarray(affine, dtype=np.float64)[:3, :3]
        self.linear_part = torch.as_tensor(linear_part, dtype=self.dtype,
                                           device=self.device)
        # A diagonal affine scales each axis: a product per coordinate gives
        # the matrix product's values (its other terms are exact zeros) in
        # one cheap operation.
        self._axis_scales = (
            torch.diagonal(self.linear_part).clone()
            if np.count_nonzero(linear_part - np.diag(np.diag(linear_part)))
            == 0 else None)
        self.tracking_mask = tracking_mask
        self.step_size_mm = float(step_size_mm)
        self.max_angle_deg = float(max_angle_deg)
        self.max_nb_points = max_nb_points(max_length_mm, self.step_size_mm)
        if self.max_nb_points < 2:
            raise DwiMLUserError(
                f"argument 'max_length': expected at least one step of "
                f"{self.step_size_mm} mm, found {max_length_mm} mm.")
        check_model_max_len(model, self.max_nb_points, self.step_size_mm,
                            max_length_mm)
        if eos_threshold is not None and not getattr(model, "add_eos", False):
            raise DwiMLUserError(
                f"argument 'eos_stop': the model predicts no EOS, found a "
                f"threshold of {eos_threshold}.")
        self.eos_threshold = eos_threshold
        self.max_invalid_nb_points = check_int("max_invalid_nb_points",
                                               max_invalid_nb_points, 0)
        self.append_last_point = bool(append_last_point)
        self.algo = algo
        self.track_forward_only = track_forward_only
        self.rng_seed = int(rng_seed)

    def _join_inputs_and_mask(self, tracking_mask):
        """The (X, Y, Z, F + 1) table of the inputs and the tracking mask,
        or None.

        Without neighbours, and with a trilinear mask on the input grid,
        one interpolation of this table at a step's next points gives the
        mask test and, for the streamlines that go on, the next step's
        inputs: one call per step instead of two. Each column of the
        weighted sum of rows is computed alone, so the values are those of
        the separate tables, bit for bit. The table is a copy of the
        volume (the caller's stays as it is); ``self.volume`` becomes a
        view of its first F features.
        """
        mask = tracking_mask.trilinear_volume
        if (self._has_neighbours or mask is None
                or mask.shape[:3] != self.volume.shape[:3]
                or mask.device != self.volume.device):
            return None
        table = torch.cat([self.volume, mask], dim=3)
        self.volume = table[..., :-1]
        return table

    def track(self, seeds_vox_corner, first_index=0):
        """Track one batch of seeds.

        Parameters
        ----------
        seeds_vox_corner : np.ndarray, shape (N, 3)
            Voxel space, corner origin (a list of 3-element points is
            fine); NaN or infinite coordinates, or any other shape, are
            refused. A seed outside the volume, or whose voxel is outside
            the tracking mask, stops at once (``MASK``, the seed alone).
        first_index : int
            Index of the first seed among all seeds of the run: seed ``i``
            of the batch draws as seed ``first_index + i`` ("prob").

        Returns
        -------
        TrackedStreamlines
        """
        seeds = torch.as_tensor(
            check_points("seeds_vox_corner", seeds_vox_corner,
                         "BatchedTracker.track"),
            dtype=self.dtype, device=self.device)
        with torch.inference_mode():
            valid = self.tracking_mask.contains_voxel(seeds)
            points = seeds[:, None, :]
            lengths = torch.ones(len(seeds), dtype=torch.int64,
                                 device=self.device)
            forward_stops = torch.full_like(lengths, int(StopReason.MASK))
            backward_stops = (None if self.track_forward_only
                              else forward_stops.clone())
            if valid.any():
                rows = torch.nonzero(valid).squeeze(1)
                # Keys of the draws: forward half 2 i, backward 2 i + 1.
                keys = 2 * (rows + check_int("first_index", first_index, 0))
                valid_points, valid_lengths, stops, first_directions = \
                    self._propagate(seeds[rows, None, :], lengths[rows], keys)
                forward_stops[rows] = stops
                if not self.track_forward_only:
                    valid_points, valid_lengths, stops, _ = self._propagate(
                        reverse_padded(valid_points, valid_lengths),
                        valid_lengths, keys + 1, -first_directions)
                    backward_stops[rows] = stops
                points = scatter_rows(points, rows, valid_points)
                lengths[rows] = valid_lengths
        return TrackedStreamlines(
            pack_padded(points, lengths), seeds.cpu().numpy(),
            forward_stops.cpu().numpy(),
            None if backward_stops is None else backward_stops.cpu().numpy())

    def track_in_batches(self, seeds_vox_corner, batch_size,
                         disable_progress=None):
        """Track all seeds, ``batch_size`` at a time, with a progress bar.

        Returns one :class:`TrackedStreamlines` for all seeds, in order
        (without seeds, the empty result of :meth:`track`).
        """
        check_int("batch_size", batch_size, 1, "track_in_batches")
        seeds_vox_corner = check_points("seeds_vox_corner", seeds_vox_corner,
                                        "BatchedTracker.track_in_batches")
        if len(seeds_vox_corner) == 0:
            return self.track(seeds_vox_corner)
        results = [self.track(seeds_vox_corner[start:start + batch_size],
                              start)
                   for start in tqdm(range(0, len(seeds_vox_corner),
                                           batch_size),
                                     desc="Seed batches", unit="batch",
                                     disable=disable_progress)]
        return concatenate_results(results)

    def continue_streamlines(self, prefixes_vox_corner):
        """Grow streamlines forward after known first points.

        The model is fed the prefix point by point (as in the backward half
        of two-way tracking), then tracks on from its last point: the
        reference dwi_ml's generation validation.

        Parameters
        ----------
        prefixes_vox_corner : np.ndarray, shape (N, K, 3)
            The first K >= 1 points of each streamline, voxel space, corner
            origin, finite (anything else is refused). Prefix ``i`` draws
            ("prob") as the forward half of seed ``i``. A prefix with a
            point outside the volume is not grown, as a seed outside the
            volume: it comes back as it is, stopped by ``MASK``. The
            tracking mask is not read on the prefix (its points are given),
            only on the points grown after it.

        Returns
        -------
        streamlines : nibabel ArraySequence
            Prefix and continuation, voxel space, corner origin, compact.
        stops : np.ndarray of StopReason values, shape (N,)
        """
        prefixes = torch.as_tensor(
            check_points("prefixes_vox_corner", prefixes_vox_corner,
                         "BatchedTracker.continue_streamlines",
                         prefixes=True),
            dtype=self.dtype, device=self.device)
        nb_prefixes, prefix_length = prefixes.shape[:2]
        lengths = torch.full((nb_prefixes,), prefix_length,
                             dtype=torch.int64, device=self.device)
        stops = torch.full_like(lengths, int(StopReason.MASK))
        points = prefixes
        with torch.inference_mode():
            # Prefixes with a point outside the volume are not grown.
            inside = self.tracking_mask.inside_volume(
                prefixes.reshape(-1, 3)).reshape(nb_prefixes,
                                                 prefix_length).all(dim=1)
            if inside.any():
                rows = torch.nonzero(inside).squeeze(1)
                grown, grown_lengths, grown_stops, _ = self._propagate(
                    prefixes[rows], lengths[rows], 2 * rows)
                points = scatter_rows(points, rows, grown)
                lengths[rows] = grown_lengths
                stops[rows] = grown_stops
        return pack_padded(points, lengths), stops.cpu().numpy()

    def _propagate(self, prefixes, prefix_lengths, keys,
                   seed_directions=None):
        """Grow streamlines after their prefixes, all in lockstep.

        Parameters
        ----------
        prefixes : torch.Tensor, shape (N, T0, 3)
            Known first points of each streamline (the seed alone, or the
            reversed forward half ending at the seed), padded.
        prefix_lengths : torch.Tensor, int64 (N,)
            Points of each prefix, >= 1.
        keys : torch.Tensor, int64 (N,)
            Key of each streamline's "prob" draws (see :class:`KeyedDraws`).
        seed_directions : torch.Tensor, shape (N, 3), optional
            Unit directions (voxel space) that replace the model's first
            direction where the prefix is the seed alone.

        Returns
        -------
        points : torch.Tensor, shape (N, max_nb_points, 3)
            Rows past a streamline's length are undefined.
        lengths : torch.Tensor, int64 (N,)
        stops : torch.Tensor, int64 (N,)
            StopReason of each streamline.
        first_directions : torch.Tensor, shape (N, 3)
            The model's directions at the first point, whether used or not.
        """
        nb_streamlines = len(prefixes)
        points = prefixes.new_zeros((nb_streamlines, self.max_nb_points, 3))
        points[:, :prefixes.shape[1]] = prefixes
        # A streamline gets its length when it stops; those still active
        # at the end have max_nb_points.
        lengths = torch.full_like(prefix_lengths, self.max_nb_points)
        stops = torch.full_like(lengths, int(StopReason.MAX_LENGTH))
        # Rows of the N streamlines still active, then per active row:
        # its prefix length (read while prefixes are replayed) and its
        # points out of the mask so far (kept only when some are allowed).
        active = torch.arange(nb_streamlines, device=self.device)
        active_prefix_lengths = prefix_lengths
        invalid_counts = (torch.zeros_like(lengths)
                          if self.max_invalid_nb_points else None)
        longest_prefix = int(prefix_lengths.max())
        # Hashed once per streamline; each step mixes in the step.
        words = (None if self.algo == "det"
                 else key_words(self.rng_seed, keys))
        # inputs: at the current points, when the last step read them.
        hidden_states = first_directions = inputs = None
        for t in range(self.max_nb_points - 1):
            if len(active) == 0:
                break
            # All active streamlines have t + 1 points (lockstep): one
            # gather gives the model its (n, m, 3) context and the angle
            # criterion the previous point.
            # narrow/select rather than Python indexing: a step's fixed
            # cost is mostly such calls.
            first_row = self._first_context_row(t)
            recent = points.narrow(1, first_row, t + 1 - first_row
                                   ).index_select(0, active)
            current = recent.select(1, -1)
            context = (recent if self.context_points is None
                       else recent[:, -self.context_points:])
            if inputs is None:
                inputs = self._interpolate_inputs(current)
            outputs, hidden_states = self.model.forward_step(
                inputs, context, hidden_states)
            if t == 0:
                check_step_outputs(self.model, outputs, len(active))
            inputs = None
            # Until the longest prefix is replayed, some streamlines take
            # their known next point instead of the model's.
            growing = None
            if t + 1 < longest_prefix:
                growing = active_prefix_lengths <= t + 1
                if not growing.any():
                    continue
            # Rows replaying their prefix draw too and ignore it: keyed
            # draws do not shift the others'.
            draws = (None if words is None else KeyedDraws(
                self.rng_seed, words.index_select(0, active), t))
            directions, eos_probs = self.model.get_tracking_directions(
                outputs, self.algo, draws)
            if t == 0:
                # Every streamline is active at t = 0: rows match.
                first_directions = directions
                if seed_directions is not None:
                    directions = torch.where(
                        (prefix_lengths == 1)[:, None], seed_directions,
                        directions)
            known_next_points = (None if growing is None else
                                 points.select(1, t + 1).index_select(
                                     0, active))
            stop_codes, next_points, out_of_mask, inputs = \
                self._check_next_points(directions,
                                        self._eos_stops(outputs, eos_probs),
                                        recent, t, growing, known_next_points)
            if out_of_mask is not None:
                # A point out of the mask is appended (append_last_point)
                # only if it passed the angle and EOS tests.
                appendable = out_of_mask & (stop_codes == 0)
                # With no point allowed out of the mask, all counts are 0
                # before the step: the first one is past the limit.
                past_limit = out_of_mask
                if invalid_counts is not None:
                    invalid_counts += out_of_mask
                    past_limit = invalid_counts > self.max_invalid_nb_points
                stop_codes.masked_fill_(past_limit, int(StopReason.MASK))
            # All write their next point: rows past a length are never read.
            points.select(1, t + 1).index_copy_(0, active, next_points)
            # Integer rows: cheaper than boolean masks or advanced indexing.
            stopped = torch.nonzero(stop_codes).squeeze(1)
            if len(stopped):
                stopped_rows = active.index_select(0, stopped)
                stops.index_copy_(0, stopped_rows,
                                  stop_codes.index_select(0, stopped))
                if self.append_last_point and out_of_mask is not None:
                    lengths.index_copy_(0, stopped_rows, (appendable & (
                        stop_codes == StopReason.MASK)).index_select(
                            0, stopped) + (t + 1))
                else:
                    lengths.index_fill_(0, stopped_rows, t + 1)
                keep = torch.nonzero(stop_codes == 0).squeeze(1)
                active = active.index_select(0, keep)
                if t + 2 < longest_prefix:
                    active_prefix_lengths = active_prefix_lengths.index_select(
                        0, keep)
                if invalid_counts is not None:
                    invalid_counts = invalid_counts.index_select(0, keep)
                if inputs is not None:
                    inputs = inputs.index_select(0, keep)
                hidden_states = self.model.select_hidden_states(
                    hidden_states, keep)
        return points, lengths, stops, first_directions

    def _first_context_row(self, t):
        """First row of the points gathered at step ``t``: the model's
        context, and at least the previous point."""
        if self.context_points is None:
            return 0
        return max(t + 1 - max(self.context_points, 2), 0)

    def _interpolate_inputs(self, points_vox_corner):
        """The model's inputs at the points (with its neighbourhood)."""
        if self._inputs_and_mask is not None:
            return interpolate_volume_at_coordinates(
                self._inputs_and_mask, points_vox_corner).narrow(
                    1, 0, self.volume.shape[3])
        if not self._has_neighbours:
            return interpolate_volume_at_coordinates(self.volume,
                                                     points_vox_corner)
        return interpolate_with_neighborhood(self.volume, points_vox_corner,
                                             self.offsets)


def check_step_outputs(model, outputs, nb_streamlines):
    """Refuse ``forward_step`` outputs that are not one row of the direction
    getter's outputs per streamline (a model of one's own whose extra
    column would be read as an EOS logit, silently)."""
    getter = getattr(model, "direction_getter", None)
    width = getattr(getter, "output_size", None)
    shape = tuple(getattr(outputs, "shape", ()))
    expected = (nb_streamlines, width if width is not None else "any")
    if len(shape) != 2 or shape[0] != nb_streamlines or (
            width is not None and shape[1] != width):
        raise DwiMLUserError(
            f"{type(model).__name__}.forward_step: expected outputs of shape "
            f"{expected} (one row per streamline, the direction getter's "
            f"outputs), found {shape}.")
