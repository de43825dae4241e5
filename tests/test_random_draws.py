"""Keyed random draws of 'prob' tracking: the hash, the uniforms, the
normals and the inverse-CDF classes, against numpy and their moments."""
import numpy as np
import pytest
import torch

from dwi_ml.models.direction_getters.random_draws import (
    GeneratorDraws,
    KeyedDraws,
    as_draws,
    mix32,
    sample_classes,
    words_to_uniforms,
)

NB_DRAWS = 20000


def numpy_mix32(words):
    """The mixer in uint32 arithmetic, whose products wrap modulo 2 ** 32."""
    words = np.asarray(words, dtype=np.uint32)
    words = words ^ (words >> np.uint32(16))
    words = words * np.uint32(0x21F0AAAD)
    words = words ^ (words >> np.uint32(15))
    words = words * np.uint32(0x735A2D97)
    return words ^ (words >> np.uint32(15))


def draws(seed=5, nb_rows=NB_DRAWS, step=3, first_key=0):
    return KeyedDraws.for_keys(
        seed, torch.arange(first_key, first_key + nb_rows), step)


def uniforms(draws_, nb_columns, like):
    return draws_.draw(like, nb_uniforms=nb_columns)[0]


LIKE32 = torch.zeros(1, dtype=torch.float32)
LIKE64 = torch.zeros(1, dtype=torch.float64)


def test_mix32_is_the_uint32_hash_without_overflow():
    words = np.concatenate([
        [0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 2, 2 ** 32 - 1],
        np.random.default_rng(0).integers(0, 2 ** 32, 10000)])
    expected = numpy_mix32(words).astype(np.int64)
    mixed = mix32(torch.tensor(words, dtype=torch.int64))
    np.testing.assert_array_equal(mixed.numpy(), expected)
    # Python ints give the same words (the tracker hashes the seed so).
    assert [mix32(int(word)) for word in words[:6]] == list(expected[:6])
    # A bijection of 32-bit words: no two of these 10006 collide.
    assert len(np.unique(expected)) == len(np.unique(words))


@pytest.mark.parametrize("like", [LIKE32, LIKE64], ids=["float32", "float64"])
def test_uniforms_moments_and_open_interval(like):
    values = uniforms(draws(), 3, like)
    assert values.shape == (NB_DRAWS, 3) and values.dtype == like.dtype
    assert values.min() > 0 and values.max() < 1
    samples = values.double().flatten().numpy()
    count = len(samples)
    # Mean 1/2, variance 1/12; the variance of (x - 1/2) ** 2 is
    # 1/80 - 1/144 for a uniform.
    assert abs(samples.mean() - 0.5) < 4 * np.sqrt(1 / 12 / count)
    assert abs(samples.var() - 1 / 12) < 4 * np.sqrt((1 / 80 - 1 / 144)
                                                     / count)


def test_uniforms_are_independent_across_rows_steps_and_columns():
    first = uniforms(draws(), 2, LIKE64)
    next_step = uniforms(draws(step=4), 1, LIKE64)[:, 0]
    pairs = {"next row": (first[:-1, 0], first[1:, 0]),
             "next column": (first[:, 0], first[:, 1]),
             "next step": (first[:, 0], next_step)}
    for name, (a, b) in pairs.items():
        correlation = np.corrcoef(a.numpy(), b.numpy())[0, 1]
        # Independent: the correlation is about N(0, 1 / n).
        assert abs(correlation) < 4 / np.sqrt(len(a)), name


def test_extreme_words_give_uniforms_inside_the_interval():
    # Mantissas 0 and 2 ** 52 - 1 (high word all ones, low word with its
    # 20 low bits set).
    high, low = torch.tensor([0, 2 ** 32 - 1]), torch.tensor([0, 2 ** 20 - 1])
    exact = words_to_uniforms(high, low, torch.float64)
    assert exact.tolist() == [2.0 ** -53, 1 - 2.0 ** -53]
    # In float32, 1 - 2 ** -53 would round to 1: clamped to the float32
    # below 1.
    narrow = words_to_uniforms(high, low, torch.float32)
    assert narrow.tolist() == [2.0 ** -53, 1 - 2.0 ** -24]


def test_normals_moments():
    values = draws().draw(LIKE64, nb_normals=3)[1]
    assert values.shape == (NB_DRAWS, 3)
    samples = values.flatten().numpy()
    count = len(samples)
    # Mean 0 (variance 1 / n), variance 1 (variance 2 / n).
    assert abs(samples.mean()) < 4 * np.sqrt(1 / count)
    assert abs(samples.var() - 1) < 4 * np.sqrt(2 / count)
    assert abs(np.corrcoef(values[:, 0], values[:, 2])[0, 1]) < 4 / np.sqrt(
        NB_DRAWS)


