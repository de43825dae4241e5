"""Length groups: a batch of sequences padded for an RNN in a few blocks.

A unidirectional RNN's outputs at the valid steps of a sequence never see
the padding after them, and on CPU ``torch.nn.LSTM`` runs padded
``(time, sequence, features)`` blocks several times faster than packed
sequences. Padding every sequence to the batch's longest wastes half the
work on split batches, so the sequences, sorted by length, run in groups,
each padded to its own longest.

Each RNN call also has a fixed cost (on CPU, oneDNN builds a kernel for a
new shape, reorders the weights, and synchronises its threads at each time
step): :func:`length_groups` chooses the groups of least padded points plus
that cost per group, counted in padded points: ``GROUP_COST`` at one torch
thread, ``MULTITHREAD_GROUP_COST`` at more (each point costs less there,
each time step more). On a GPU a padded point costs next to nothing and
each cuDNN call some hundred microseconds of CPU: the batch is one group.

All groups' blocks are views of one buffer: one scatter puts the batch's
points in it, and one gather takes the outputs back (:class:`PaddedGroups`).
"""
import math

import numpy as np
import torch

# Fixed cost of one group, in padded points (LSTM [64, 64], forward and
# backward; bench/README.md, "Session 10"). One thread: measured, the best
# of 100 - 1200 for split batches. More threads: estimated from session 4's
# figures at 2 threads, where a 4th equal group saved ~550 padded points
# and cost 5 ms more than 3 groups (~1000 points); to measure again.
GROUP_COST = 300
MULTITHREAD_GROUP_COST = 1000


def default_group_cost(device=None):
    """The cost of a group on ``device`` (None: the CPU): infinite (one
    group) on CUDA, else ``GROUP_COST`` at one torch thread and
    ``MULTITHREAD_GROUP_COST`` at more.

    On an H200, split batches of 1000 streamlines trained 1.3 - 2.1x faster
    in one group than in the CPU's groups (bench/README.md, "Session 29").
    """
    if device is not None and torch.device(device).type == "cuda":
        return math.inf
    return (GROUP_COST if torch.get_num_threads() == 1
            else MULTITHREAD_GROUP_COST)


def length_groups(sorted_counts, group_cost=None):
    """Where each length group starts.

    Parameters
    ----------
    sorted_counts : array of int (N,)
        Sequence lengths, in decreasing order.
    group_cost : float or None
        Cost of one group, in padded points (``math.inf``: one group);
        None: :func:`default_group_cost` on the CPU.

    Returns
    -------
    list of int
        The first sequence of each group (0 first): the split, at changes
        of length, of least ``sum(longest * nb_sequences) + group_cost *
        nb_groups`` (exact, by dynamic programming over the distinct
        lengths).
    """
    if group_cost is None:
        group_cost = default_group_cost()
    counts = np.asarray(sorted_counts, dtype=np.int64)
    if len(counts) == 0 or group_cost == math.inf:
        return [0]
    starts = np.flatnonzero(np.r_[True, counts[1:] != counts[:-1]])
    ends = np.r_[starts[1:], len(counts)]
    # cost[i, k]: one group from starts[i] to ends[k]; best[k]: least
    # cost of the sequences before ends[k - 1].
    cost = (counts[starts][:, None] * (ends[None, :] - starts[:, None])
            + group_cost)
    best = np.zeros(len(starts) + 1)
    previous = np.zeros(len(starts) + 1, dtype=np.int64)
    for k in range(1, len(starts) + 1):
        costs = best[:k] + cost[:k, k - 1]
        previous[k] = costs.argmin()
        best[k] = costs[previous[k]]
    bounds, k = [], len(starts)
    while k > 0:
        k = previous[k]
        bounds.append(int(starts[k]))
    return bounds[::-1]


class PaddedGroups:
    """The padded blocks of a batch of sequences, and the way back.

    Parameters
    ----------
    counts : torch.Tensor, int64 (N,)
        Length of each sequence (>= 1); the rows of a batch are sequence 0's
        points, then sequence 1's, etc.
    group_cost : float or None
        See :func:`length_groups`; None: :func:`default_group_cost` on
        ``counts``' device.

    Attributes
    ----------
    shapes : list of (int, int)
        ``(longest, nb_sequences)`` of each group.
    """

    def __init__(self, counts, group_cost=None):
        device = counts.device
        nb_sequences = len(counts)
        order = torch.argsort(counts, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(nb_sequences, device=device)
        sorted_counts = counts[order].cpu().numpy()
        if group_cost is None:
            group_cost = default_group_cost(device)
        starts = length_groups(sorted_counts, group_cost)
        stops = starts[1:] + [nb_sequences]
        self.shapes = [(int(sorted_counts[start]), stop - start)
                       for start, stop in zip(starts, stops)]
        areas = [length * width for length, width in self.shapes]
        self._offsets = np.r_[0, np.cumsum(areas)].tolist()
        # Per sorted sequence: its block's offset plus its column, and the
        # block's width (the step from one time step to the next).
        group_of = np.repeat(np.arange(len(starts)),
                             np.subtract(stops, starts))
        widths = np.asarray([w for _, w in self.shapes])[group_of]
        base = (np.asarray(self._offsets[:-1])[group_of]
                + np.arange(nb_sequences) - np.asarray(starts)[group_of])
        base = torch.as_tensor(base, device=device)[rank]
        widths = torch.as_tensor(widths, device=device)[rank]
        sequence_ids = torch.repeat_interleave(
            torch.arange(nb_sequences, device=device), counts)
        first_rows = torch.cumsum(counts, 0) - counts
        time_ids = (torch.arange(len(sequence_ids), device=device)
                    - first_rows[sequence_ids])
        # Row of each point in the buffer of all blocks.
        self._positions = (base[sequence_ids]
                           + time_ids * widths[sequence_ids])

    def pad(self, rows):
        """The blocks of ``rows`` (M, F): list of (longest, nb, F) tensors,
        zero at the padding."""
        buffer = rows.new_zeros((self._offsets[-1], rows.shape[1]))
        buffer = buffer.index_copy(0, self._positions, rows)
        return [buffer[start:stop].view(length, width, rows.shape[1])
                for (length, width), start, stop in zip(
                    self.shapes, self._offsets[:-1], self._offsets[1:])]

    def unpad(self, blocks):
        """The valid rows (M, H) of blocks (longest, nb, H) such as
        :meth:`pad`'s, in the batch's order."""
        flat = torch.cat([block.reshape(-1, block.shape[-1])
                          for block in blocks])
        return flat.index_select(0, self._positions)
