"""Pure planning of an epoch's batches from per-subject streamline costs.

These functions know nothing of HDF5 or torch: they take one array of costs
per subject (1 per streamline when the batch size counts streamlines, the
length in mm when it counts millimetres), a budget per batch in the same
unit and a numpy ``Generator``, and return the epoch's list of batches.

A batch is a list of ``(subject_index, streamline_ids)`` with one entry per
subject present, ``streamline_ids`` an int64 array sorted increasingly (the
order h5py needs for fancy indexing, and the order in which the lazy data
are read fastest). Every plan uses each streamline exactly once, never
yields an empty batch, and keeps each batch's total cost within the budget,
except for a streamline that alone costs more than the budget: it gets a
batch of its own.
"""
import collections.abc

import numpy as np

from dwi_ml.data.packed import cut_by_budget  # noqa: F401 (re-exported)
from dwi_ml.data.splits import Split


def make_generator(seed, split, epoch):
    """Return the numpy Generator of one (seed, split, epoch) draw.

    Streams of different splits or epochs are independent, and none of
    them touches numpy's or torch's global random state.
    """
    return np.random.default_rng([seed, Split(split).code, epoch])


def group_by_subject(global_ids, bounds, subject_starts):
    """Split batches of global streamline indices into per-subject entries.

    Parameters
    ----------
    global_ids : np.ndarray, shape (n,), int64
        Indices into the concatenation of all subjects' streamlines.
    bounds : np.ndarray, shape (nb_batches + 1,), int64
        Batch i is ``global_ids[bounds[i]:bounds[i + 1]]``.
    subject_starts : np.ndarray, shape (nb_subjects + 1,), int64
        Global index of each subject's first streamline, then the total.

    Returns
    -------
    GroupedBatches
        A sequence of batches: per batch, a list of ``(subject_index, local
        streamline ids sorted increasingly)`` for each subject present.
    """
    return GroupedBatches(global_ids, bounds, subject_starts)


class GroupedBatches(collections.abc.Sequence):
    """The batches of :func:`group_by_subject`, each built when asked for.

    The grouping is a few passes over all the epoch's streamlines; only a
    batch's list of ``(subject_index, ids)`` is made per batch, when read.
    A list of them all held one tuple and one array per (batch, subject)
    pair: 6 million, 1.4 GB, for 1000 subjects of 10 000 streamlines.
    """

    def __init__(self, global_ids, bounds, subject_starts):
        batch_of_item = np.repeat(np.arange(len(bounds) - 1),
                                  np.diff(bounds))
        # Sorting by (batch, global id) groups each batch by subject too:
        # one int64 key (batch_of_item is sorted already), much faster
        # than a lexsort of millions of streamlines.
        total = np.int64(subject_starts[-1])
        keys = batch_of_item * total + global_ids
        keys.sort()
        sorted_ids = keys - batch_of_item * total
        subjects = np.searchsorted(subject_starts, sorted_ids,
                                   side="right") - 1
        self._local_ids = sorted_ids - subject_starts[subjects]
        # Segment: the ids of one subject in one batch.
        starts = np.flatnonzero(np.concatenate((
            [True], (np.diff(batch_of_item) != 0) | (np.diff(subjects) != 0)))
        ) if len(sorted_ids) else np.zeros(0, dtype=np.int64)
        self._segment_bounds = np.append(starts, len(sorted_ids))
        self._segment_subjects = subjects[starts]
        # Segments of batch i: [first[i], first[i + 1]).
        self._first_segment = np.searchsorted(
            batch_of_item[starts], np.arange(len(bounds)))

    def __len__(self):
        return len(self._first_segment) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative, and out of range
        first, last = self._first_segment[index:index + 2].tolist()
        bounds = self._segment_bounds[first:last + 1].tolist()
        return [(subject, self._local_ids[start:stop])
                for subject, start, stop in zip(
                    self._segment_subjects[first:last].tolist(),
                    bounds[:-1], bounds[1:])]


def plan_mixed_batches(costs_per_subject, budget, rng):
    """Plan an epoch where every batch mixes streamlines of all subjects.

    One permutation of all streamlines of all subjects, cut by the
    cumulative sum of their costs.

    Parameters
    ----------
    costs_per_subject : list of np.ndarray, each (N_s,)
        Cost of each streamline of each subject (1 or length in mm).
    budget : float
        Maximal total cost of a batch.
    rng : np.random.Generator
        The epoch's random stream.

    Returns
    -------
    list of list of (int, np.ndarray)
        The epoch's batches.
    """
    counts = [len(costs) for costs in costs_per_subject]
    subject_starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    if subject_starts[-1] == 0:
        return []
    all_costs = np.concatenate(costs_per_subject).astype(np.float64)
    order = rng.permutation(len(all_costs))
    return group_by_subject(order, cut_by_budget(all_costs[order], budget),
                            subject_starts)