def test_draws_depend_on_seed_key_step_and_call_order_only():
    reference = draws(nb_rows=100)
    first, second = uniforms(reference, 2, LIKE64), uniforms(reference, 1, LIKE64)
    # The same rows among others (keys 40..59 of 0..99), alone, give the
    # same values: a row's draws do not depend on the others.
    subset = KeyedDraws.for_keys(5, torch.arange(40, 60), 3)
    assert torch.equal(uniforms(subset, 2, LIKE64), first[40:60])
    assert torch.equal(uniforms(subset, 1, LIKE64), second[40:60])
    # A later call takes the next columns: not the first ones again.
    assert not torch.equal(second[:, 0], first[:, 0])
    for other in (draws(seed=6, nb_rows=100), draws(step=4, nb_rows=100),
                  draws(nb_rows=100, first_key=100)):
        assert not torch.isin(uniforms(other, 2, LIKE64), first).any()


def test_keys_above_32_bits_are_distinct():
    keys = torch.tensor([7, 7 + 2 ** 32, 7 + 2 ** 40])
    values = uniforms(KeyedDraws.for_keys(5, keys, 0), 1, LIKE64)[:, 0]
    assert len(torch.unique(values)) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_uniforms_on_cuda():
    keys = torch.arange(5000)
    on_cpu = uniforms(KeyedDraws.for_keys(5, keys, 3), 3, LIKE64)
    on_cuda = uniforms(KeyedDraws.for_keys(5, keys.cuda(), 3), 3,
                       LIKE64.cuda())
    assert torch.equal(on_cuda.cpu(), on_cpu)


def test_classes_follow_the_probabilities():
    probabilities = torch.zeros(NB_DRAWS, 8, dtype=torch.float32)
    expected = np.array([0.5, 0., 0.3, 0.15, 0., 0.04, 0.01, 0.])
    probabilities[:] = torch.tensor(expected)
    classes = sample_classes(probabilities, uniforms(draws(), 1, LIKE32))
    frequencies = np.bincount(classes.numpy(), minlength=8) / NB_DRAWS
    standard_errors = np.sqrt(expected * (1 - expected) / NB_DRAWS)
    assert np.all(np.abs(frequencies - expected) <= 4 * standard_errors)
    # Classes of probability 0 (the last one too) are never drawn.
    assert frequencies[expected == 0].sum() == 0


def test_a_uniform_scaled_to_the_sum_takes_the_last_class_of_non_zero_probability():
    # A uniform that rounds to 1 times the row's sum (here: 1) lands on the
    # sum; trailing classes of probability 0 are skipped, and a value equal
    # to a cumulative sum takes the class that ends there.
    probabilities = torch.tensor([[0.25, 0.75, 0.], [0.3, 0.7, 0.],
                                  [0.5, 0., 0.5]])
    assert sample_classes(probabilities,
                          torch.ones(3, 1)).tolist() == [1, 1, 2]
    assert sample_classes(probabilities,
                          torch.full((3, 1), 0.25)).tolist() == [0, 0, 0]
    assert sample_classes(probabilities[2:], torch.tensor([[0.5]])).tolist() \
        == [0]


def test_generator_uniforms_are_never_0():
    # torch.rand returns 0 now and then (1 in 2^24 in float32, 1 in 2^11 in
    # float16, where it is seen): inverse CDF sampling then picked a class
    # of probability 0.
    like = torch.zeros(4096, 1, dtype=torch.float16)
    raw = torch.rand((4096, 1), generator=torch.Generator().manual_seed(0),
                     dtype=torch.float16)
    drawn = uniforms(GeneratorDraws(torch.Generator().manual_seed(0)), 1,
                     like)
    assert (raw == 0).any() and (drawn > 0).all()
    assert torch.equal(drawn[raw > 0], raw[raw > 0])
    classes = sample_classes(torch.tensor([[0.0, 1.0]]).expand(4096, 2),
                             drawn.float())
    assert (classes == 1).all()


def test_generator_draws_are_the_torch_streams():
    like = torch.zeros(50, 2)
    wrapped = as_draws(torch.Generator().manual_seed(3))
    assert isinstance(wrapped, GeneratorDraws)
    expected = torch.rand((50, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(uniforms(wrapped, 2, like), expected)
    keyed = draws()
    assert as_draws(keyed) is keyed
