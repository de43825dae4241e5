"""Tests of the batch planning functions and of BatchSampler.

The planning functions are tested on cost arrays; BatchSampler on a real
MultiSubjectDataset read from a tiny reference-layout HDF5 file.
"""
import pickle

import numpy as np
import pytest
import torch

from dwi_ml.batching.batch_planning import (
    cut_by_budget,
    group_by_subject,
    make_generator,
    plan_mixed_batches,
    plan_subject_batches,
    shard_plan,
)
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.data.dataset.multi_subject_dataset import MultiSubjectDataset
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5
from tests.tolerances import EPS64, rounding_atol

BUDGET_MM = 20.


def as_pairs(batch):
    """A batch as a hashable tuple, to compare plans."""
    return tuple((subject, tuple(ids.tolist())) for subject, ids in batch)


def check_plan(plan, costs_per_subject, budget):
    """Every streamline once, no empty batch, budgets respected."""
    # The planner cuts float64 cumulative sums of all costs: each rounds
    # once per item, in values below the total.
    all_costs = np.concatenate(costs_per_subject)
    slack = rounding_atol(all_costs.sum(), len(all_costs), eps=EPS64)
    used = []
    for batch in plan:
        assert len(batch) > 0
        subjects = [subject for subject, _ in batch]
        assert len(set(subjects)) == len(subjects)
        batch_cost = 0.
        for subject, ids in batch:
            assert ids.dtype == np.int64 and len(ids) > 0
            assert np.all(np.diff(ids) > 0)
            used.extend((subject, int(i)) for i in ids)
            batch_cost += costs_per_subject[subject][ids].sum()
        nb_streamlines = sum(len(ids) for _, ids in batch)
        if nb_streamlines > 1:
            assert batch_cost <= budget + slack
    expected = [(subject, i) for subject, costs in enumerate(costs_per_subject)
                for i in range(len(costs))]
    assert sorted(used) == expected


def mm_costs():
    """Lengths in mm of 4 subjects, one empty, one streamline over budget."""
    rng = np.random.default_rng(0)
    costs = [rng.uniform(1., 9., size=n) for n in (9, 0, 14, 5)]
    costs[2][6] = 3 * BUDGET_MM
    return costs


def count_costs():
    return [np.ones(n) for n in (9, 0, 14, 5)]


@pytest.mark.parametrize("units", ["count", "mm"])
@pytest.mark.parametrize("nb_subjects, cycles",
                         [(None, None), (1, 1), (2, 3), (3, 2)])
def test_plan_uses_every_streamline_once_within_budget(units, nb_subjects,
                                                       cycles):
    costs, budget = ((count_costs(), 4.) if units == "count"
                     else (mm_costs(), BUDGET_MM))
    rng = make_generator(3, "training", 0)
    if nb_subjects is None:
        plan = plan_mixed_batches(costs, budget, rng)
    else:
        plan = plan_subject_batches(costs, budget, nb_subjects, cycles, rng)
    check_plan(plan, costs, budget)
    assert all(len(batch) <= (nb_subjects or 4) for batch in plan)
    if units == "mm":
        assert ((2, (6,)),) in [as_pairs(batch) for batch in plan]


def test_grouped_batches_are_each_batch_grouped_by_subject():
    # Batches are built when read, from arrays over the whole epoch: each
    # must be its streamlines grouped by subject, ids sorted, as a plain
    # per-batch grouping gives them.
    rng = np.random.default_rng(5)
    counts = [7, 0, 30, 1, 12]
    subject_starts = np.concatenate(([0], np.cumsum(counts)))
    global_ids = rng.permutation(subject_starts[-1])
    bounds = np.array([0, 3, 4, 20, 41, 50])
    plan = group_by_subject(global_ids, bounds, subject_starts)
    assert len(plan) == len(bounds) - 1
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        expected = {}
        for global_id in sorted(global_ids[start:stop]):
            subject = int(np.searchsorted(subject_starts, global_id,
                                          side="right") - 1)
            expected.setdefault(subject, []).append(
                global_id - subject_starts[subject])
        assert as_pairs(plan[index]) == tuple(
            (subject, tuple(int(i) for i in ids))
            for subject, ids in expected.items())
        assert all(ids.dtype == np.int64 for _, ids in plan[index])
    assert as_pairs(plan[-1]) == as_pairs(plan[len(plan) - 1])
    assert [as_pairs(batch) for batch in plan[1:3]] == [
        as_pairs(plan[1]), as_pairs(plan[2])]
    with pytest.raises(IndexError):
        plan[len(plan)]


