"""BatchSampler: a torch batch sampler yielding streamline IDs per subject.

It plays the part of torch's ``batch_sampler``: each item it yields is one
batch, ``[(subject_index, streamline_ids), ...]``, that the collate step
(``BatchLoaderOneInput``) turns into data. The planning itself lives in
``batch_planning.py``.
"""
import logging
import numbers

import numpy as np
from torch.utils.data import Sampler

from dwi_ml.batching.batch_planning import (
    make_generator,
    plan_mixed_batches,
    plan_subject_batches,
    shard_plan,
)
from dwi_ml.data.splits import SAMPLED_SPLITS, Split
from dwi_ml.io_utils.arg_checks import check_choice, check_count_or_size, check_int
from dwi_ml.io_utils.errors import DwiMLUserError

logger = logging.getLogger(__name__)

BATCH_SIZE_UNITS = ("nb_streamlines", "length_mm")
DEFAULT_SEED = 1234


class BatchSampler:
    """Plan batches of streamline IDs of one streamline group, per split.

    ``sampler.for_split(split)`` is the torch ``Sampler`` of one split's
    batches (its own ``len`` and iterator). An epoch's batches are planned
    from ``(seed, split, epoch)`` alone,
    with a numpy Generator of their own, and cached: ``len()`` is exact,
    two samplers with the same seed yield the same batches, and a resumed
    run yields what the uninterrupted run would have. Validation batches
    do not depend on the epoch.

    In the default case (``nb_subjects_per_batch=None``) every batch mixes
    all subjects and every streamline is used exactly once per epoch. With
    ``nb_subjects_per_batch``, see
    :func:`dwi_ml.batching.batch_planning.plan_subject_batches`. The last
    partial batch is kept.

    With several processes (``world_size > 1``) batch sizes are GLOBAL: each
    batch of the shared plan is split into ``world_size`` parts and rank
    ``r`` yields part ``r`` (see
    :func:`dwi_ml.batching.batch_planning.shard_plan`). Every rank gets the
    same number of batches, and a resume may use another number of ranks.

    Parameters
    ----------
    dataset : MultiSubjectDataset
        A dataset whose data are loaded. Only the streamline lengths of the
        training and validation sets are read, once, here. It stays
        available as ``self.dataset`` but is not pickled (a copy holds
        None), so that the sampler pickles cheaply.
    streamline_group : str
        Name of the streamline group to sample.
    batch_size_training, batch_size_validation : int or float
        Budget of one batch, in ``batch_size_units``.
    batch_size_units : str
        "nb_streamlines" (an integer number of streamlines per batch) or
        "length_mm" (total length, in mm, of the streamlines of a batch; a
        single streamline longer than that gets a batch of its own).
    nb_subjects_per_batch : int or None
        Number of subjects drawn for a batch; None mixes all subjects. A
        validation set with fewer subjects uses all of them.
    cycles : int or None
        Number of consecutive batches keeping the same drawn subjects
        (default 1). Only with ``nb_subjects_per_batch``.
    seed : int
        Non-negative seed of every draw.
    rank, world_size : int
        This process's rank among ``world_size`` distributed processes.
    """

    def __init__(self, dataset, streamline_group, batch_size_training,
                 batch_size_validation, batch_size_units,
                 nb_subjects_per_batch=None, cycles=None, seed=DEFAULT_SEED,
                 rank=0, world_size=1):
        super().__init__()
        groups = list(dataset.streamline_groups)
        group_idx = groups.index(check_choice(
            "streamline_group", streamline_group, groups, "BatchSampler"))
        check_choice("batch_size_units", batch_size_units, BATCH_SIZE_UNITS,
                     owner="BatchSampler")
        in_streamlines = batch_size_units == "nb_streamlines"
        budgets = {
            split: float(check_count_or_size(
                f"batch_size_{split}", size, in_streamlines, "BatchSampler"))
            for split, size in ((Split.TRAINING, batch_size_training),
                                (Split.VALIDATION, batch_size_validation))}
        subsets = {Split.TRAINING: dataset.training_set,
                   Split.VALIDATION: dataset.validation_set}
        _check_subjects_options(nb_subjects_per_batch, cycles,
                                subsets[Split.TRAINING].nb_subjects)
        check_int("seed", seed, 0, owner="BatchSampler")
        check_int("world_size", world_size, 1, owner="BatchSampler")
        if not (isinstance(rank, numbers.Integral) and 0 <= rank < world_size):
            raise DwiMLUserError(
                f"BatchSampler argument rank: expected an integer in "
                f"[0, {world_size}) for world_size={world_size}, got {rank!r}.")

        self.dataset = dataset
        self.streamline_group = streamline_group
        self.batch_size_units = batch_size_units
        self.budgets = budgets
        self.nb_subjects_per_batch = nb_subjects_per_batch
        self.cycles = 1 if cycles is None else int(cycles)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.costs = {split: [_streamline_costs(subset, subj, group_idx,
                                                in_streamlines)
                              for subj in range(subset.nb_subjects)]
                      for split, subset in subsets.items()}
        _check_split_streamlines(dataset, streamline_group, self.costs)
        self.epoch = 0
        self._nb_yielded = dict.fromkeys(SAMPLED_SPLITS, 0)
        # Per split: (key, this rank's plan). One entry a split, so that
        # training and validation do not evict each other's plan.
        self._cached_plans = {}

    def nb_streamlines(self, split):
        """Streamlines of ``split`` (training or validation) in the group."""
        split = check_choice("split", split, SAMPLED_SPLITS,
                             owner="BatchSampler")
        return sum(len(costs) for costs in self.costs[Split(split)])

    def missing_validation_reason(self):
        """Why the validation split has no streamline, naming the HDF5
        file, e.g. "HDF5 file F: no validation subject"; None when it has
        some."""
        if self.nb_streamlines(Split.VALIDATION):
            return None
        subjects = self.dataset.validation_set.subjects
        if not subjects:
            return f"HDF5 file {self.dataset.hdf5_file}: no validation subject"
        return (f"HDF5 file {self.dataset.hdf5_file}, streamline group "
                f"'{self.streamline_group}': the validation subjects "
                f"({', '.join(subjects)}) hold no streamline")

    def for_split(self, split):
        """The batches of ``split`` (training or validation), as a Sampler.

        Views share this sampler's epoch, seed and position: a view made
        after :meth:`load_state_dict` resumes where the saved run stopped.
        """
        split = check_choice("split", split, SAMPLED_SPLITS,
                             owner="BatchSampler")
        return SplitBatches(self, Split(split))

    def set_epoch(self, epoch):
        """Select the epoch's draw of training batches.

        Changing the epoch restarts both splits from their first batch;
        setting the current epoch again keeps the position (a resumed run
        calls ``set_epoch`` with the epoch it was interrupted in).
        """
        check_int("epoch", epoch, 0, owner="BatchSampler")
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._nb_yielded = dict.fromkeys(SAMPLED_SPLITS, 0)

    def state_dict(self):
        """Return the position in the draws, as plain ints.

        ``nb_batches_yielded`` counts the batches this iterator handed out
        per split. A DataLoader with workers prefetches batches, so that
        count runs ahead of the batches a trainer finished; such a trainer
        should store its own count there.
        """
        return {"seed": self.seed, "epoch": self.epoch,
                "world_size": self.world_size,
                "nb_batches_yielded": [self._nb_yielded[split]
                                       for split in SAMPLED_SPLITS]}

    def load_state_dict(self, state):
        """Restore a position saved by :meth:`state_dict`.

        The next iteration yields exactly what the saved sampler would have
        yielded next. A state saved with another number of ranks keeps the
        seed and epoch but restarts the epoch (its position counted batches
        of another split).
        """
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._nb_yielded = dict(zip(SAMPLED_SPLITS, (
            int(count) for count in state["nb_batches_yielded"])))
        if state["world_size"] != self.world_size:
            logger.info("BatchSampler state saved with world_size=%d, resumed "
                        "with %d: restarting epoch %d.", state["world_size"],
                        self.world_size, self.epoch)
            self._nb_yielded = dict.fromkeys(SAMPLED_SPLITS, 0)
        self._cached_plans = {}

    def __getstate__(self):
        # The plan is rebuilt on demand and the lengths are all a copy
        # needs: the dataset may hold all volumes, or an h5py handle.
        state = self.__dict__.copy()
        state["_cached_plans"] = {}
        state["dataset"] = None
        return state

    def rank_plan(self, split):
        """Return this rank's batches of ``split`` in the current epoch."""
        epoch = self.epoch if split == Split.TRAINING else 0
        key = (self.seed, split, epoch)
        cached = self._cached_plans.get(split)
        if cached is None or cached[0] != key:
            plan = self._plan_epoch(split, make_generator(*key))
            rank_plan, nb_merged = shard_plan(plan, self.rank,
                                              self.world_size)
            if plan and not rank_plan:
                raise DwiMLUserError(
                    f"{split.value} set: expected at least one streamline per "
                    f"rank, found {sum(len(ids) for b in plan for _, ids in b)}"
                    f" streamline(s) for {self.world_size} ranks.")
            if nb_merged:
                logger.info(
                    "%s epoch %d: %d of %d batches, smaller than the %d "
                    "ranks, joined a neighbour.", split, epoch, nb_merged,
                    len(plan), self.world_size)
            cached = self._cached_plans[split] = (key, rank_plan)
        return cached[1]

    def _plan_epoch(self, split, rng):
        """Plan the global batches of ``split``."""
        costs = self.costs[split]
        budget = self.budgets[split]
        if self.nb_subjects_per_batch is None:
            return plan_mixed_batches(costs, budget, rng)
        return plan_subject_batches(costs, budget, self.nb_subjects_per_batch,
                                    self.cycles, rng)


