"""Random draws of 'prob' tracking: keyed by streamline, not by batch.

A sampler asks a draws object for its uniforms and normals (``draw``), one
row per point to sample. :class:`KeyedDraws` computes them from (run seed,
the row's key, the step, the column) with an integer hash, as counter-based
generators (Philox, Random123) do: a streamline's draws depend only on the
run's seed and its key (the tracker's: its seed's index in the run and the
half), not on the batch it shares, the batch size or the order of the
work. The hash uses int64 tensor operations that never overflow, so the
integers are the same on CPU and CUDA; the uniforms are cast to the
model's dtype, and a float32 model's later arithmetic rounds as its device
does.

:class:`GeneratorDraws` wraps a ``torch.Generator`` (or torch's global
stream) for callers that pass one: ``torch.rand`` and ``torch.randn``.
:func:`sample_classes` turns a uniform into a class by inverse CDF, for
both.

Hash
    ``mix32`` is a 32-bit integer mixer (two xor-shift-multiply rounds,
    constants of C. Wellons' hash-prospector). Both constants are below
    2 ** 31, so a product of a 32-bit value stays below 2 ** 63; values
    stay non-negative, so ``>>`` is a logical shift. A key's word
    (:func:`key_words`, once per streamline) mixes the key with the seed;
    at each step, each column's two words mix the key's word with a word
    of (seed, step, column). Within a step and column, distinct keys below
    2 ** 32 get distinct words (``mix32`` is a bijection); two draws of
    other steps or columns share a word with probability 2 ** -32, and a
    whole uniform with probability 2 ** -64.

Uniforms
    52 bits ``m`` of the two words give ``(2 m + 1) 2 ** -53`` in float64:
    odd multiples of 2 ** -53, exact and strictly inside (0, 1). Cast to
    float32 they are clamped to the largest float32 below 1.
"""
import math

import torch

MASK32 = 0xFFFFFFFF
_STEP_SALT = 0x9E3779B9
_COLUMN_SALT = 0x85EBCA6B


def mix32(words):
    """Mix 32-bit words (a Python int, or an int64 tensor of values in
    [0, 2 ** 32)) into 32-bit words: the same values for both."""
    words = words ^ (words >> 16)
    words = (words * 0x21F0AAAD) & MASK32
    words = words ^ (words >> 15)
    words = (words * 0x735A2D97) & MASK32
    return words ^ (words >> 15)


def _seed_words(seed):
    """Two 32-bit words of the run seed (modulo 2 ** 64)."""
    first = mix32(mix32(seed & MASK32) ^ ((seed >> 32) & MASK32))
    return first, mix32(first ^ _STEP_SALT)


def key_words(seed, keys):
    """The 32-bit word of each key in the run of ``seed``, int64 (N,).

    ``keys`` (int64 (N,)) are non-negative: the tracker's are
    ``2 * index + half``, ``index`` the seed's in the run and ``half`` 0
    forward, 1 backward. A streamline's word is computed once and serves
    all its steps.
    """
    first, _ = _seed_words(int(seed))
    return mix32((keys & MASK32) ^ first) ^ (keys >> 32)


def words_to_uniforms(high_words, low_words, dtype):
    """Uniforms in (0, 1) of ``dtype`` from pairs of 32-bit words (int64
    tensors): ``(2 m + 1) 2 ** -53`` for the 52 bits ``m`` of
    ``high * 2 ** 20 xor low``, exact in float64; in a narrower dtype
    clamped inside (0, 1)."""
    mantissas = (high_words << 20) ^ low_words
    uniforms = mantissas.to(torch.float64).mul_(2.0 ** -52).add_(2.0 ** -53)
    if dtype == torch.float64:
        return uniforms
    info = torch.finfo(dtype)
    return uniforms.to(dtype).clamp_(info.tiny, 1 - info.eps / 2)