def test_cut_by_budget_keeps_last_partial_and_isolates_long_items():
    costs = np.array([1., 2., 3., 10., 1., 1.])
    assert cut_by_budget(costs, 5.).tolist() == [0, 2, 3, 4, 6]
    assert cut_by_budget(np.ones(10), 4.).tolist() == [0, 4, 8, 10]
    assert cut_by_budget(np.zeros(0), 4.).tolist() == [0]


def test_mixed_plan_of_counts_has_full_batches_then_partial():
    plan = plan_mixed_batches(count_costs(), 4., make_generator(0, "training", 0))
    sizes = [sum(len(ids) for _, ids in batch) for batch in plan]
    assert sizes == [4] * 7


def test_subject_plan_keeps_subjects_for_cycles():
    costs = [np.ones(30) for _ in range(3)]
    plan = plan_subject_batches(costs, 4., 1, 3,
                                make_generator(0, "training", 0))
    check_plan(plan, costs, 4.)
    subjects = [batch[0][0] for batch in plan]
    assert all(len(batch) == 1 for batch in plan)
    # 3 batches of 4 never exhaust a subject of 30: runs of 3 batches.
    assert subjects[0] == subjects[1] == subjects[2]
    assert subjects[3] == subjects[4] == subjects[5]


def test_plan_of_no_streamlines_is_empty():
    costs = [np.zeros(0), np.zeros(0)]
    assert plan_mixed_batches(costs, 4., make_generator(0, "training", 0)) == []
    assert plan_subject_batches(costs, 4., 1, 1,
                                make_generator(0, "training", 0)) == []


def test_generators_are_independent_of_global_state():
    first = make_generator(5, "training", 0).random(4)
    np.random.seed(99)
    torch.manual_seed(99)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    assert np.array_equal(make_generator(5, "training", 0).random(4), first)
    assert not np.array_equal(make_generator(5, "training", 1).random(4), first)
    assert not np.array_equal(make_generator(5, "validation", 0).random(4),
                              first)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_shard_plan_splits_each_global_batch():
    plan = [[(0, np.arange(5)), (2, np.arange(10, 12))], [(1, np.array([7]))],
            [(0, np.arange(20, 24))]]
    shares = [shard_plan(plan, rank, 3) for rank in range(3)]
    # The one-streamline batch cannot give each of 3 ranks one: it joins
    # the next batch (it was dropped, the same streamline every epoch of
    # validation).
    assert [nb_merged for _, nb_merged in shares] == [1, 1, 1]
    assert [len(share) for share, _ in shares] == [2, 2, 2]
    joined = [(1, np.array([7])), (0, np.arange(20, 24))]
    for batch_idx, global_batch in ((0, plan[0]), (1, joined)):
        parts = [share[batch_idx] for share, _ in shares]
        assert all(parts)
        merged = [(subj, int(i)) for part in parts for subj, ids in part
                  for i in ids]
        assert merged == [(subj, int(i)) for subj, ids in global_batch
                          for i in ids]
        sizes = [sum(len(ids) for _, ids in part) for part in parts]
        assert max(sizes) - min(sizes) <= 1
    assert shard_plan(plan, 0, 1) == (plan, 0)