class SplitBatches(Sampler):
    """The batches of one split of a :class:`BatchSampler`, this rank.

    ``len()`` is the number of batches of the current epoch; iteration
    starts after the batches already yielded (so it resumes where a loaded
    state stopped) and, once every batch was yielded, the next iteration
    starts the epoch over.
    """

    def __init__(self, batch_sampler, split):
        super().__init__()
        self.batch_sampler = batch_sampler
        self.split = split

    @property
    def nb_batches_yielded(self):
        """Batches of this split and epoch already yielded.

        The next iteration starts with batch number ``nb_batches_yielded``
        of this rank's plan (0 at the start of an epoch).
        """
        return self.batch_sampler._nb_yielded[self.split]

    def __len__(self):
        return len(self.batch_sampler.rank_plan(self.split))

    def __iter__(self):
        counts = self.batch_sampler._nb_yielded
        plan = self.batch_sampler.rank_plan(self.split)
        for index in range(counts[self.split], len(plan)):
            # Counted before the yield: a state saved while the consumer
            # holds batch ``index`` resumes with the following batch.
            counts[self.split] = index + 1
            yield plan[index]
        counts[self.split] = 0


def _streamline_costs(subset, subj_idx, group_idx, in_streamlines):
    """Cost of each streamline of one subject: 1, or its length in mm."""
    if in_streamlines:
        nb_streamlines = len(subset.get_lengths(subj_idx, group_idx))
        return np.ones(nb_streamlines, dtype=np.float64)
    return np.asarray(subset.get_lengths_mm(subj_idx, group_idx),
                      dtype=np.float64)