class KeyedDraws:
    """The draws of one tracking step, one row per key.

    Parameters
    ----------
    seed : int
        The run's seed (taken modulo 2 ** 64).
    words : torch.Tensor, int64 (N,)
        :func:`key_words` of the rows' keys, for this ``seed``.
    step : int
        The step, >= 0.

    Notes
    -----
    Successive calls of one step take the next columns: a sampler's draws
    are those of its calls in order, whatever the other rows.
    """

    def __init__(self, seed, words, step):
        _, second = _seed_words(int(seed))
        self._step_word = mix32(mix32(int(step) & MASK32) ^ second)
        self._words = words
        self._next_column = 0

    @classmethod
    def for_keys(cls, seed, keys, step):
        """The draws of ``keys`` (int64 (N,), non-negative) at ``step``."""
        return cls(seed, key_words(seed, keys), step)

    def draw(self, like, nb_uniforms=0, nb_normals=0):
        """(N, nb_uniforms) uniforms in (0, 1) and (N, nb_normals)
        standard normals (Box-Muller: two uniforms give two normals), of
        ``like``'s dtype, from one pass over the rows."""
        nb_pairs = math.ceil(nb_normals / 2)
        # Computed as (columns, N): each column's values are contiguous,
        # where torch's vectorised log, cos and sin apply.
        uniforms = self._uniforms(nb_uniforms + 2 * nb_pairs, like.dtype)
        gaussian = uniforms[nb_uniforms:]
        radii = torch.log(gaussian[:nb_pairs]).mul_(-2).sqrt_()
        angles = 2 * math.pi * gaussian[nb_pairs:]
        normals = torch.cat([radii * torch.cos(angles),
                             radii * torch.sin(angles)])
        return uniforms[:nb_uniforms].T, normals[:nb_normals].T

    def _uniforms(self, nb_columns, dtype):
        """(nb_columns, N) uniforms of the next columns."""
        start = self._next_column
        self._next_column += nb_columns
        column_words = torch.tensor(
            [mix32(self._step_word ^ mix32(column ^ _COLUMN_SALT))
             for column in range(2 * start, 2 * self._next_column)],
            dtype=torch.int64, device=self._words.device)
        words = mix32(column_words[:, None] ^ self._words)
        return words_to_uniforms(words[0::2], words[1::2], dtype)


class GeneratorDraws:
    """Draws from a ``torch.Generator`` (None: torch's global stream of the
    rows' device); they depend on the batch. A generator draws on its own
    device (torch refuses a CPU generator for CUDA tensors) and the draws
    are moved to the rows' device."""

    def __init__(self, generator=None):
        self.generator = generator

    def draw(self, like, nb_uniforms=0, nb_normals=0):
        """(N, nb_uniforms) uniforms in (0, 1) (``torch.rand``, whose 0 is
        raised to the smallest normal float: inverse CDF sampling would
        pick a class of probability 0 there) and (N, nb_normals) standard
        normals (``torch.randn``), on ``like``'s device."""
        device = (like.device if self.generator is None
                  else self.generator.device)
        options = {"generator": self.generator, "device": device,
                   "dtype": like.dtype}
        uniforms = torch.rand((len(like), nb_uniforms), **options).clamp_(
            min=torch.finfo(like.dtype).tiny)
        return (uniforms.to(like.device),
                torch.randn((len(like), nb_normals), **options).to(like.device))


def as_draws(source):
    """A draws object from ``source``: :class:`KeyedDraws` or
    :class:`GeneratorDraws` as they are, a ``torch.Generator`` or None
    wrapped in a :class:`GeneratorDraws`."""
    if isinstance(source, (KeyedDraws, GeneratorDraws)):
        return source
    return GeneratorDraws(source)


def sample_classes(probabilities, uniforms):
    """Index of the class of each row drawn by inverse CDF, int64 (N,).

    Parameters
    ----------
    probabilities : torch.Tensor (N, C)
        Non-negative; their sum need not be 1 (the uniform is scaled to
        it).
    uniforms : torch.Tensor (N, 1)
        In (0, 1).
    """
    cdf = torch.cumsum(probabilities, dim=1)
    # Class i for a value in (cdf[i - 1], cdf[i]]: a class of probability 0
    # has an empty interval, and a value rounded up to the sum (u < 1, so
    # never above it) takes the last class of non-zero probability.
    classes = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=False)
    return classes.squeeze(1).clamp_(max=probabilities.shape[1] - 1)
