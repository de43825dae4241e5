"""Length groups: the split of least cost, and padding that comes back."""
import itertools
import math

import numpy as np
import pytest
import torch

from dwi_ml.models import length_groups as length_groups_module
from dwi_ml.models.length_groups import PaddedGroups, length_groups


def split_cost(sorted_counts, starts, group_cost):
    stops = list(starts[1:]) + [len(sorted_counts)]
    return sum(sorted_counts[start] * (stop - start) + group_cost
               for start, stop in zip(starts, stops))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group_cost", [0, 7, 40])
def test_length_groups_is_the_cheapest_split(seed, group_cost):
    # Every split of 9 sequences (2 ** 8 of them), by brute force.
    rng = np.random.default_rng(seed)
    counts = np.sort(rng.integers(1, 30, 9))[::-1]
    starts = length_groups(counts, group_cost)
    assert starts[0] == 0 and starts == sorted(set(starts))
    best = min(split_cost(counts, (0,) + cut, group_cost)
               for size in range(9)
               for cut in itertools.combinations(range(1, 9), size))
    assert split_cost(counts, starts, group_cost) == best


def test_length_groups_extremes():
    counts = [9, 9, 5, 5, 5, 2]
    # Free groups: one per length; a costly group: all in one.
    assert length_groups(counts, 0) == [0, 2, 5]
    assert length_groups(counts, 1000) == [0]
    assert length_groups([], 10) == [0]


def test_padded_groups_round_trip_and_layout():
    counts = torch.tensor([3, 7, 1, 6, 2])
    groups = PaddedGroups(counts, group_cost=0)
    # Sorted 7 6 3 2 1, one group per length.
    assert groups.shapes == [(7, 1), (6, 1), (3, 1), (2, 1), (1, 1)]
    rows = torch.arange(float(counts.sum()))[:, None].repeat(1, 2)
    rows.requires_grad_(True)
    blocks = groups.pad(rows)
    # Sequence 1 (rows 3 - 9) is alone in the first block, sequence 0
    # (rows 0 - 2) in the third.
    np.testing.assert_array_equal(blocks[0][:, 0, 0].detach(), range(3, 10))
    np.testing.assert_array_equal(blocks[2][:, 0, 0].detach(), range(0, 3))
    back = groups.unpad(blocks)
    assert torch.equal(back, rows)
    weights = torch.randn_like(rows)
    (back * weights).sum().backward()
    assert torch.equal(rows.grad, weights)


def test_padded_groups_zero_padding_in_shared_blocks():
    counts = torch.tensor([4, 2, 3, 4])
    groups = PaddedGroups(counts, group_cost=100)
    assert groups.shapes == [(4, 4)]
    rows = torch.arange(1., 14.)[:, None]
    block = groups.pad(rows)[0][:, :, 0]
    # Columns by decreasing length, ties in batch order: 0, 3, 2, 1.
    expected = torch.tensor([[1., 10., 7., 5.],
                             [2., 11., 8., 6.],
                             [3., 12., 9., 0.],
                             [4., 13., 0., 0.]])
    assert torch.equal(block, expected)
    assert torch.equal(groups.unpad([block[:, :, None]]), rows)


def test_default_group_cost_follows_torch_threads(monkeypatch):
    monkeypatch.setattr(length_groups_module, "GROUP_COST", 1)
    monkeypatch.setattr(length_groups_module, "MULTITHREAD_GROUP_COST", 1000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        # A group of 1 point splits 9 9 5 5 5 2 at every length...
        assert length_groups([9, 9, 5, 5, 5, 2]) == [0, 2, 5]
        torch.set_num_threads(2)
        # ...one of 1000 points keeps them together.
        assert length_groups([9, 9, 5, 5, 5, 2]) == [0]
    finally:
        torch.set_num_threads(threads)


def test_one_group_on_cuda_and_at_infinite_cost():
    # On a GPU padding is nearly free and each cuDNN call is not.
    assert length_groups_module.default_group_cost("cuda") == math.inf
    assert length_groups_module.default_group_cost(torch.device("cuda:1")) \
        == math.inf
    assert length_groups_module.default_group_cost("cpu") \
        == length_groups_module.default_group_cost()
    assert length_groups([90, 9, 5, 5, 2], math.inf) == [0]
    assert length_groups([90, 9, 5, 5, 2], 0) == [0, 1, 2, 4]
    counts = torch.tensor([2, 90, 5])
    groups = PaddedGroups(counts, group_cost=math.inf)
    assert groups.shapes == [(90, 3)]
    rows = torch.arange(97.)[:, None]
    assert torch.equal(groups.unpad(groups.pad(rows)), rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_is_one_group():
    counts = torch.tensor([90, 9, 5, 5, 2], device="cuda")
    assert PaddedGroups(counts).shapes == [(90, 5)]