def test_shard_plan_joins_small_batches_to_their_neighbours():
    def streamlines(batches):
        return sorted((subj, int(i)) for batch in batches
                      for subj, ids in batch for i in ids)

    # A last batch too small joins the one before; same subject's ids are
    # one entry.
    plan = [[(0, np.arange(4))], [(1, np.arange(3))], [(1, np.array([9]))]]
    shares = [shard_plan(plan, rank, 2)[0] for rank in range(2)]
    assert [len(share) for share in shares] == [2, 2]
    assert [as_pairs(part) for part in (shares[0][1], shares[1][1])] == [
        ((1, (0, 1)),), ((1, (2, 9)),)]
    # Batches of one streamline for 2 ranks: joined in pairs (the fifth
    # joins the last pair), none lost.
    singles = [[(0, np.array([i]))] for i in range(5)]
    shares = [shard_plan(singles, rank, 2) for rank in range(2)]
    assert [nb for _, nb in shares] == [3, 3]
    assert [[as_pairs(part) for part in share] for share, _ in shares] == [
        [((0, (0,)),), ((0, (2, 3)),)], [((0, (1,)),), ((0, (4,)),)]]
    assert streamlines(shares[0][0] + shares[1][0]) == streamlines(singles)
    # Fewer streamlines in the epoch than ranks: no batch.
    assert shard_plan(singles[:2], 0, 3) == ([], 2)