def _check_split_streamlines(dataset, streamline_group, costs):
    """Refuse a training split without a streamline (no batch to train
    on). Validation without one is the trainer's to warn of, with what it
    then follows."""
    subjects = dataset.training_set.subjects
    if not sum(len(subject_costs) for subject_costs in costs[Split.TRAINING]):
        raise DwiMLUserError(
            f"HDF5 file {dataset.hdf5_file}, streamline group "
            f"'{streamline_group}': expected at least one training "
            f"streamline, found none in the training subjects "
            f"({', '.join(subjects) or 'none'}).")


def _check_subjects_options(nb_subjects_per_batch, cycles, nb_subjects):
    if nb_subjects_per_batch is None:
        if cycles is not None:
            raise DwiMLUserError(
                f"BatchSampler argument cycles: only meaningful with "
                f"nb_subjects_per_batch, which is None; got cycles={cycles!r}.")
        return
    if (not isinstance(nb_subjects_per_batch, numbers.Integral)
            or not 1 <= nb_subjects_per_batch <= nb_subjects):
        raise DwiMLUserError(
            f"BatchSampler argument nb_subjects_per_batch: expected an integer "
            f"in [1, {nb_subjects}] (the training subjects), got "
            f"{nb_subjects_per_batch!r}.")
    if cycles is not None:
        check_int("cycles", cycles, 1, owner="BatchSampler")


def add_sampler_args(parser):
    """The script options of :class:`BatchSampler` (group "Batch sampler").

    ``--seed`` is shared with the rest of the run and added elsewhere.
    """
    group = parser.add_argument_group("Batch sampler")
    group.add_argument("--batch_size_training", type=float, default=100,
                       help="Budget of a training batch, in "
                            "--batch_size_units (global under torchrun).")
    group.add_argument("--batch_size_validation", type=float, default=100,
                       help="Budget of a validation batch, in "
                            "--batch_size_units.")
    group.add_argument("--batch_size_units", default="nb_streamlines",
                       choices=BATCH_SIZE_UNITS,
                       help="nb_streamlines: a number of streamlines per "
                            "batch; length_mm: their total length in mm.")
    group.add_argument("--nb_subjects_per_batch", type=int, default=None,
                       help="Subjects drawn for each batch; None mixes all "
                            "subjects.")
    group.add_argument("--cycles", type=int, default=None,
                       help="Consecutive batches keeping the same drawn "
                            "subjects (with --nb_subjects_per_batch); None "
                            "is 1.")
    return group
