"""What the tracker returns: the tracked streamlines, packed, and why
each half stopped (:class:`TrackedStreamlines`).

The tracker grows (N, T, 3) padded tensors (:func:`reverse_padded` and
:func:`scatter_rows` move their rows); :func:`pack_padded` turns them into
one compact nibabel ``ArraySequence`` (voxel space, corner origin), and
:func:`concatenate_results` joins the results of several seed batches.
"""
import numpy as np
import torch

from dwi_ml.data.packed import (
    compact,
    make_array_sequence,
    offsets_from_lengths,
    packed_arrays,
)


class TrackedStreamlines:
    """The result of
    :meth:`dwi_ml.tracking.propagation.BatchedTracker.track`, aligned with
    the seeds.

    Attributes
    ----------
    streamlines : nibabel ArraySequence
        Voxel space, corner origin, compact. A seed outside the tracking
        mask gives a single point.
    seeds : np.ndarray, shape (N, 3)
        Voxel space, corner origin.
    forward_stops : np.ndarray of StopReason values, shape (N,)
        Why the forward half stopped.
    backward_stops : np.ndarray of StopReason values, shape (N,), or None
        Why the backward half stopped; None when tracking forward only.
    """

    def __init__(self, streamlines, seeds, forward_stops, backward_stops):
        self.streamlines = streamlines
        self.seeds = seeds
        self.forward_stops = forward_stops
        self.backward_stops = backward_stops


def pack_padded(points, lengths):
    """Padded streamlines to a compact ArraySequence (numpy).

    Parameters
    ----------
    points : torch.Tensor, shape (N, T, 3)
        Row ``i`` holds streamline ``i`` in its first ``lengths[i]`` points;
        the rows after them are ignored.
    lengths : torch.Tensor, int64 (N,)

    Returns
    -------
    nibabel ArraySequence
    """
    nb_streamlines, nb_rows = points.shape[:2]
    offsets = np.arange(nb_streamlines, dtype=np.int64) * nb_rows
    data, offsets, lengths = compact(make_array_sequence(
        points.reshape(-1, 3).cpu().numpy(), offsets, lengths.cpu().numpy()))
    return make_array_sequence(data, offsets, lengths)


def concatenate_results(results):
    """One TrackedStreamlines from several (at least one), in order."""
    # Each result's streamlines are compact (see pack_padded).
    data = [packed_arrays(r.streamlines)[0] for r in results]
    lengths = np.concatenate([packed_arrays(r.streamlines)[2] for r in results])
    offsets = offsets_from_lengths(lengths)
    backward = (None if results[0].backward_stops is None
                else np.concatenate([r.backward_stops for r in results]))
    return TrackedStreamlines(
        make_array_sequence(np.concatenate(data), offsets, lengths),
        np.concatenate([r.seeds for r in results]),
        np.concatenate([r.forward_stops for r in results]), backward)


def reverse_padded(points, lengths):
    """Each streamline's first ``lengths[i]`` points, reversed, padded."""
    ranks = torch.arange(int(lengths.max()), device=points.device)
    rows = (lengths[:, None] - 1 - ranks).clamp(min=0)
    return torch.gather(points, 1, rows[:, :, None].expand(-1, -1, 3))


def scatter_rows(points, rows, row_points):
    """``points`` (N, T, 3) widened to row_points' T, with ``rows`` set."""
    out = points.new_zeros((len(points), row_points.shape[1], 3))
    out[:, :points.shape[1]] = points
    out[rows] = row_points
    return out