# --- BatchSampler on a real MultiSubjectDataset -----------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 training subjects (one without streamlines), 2 validation ones.

    Subject 'train_b' holds one zigzag streamline of about 126 mm, longer
    than the BUDGET_MM length budget.
    """
    rng = np.random.default_rng(7)
    subjects = {name: make_example_subject(rng, nb_streamlines=n)
                for name, n in (("train_a", 11), ("train_b", 17),
                                ("train_c", 1), ("valid_a", 6),
                                ("valid_b", 9))}
    subjects["train_c"]["streamlines"].streamlines = []
    zigzag = np.zeros((10, 3), dtype=np.float32) + 4.
    zigzag[::2, 0], zigzag[1::2, 0] = .5, 7.5
    subjects["train_b"]["streamlines"].streamlines[4] = zigzag
    path = tmp_path_factory.mktemp("sampler") / "data.hdf5"
    write_reference_hdf5(path, subjects,
                         training_subjs=["train_b", "train_a", "train_c"],
                         validation_subjs=["valid_a", "valid_b"])
    loaded = MultiSubjectDataset(path, lazy=True)
    loaded.load_data(load_testing=False)
    return loaded


def make_sampler(dataset, units="nb_streamlines", **options):
    batch_size = 4 if units == "nb_streamlines" else BUDGET_MM
    arguments = dict(streamline_group="streamlines",
                     batch_size_training=batch_size,
                     batch_size_validation=batch_size,
                     batch_size_units=units)
    arguments.update(options)
    return BatchSampler(dataset, **arguments)


def dataset_costs(subset, units):
    return [np.ones(len(subset.get_lengths(s, 0)))
            if units == "nb_streamlines" else subset.get_lengths_mm(s, 0)
            for s in range(subset.nb_subjects)]


def epoch_pairs(sampler, split="training"):
    return [as_pairs(batch) for batch in sampler.for_split(split)]


@pytest.mark.parametrize("units", ["nb_streamlines", "length_mm"])
@pytest.mark.parametrize("options", [{}, {"nb_subjects_per_batch": 1},
                                     {"nb_subjects_per_batch": 2,
                                      "cycles": 2}])
def test_sampler_epoch_uses_every_streamline_once(dataset, units, options):
    sampler = make_sampler(dataset, units, **options)
    budget = 4 if units == "nb_streamlines" else BUDGET_MM
    for split, subset in (("training", dataset.training_set),
                          ("validation", dataset.validation_set)):
        batches = list(sampler.for_split(split))
        assert len(sampler.for_split(split)) == len(batches)
        check_plan(batches, dataset_costs(subset, units), budget)
    if units == "length_mm":
        # The zigzag of train_b (subject 1, streamline 4) is alone.
        assert dataset.training_set.get_lengths_mm(1, 0)[4] > BUDGET_MM
        assert ((1, (4,)),) in epoch_pairs(sampler)
    else:
        assert all(len(ids) <= 4 for batch in sampler.for_split("training")
                   for _, ids in batch)


def test_sampler_epochs_seeds_and_validation(dataset):
    sampler, twin = make_sampler(dataset), make_sampler(dataset)
    other_seed = make_sampler(dataset, seed=99)
    first = epoch_pairs(sampler)
    assert first == epoch_pairs(twin)
    assert first != epoch_pairs(other_seed)
    sampler.set_epoch(1)
    assert epoch_pairs(sampler) != first
    validations = []
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        validations.append(epoch_pairs(sampler, "validation"))
    assert validations[0] == validations[1] == validations[2]


def test_each_split_keeps_its_plan_while_the_other_is_used(dataset):
    # One cached plan for both splits: a trainer alternating training and
    # validation re-planned each epoch 2 - 4 times (seconds to minutes at
    # 1000 subjects). The same plan object comes back now.
    sampler = make_sampler(dataset)
    training = sampler.rank_plan(Split.TRAINING)
    validation = sampler.rank_plan(Split.VALIDATION)
    assert len(sampler.for_split("training")) == len(training)
    assert sampler.rank_plan(Split.TRAINING) is training
    assert sampler.rank_plan(Split.VALIDATION) is validation
    sampler.set_epoch(1)
    assert sampler.rank_plan(Split.TRAINING) is not training
    # Validation batches do not change with the epoch.
    assert sampler.rank_plan(Split.VALIDATION) is validation


def test_sampler_resumes_mid_epoch_from_saved_state(dataset, tmp_path):
    options = dict(nb_subjects_per_batch=1, cycles=2, seed=5)
    uninterrupted = make_sampler(dataset, **options)
    uninterrupted.set_epoch(3)
    epoch_3 = epoch_pairs(uninterrupted)
    uninterrupted.set_epoch(4)
    epoch_4 = epoch_pairs(uninterrupted)

    interrupted = make_sampler(dataset, **options)
    interrupted.set_epoch(3)
    iterator = iter(interrupted.for_split("training"))
    consumed = [as_pairs(next(iterator)) for _ in range(3)]
    assert interrupted.for_split("training").nb_batches_yielded == 3
    torch.save(interrupted.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)

    resumed = make_sampler(dataset, nb_subjects_per_batch=1, cycles=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert resumed.for_split("training").nb_batches_yielded == 3
    remaining = epoch_pairs(resumed)
    assert resumed.for_split("training").nb_batches_yielded == 0
    assert consumed + remaining == epoch_3
    assert len(remaining) == len(epoch_3) - 3
    resumed.set_epoch(4)
    assert epoch_pairs(resumed) == epoch_4


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_shards_every_global_batch(dataset, world_size):
    global_plan = epoch_pairs(make_sampler(dataset))
    shards = [make_sampler(dataset, rank=rank, world_size=world_size)
              for rank in range(world_size)]
    per_rank = [epoch_pairs(shard) for shard in shards]
    assert len({len(shard.for_split("training")) for shard in shards}) == 1
    assert len({len(batches) for batches in per_rank}) == 1
    def streamlines(batch):
        return sorted((subj, i) for subj, ids in batch for i in ids)

    kept = [sorted(pair for part in parts for pair in streamlines(part))
            for parts in zip(*per_rank)]
    full = [streamlines(batch) for batch in global_plan]
    assert kept == full and len(kept) == len(global_plan)


class IdentityDataset(torch.utils.data.Dataset):
    """Map-style dataset returning each (subject, ids) entry as it is."""

    def __getitem__(self, entry):
        return entry


def test_sampler_feeds_dataloader_and_pickles(dataset):
    sampler = make_sampler(dataset, "length_mm", nb_subjects_per_batch=2)
    sampler.set_epoch(2)
    expected = epoch_pairs(sampler)
    loader = torch.utils.data.DataLoader(IdentityDataset(),
                                         batch_sampler=sampler.for_split(
                                             "training"),
                                         collate_fn=list)
    assert len(loader) == len(expected)
    assert [as_pairs(batch) for batch in loader] == expected
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy.dataset is None and sampler.dataset is dataset
    assert epoch_pairs(copy) == expected


@pytest.mark.parametrize("options, argument", [
    ({"streamline_group": "bundles"}, "streamline_group"),
    ({"batch_size_units": "nb_points"}, "batch_size_units"),
    ({"batch_size_training": 0}, "batch_size_training"),
    ({"batch_size_validation": -3}, "batch_size_validation"),
    ({"batch_size_training": 2.5}, "batch_size_training"),
    ({"nb_subjects_per_batch": 0}, "nb_subjects_per_batch"),
    ({"nb_subjects_per_batch": 4}, "nb_subjects_per_batch"),
    ({"cycles": 2}, "cycles"),
    ({"nb_subjects_per_batch": 1, "cycles": 0}, "cycles"),
    ({"rank": 2, "world_size": 2}, "rank"),
    ({"rank": -1}, "rank"),
    ({"world_size": 0}, "world_size"),
    ({"seed": -1}, "seed"),
])
def test_sampler_rejects_bad_arguments(dataset, options, argument):
    with pytest.raises(DwiMLUserError, match=f"argument {argument}:") as error:
        make_sampler(dataset, **options)
    assert "\n" not in str(error.value)


def test_sampler_error_lists_groups_and_bad_context(dataset):
    with pytest.raises(DwiMLUserError, match=r"\['streamlines'\], got 'bundles'"):
        make_sampler(dataset, streamline_group="bundles")
    with pytest.raises(DwiMLUserError, match=r"positive length in mm, got 0\.$"):
        make_sampler(dataset, "length_mm", batch_size_training=0.)
    sampler = make_sampler(dataset)
    assert len(make_sampler(dataset, batch_size_training=4.).for_split(
        "training")) == len(sampler.for_split("training"))
    with pytest.raises(DwiMLUserError, match="argument split:"):
        sampler.for_split("testing")
    # A state from 2 ranks restarts the saved epoch on 1 rank.
    two_ranks = make_sampler(dataset, world_size=2)
    two_ranks.set_epoch(3)
    next(iter(two_ranks.for_split("training")))
    sampler.load_state_dict(two_ranks.state_dict())
    assert sampler.epoch == 3
    assert sampler.for_split("training").nb_batches_yielded == 0


def test_sampler_refuses_training_subjects_without_streamlines(tmp_path):
    # Before: an epoch of no batch, and a trainer that "trained" for every
    # epoch without one update, its best model the untrained one.
    rng = np.random.default_rng(2)
    subjects = {name: make_example_subject(rng, nb_streamlines=n)
                for name, n in (("t1", 5), ("t2", 5), ("v1", 4))}
    for name in ("t1", "t2"):
        subjects[name]["streamlines"].streamlines = []
    path = tmp_path / "data.hdf5"
    write_reference_hdf5(path, subjects, training_subjs=["t1", "t2"],
                         validation_subjs=["v1"])
    loaded = MultiSubjectDataset(path)
    loaded.load_data()
    with pytest.raises(DwiMLUserError) as error:
        make_sampler(loaded)
    assert str(error.value) == (
        f"HDF5 file {path}, streamline group 'streamlines': expected at "
        "least one training streamline, found none in the training "
        "subjects (t1, t2).")


@pytest.mark.parametrize("units, budget", [("nb_streamlines", 1),
                                           ("length_mm", 1.)])
def test_batches_too_small_for_every_rank_are_joined(dataset, units,
                                                     budget):
    # Batches of one streamline for 2 ranks: before, every batch was
    # dropped (a run under torchrun trained on nothing); now each pair of
    # them is one global batch, and every streamline is used.
    shards = [make_sampler(dataset, units, batch_size_training=budget,
                           batch_size_validation=budget, rank=rank,
                           world_size=2) for rank in range(2)]
    single = make_sampler(dataset, units, batch_size_training=budget,
                          batch_size_validation=budget)
    for split in ("training", "validation"):
        per_rank = [epoch_pairs(shard, split) for shard in shards]
        assert len(per_rank[0]) == len(per_rank[1])
        assert all(len(part) for batches in per_rank for part in batches)
        used = sorted((subj, i) for batches in per_rank for batch in batches
                      for subj, ids in batch for i in ids)
        assert used == sorted((subj, i) for batch in epoch_pairs(
            single, split) for subj, ids in batch for i in ids)


def test_sampler_refuses_fewer_streamlines_than_ranks(dataset):
    sampler = make_sampler(dataset, world_size=16)
    with pytest.raises(DwiMLUserError) as error:
        len(sampler.for_split("validation"))
    assert str(error.value) == (
        "validation set: expected at least one streamline per rank, found 15 "
        "streamline(s) for 16 ranks.")