def plan_subject_batches(costs_per_subject, budget, nb_subjects_per_batch,
                         cycles, rng):
    """Plan an epoch where each batch holds few subjects, kept for cycles.

    Each subject's streamlines are shuffled once and consumed in that order.
    ``nb_subjects_per_batch`` subjects are drawn without replacement,
    weighted by their number of remaining streamlines (subjects with none
    left have weight 0, so are never drawn; fewer are drawn when fewer
    remain), and kept for ``cycles`` batches. The budget of a batch is
    shared between its subjects in their drawn order: each takes what fits
    in an equal share of what is left (at least its next streamline when
    that fits in what is left), so a subject that takes less leaves the
    rest to the next ones. A streamline over the whole budget gets a batch
    of its own when its subject comes first. A subject that runs out is
    skipped;
    when all drawn subjects ran out, subjects are drawn again at once. The
    epoch ends when every streamline was used once.

    Parameters
    ----------
    costs_per_subject : list of np.ndarray, each (N_s,)
        Cost of each streamline of each subject (1 or length in mm).
    budget : float
        Maximal total cost of a batch.
    nb_subjects_per_batch : int
        Number of subjects drawn for a batch (at least 1).
    cycles : int
        Number of consecutive batches that keep the same subjects.
    rng : np.random.Generator
        The epoch's random stream.

    Returns
    -------
    list of list of (int, np.ndarray)
        The epoch's batches.
    """
    orders = [rng.permutation(len(costs)) for costs in costs_per_subject]
    cumulatives = [np.concatenate(([0.], np.cumsum(
        np.asarray(costs, dtype=np.float64)[order])))
        for costs, order in zip(costs_per_subject, orders)]
    counts = np.array([len(order) for order in orders], dtype=np.int64)
    positions = np.zeros(len(orders), dtype=np.int64)
    batches = []
    chosen, nb_batches_with_chosen = [], cycles
    while positions.sum() < counts.sum():
        remaining = counts - positions
        if nb_batches_with_chosen == cycles or not remaining[chosen].any():
            chosen = _draw_subjects(remaining, nb_subjects_per_batch, rng)
            nb_batches_with_chosen = 0
        taken = _fill_batch(chosen, cumulatives, positions, counts, budget)
        batches.append([(int(subject), np.sort(orders[subject][start:end]))
                        for subject, start, end in taken])
        nb_batches_with_chosen += 1
    return batches


def _draw_subjects(remaining, nb_subjects_per_batch, rng):
    """Draw subjects without replacement, weighted by remaining streamlines."""
    nb_drawn = min(nb_subjects_per_batch, int(np.count_nonzero(remaining)))
    weights = remaining / remaining.sum()
    return rng.choice(len(remaining), size=nb_drawn, replace=False,
                      p=weights)


def _fill_batch(chosen, cumulatives, positions, counts, budget):
    """Take the next streamlines of the chosen subjects for one batch.

    Advances ``positions`` in place and returns ``(subject, start, end)``
    ranges into each subject's shuffled order, never an empty batch.
    """
    active = [subject for subject in chosen
              if positions[subject] < counts[subject]]
    left = budget
    taken = []
    for rank, subject in enumerate(active):
        cumulative, start = cumulatives[subject], positions[subject]
        next_cost = cumulative[start + 1] - cumulative[start]
        if next_cost > budget and not taken:
            positions[subject] += 1
            return [(subject, start, start + 1)]
        share = left / (len(active) - rank)
        end = int(np.searchsorted(cumulative, cumulative[start] + share,
                                  side="right")) - 1
        if end == start and next_cost <= left:
            # Longer than an equal share but it fits: taking it keeps this
            # subject's queue moving instead of leaving it to the others.
            end = start + 1
        if end > start:
            taken.append((subject, start, end))
            left -= cumulative[end] - cumulative[start]
            positions[subject] = end
    return taken


def shard_plan(plan, rank, world_size):
    """Return this rank's part of every global batch, and the number merged.

    Batch sizes are global: each batch of the shared plan is split into
    ``world_size`` contiguous parts of (almost) equal numbers of
    streamlines, and rank ``r`` gets part ``r`` of every batch. All ranks
    thus get the same number of batches, and together they see exactly the
    streamlines a single process would (the trainer weights each rank's
    loss by its number of points, so the update equals the single-process
    one). A batch with fewer streamlines than ranks cannot give each rank
    one: it joins the batches after it until the joined batch has one
    streamline per rank (the last joins the one before), so no streamline
    is left out; that update then covers several of the single process's
    batches. They are counted. An epoch with fewer streamlines than ranks
    gives no batch.
    """
    if world_size == 1:
        return plan, 0
    plan, nb_merged = _merge_small_batches(plan, world_size)
    rank_plan = []
    for batch in plan:
        sizes = np.array([len(ids) for _, ids in batch])
        bounds = np.linspace(0, sizes.sum(), world_size + 1).round()
        start, stop = int(bounds[rank]), int(bounds[rank + 1])
        subject_starts = np.concatenate(([0], np.cumsum(sizes)))
        part = []
        for (subj_idx, ids), first, last in zip(batch, subject_starts[:-1],
                                                subject_starts[1:]):
            lo, hi = max(start, first), min(stop, last)
            if lo < hi:
                part.append((subj_idx, ids[lo - first:hi - first]))
        rank_plan.append(part)
    return rank_plan, nb_merged


def _merge_small_batches(plan, world_size):
    """``plan`` with each batch of fewer than ``world_size`` streamlines
    joined to its neighbours (see :func:`shard_plan`), and the number of
    batches that joined another."""
    merged, pending = [], []
    for batch in plan:
        pending.append(batch)
        if sum(len(ids) for part in pending for _, ids in part) >= world_size:
            merged.append(_join_batches(pending))
            pending = []
    if pending and merged:
        merged[-1] = _join_batches([merged[-1], *pending])
    return merged, len(plan) - len(merged)


def _join_batches(batches):
    """One batch of the streamlines of ``batches``; a subject's ids keep
    their order."""
    if len(batches) == 1:
        return batches[0]
    ids = {}
    for batch in batches:
        for subj_idx, subject_ids in batch:
            ids.setdefault(subj_idx, []).append(subject_ids)
    return [(subj_idx, np.concatenate(parts)) for subj_idx, parts in
            ids.items()]
