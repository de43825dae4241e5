"""Random draws of 'prob' tracking: keyed by streamline, not by batch.

A sampler asks a draws object for ``uniforms`` or ``normals``, one row per
point to sample. :class:`KeyedDraws` computes them from (run seed, the
row's key, the step, the column) with an integer hash, as counter-based
generators (Philox, Random123) do: a streamline's draws depend only on the
run's seed and its key (the tracker's: its seed's index in the run and the
half), not on the batch it shares, the batch size or the order of the
work. The hash uses int64 tensor operations that never overflow, so the
integers are the same on CPU and CUDA; the uniforms are cast to the
model's dtype, and a float32 model's later arithmetic rounds as its device
does.

:class:`GeneratorDraws` wraps a ``torch.Generator`` (or torch's global
stream) for callers that pass one: ``torch.rand`` and ``torch.randn``.

Hash
    ``mix32`` is a 32-bit integer mixer (two xor-shift-multiply rounds,
    constants of C. Wellons' hash-prospector). Both constants are below
    2 ** 31, so a product of a 32-bit value stays below 2 ** 63; values
    stay non-negative, so ``>>`` is a logical shift. The row's word at a
    step mixes its key with two words of (seed, step) (two rounds, so that
    no xor-difference of keys repeats across steps); each column's two
    32-bit words mix the row's word with a word of the column. Within a
    step distinct keys below 2 ** 32 get distinct words (``mix32`` is a
    bijection); across steps and columns, two draws share a word with
    probability 2 ** -32.

Uniforms
    52 bits of the two words ``m`` give ``(2 m + 1) 2 ** -53`` in float64:
    odd multiples of 2 ** -53, exact and strictly inside (0, 1). Cast to
    float32 they are clamped to the largest float32 below 1.
"""
import math

import torch

MASK32 = 0xFFFFFFFF
_ROW_SALT = 0x9E3779B9
_COLUMN_SALT = 0x85EBCA6B


def mix32(words):
    """Mix 32-bit words (a Python int, or an int64 tensor of values in
    [0, 2 ** 32)) into 32-bit words: the same values for both."""
    words = words ^ (words >> 16)
    words = (words * 0x21F0AAAD) & MASK32
    words = words ^ (words >> 15)
    words = (words * 0x735A2D97) & MASK32
    return words ^ (words >> 15)


def _step_words(seed, step):
    """Two 32-bit words of (run seed modulo 2 ** 64, step)."""
    first = mix32(mix32(mix32(step & MASK32) ^ (seed & MASK32))
                  ^ ((seed >> 32) & MASK32))
    return first, mix32(first ^ _ROW_SALT)


def words_to_uniforms(high_words, low_words, dtype):
    """Uniforms in (0, 1) of ``dtype`` from pairs of 32-bit words (int64
    tensors): ``(2 m + 1) 2 ** -53`` for the 52 bits ``m`` (20 of the
    high word, 32 of the low one), exact in float64; in a narrower dtype
    clamped inside (0, 1)."""
    mantissas = ((high_words >> 12) << 32) | low_words
    uniforms = (2 * mantissas + 1).to(torch.float64) * 2.0 ** -53
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
    keys : torch.Tensor, int64 (N,)
        Non-negative key of each row (the tracker's: ``2 * index + half``,
        with ``index`` the seed's in the run and ``half`` 0 forward, 1
        backward).
    step : int
        The step, >= 0.

    Notes
    -----
    Successive calls of one step take the next columns: a sampler's
    draws are those of its calls in order, whatever the other rows.
    """

    def __init__(self, seed, keys, step):
        first, second = _step_words(int(seed), int(step))
        self._row_words = mix32(mix32((keys & MASK32) ^ first)
                                ^ (keys >> 32) ^ second)
        self._next_column = 0

    def uniforms(self, nb_columns, like):
        """(N, nb_columns) uniforms in (0, 1) of ``like``'s dtype."""
        start = self._next_column
        self._next_column += nb_columns
        column_words = torch.tensor(
            [mix32(column ^ _COLUMN_SALT)
             for column in range(2 * start, 2 * self._next_column)],
            dtype=torch.int64, device=self._row_words.device)
        words = mix32(self._row_words[:, None] ^ column_words)
        return words_to_uniforms(words[:, 0::2], words[:, 1::2], like.dtype)

    def normals(self, nb_columns, like):
        """(N, nb_columns) standard normals of ``like``'s dtype
        (Box-Muller: two uniforms give two normals)."""
        nb_pairs = math.ceil(nb_columns / 2)
        uniforms = self.uniforms(2 * nb_pairs, like)
        radii = torch.sqrt(-2 * torch.log(uniforms[:, :nb_pairs]))
        angles = 2 * math.pi * uniforms[:, nb_pairs:]
        return torch.cat([radii * torch.cos(angles),
                          radii * torch.sin(angles)], dim=1)[:, :nb_columns]


class GeneratorDraws:
    """Draws from a ``torch.Generator`` (None: torch's global stream), on
    the device of the rows they are for; they depend on the batch."""

    def __init__(self, generator=None):
        self.generator = generator

    def _options(self, like):
        return {"generator": self.generator, "device": like.device,
                "dtype": like.dtype}

    def uniforms(self, nb_columns, like):
        """(N, nb_columns) uniforms in [0, 1) (``torch.rand``)."""
        return torch.rand((len(like), nb_columns), **self._options(like))

    def normals(self, nb_columns, like):
        """(N, nb_columns) standard normals (``torch.randn``)."""
        return torch.randn((len(like), nb_columns), **self._options(like))


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
    classes = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True)
    # Where the scaled uniform rounds up to the sum, no class is above it:
    # the last one is taken (a chance of about one float32 rounding).
    return classes.squeeze(1).clamp_(max=probabilities.shape[1] - 1)
