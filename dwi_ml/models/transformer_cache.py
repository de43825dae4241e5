"""What a Transformer keeps between two tracking steps: past keys and values.

At tracking step ``t`` a Transformer model computes only position ``t`` of
its N streamlines: each attention layer appends the new position's keys and
values to its :class:`KeyValueBuffer` and attends to everything there. The
:class:`TransformerCache` gathers the buffers of a model and the step
counter; the model's ``forward_step`` takes it and returns it, and
``select_hidden_states`` keeps the rows of the streamlines still tracked.
All streamlines step together (the tracker's lockstep), so every row holds
the same number of positions and no mask is needed.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from dwi_ml.models.transformer_layers import attention_lags

INITIAL_CAPACITY = 32


def keep_indices(keep, device):
    """Indices (int64 tensor on ``device``) from a bool mask or indices.

    ``keep`` may be a torch tensor, numpy array, list or tuple. A numpy
    array is copied, never shared.
    """
    if isinstance(keep, (np.ndarray, list, tuple)):
        keep = torch.tensor(np.asarray(keep))
    keep = keep.to(device)
    if keep.dtype == torch.bool:
        return torch.nonzero(keep).squeeze(1)
    return keep.long()


class KeyValueBuffer:
    """Keys and values of the past positions of one attention layer.

    Stored in ``(rows, heads, capacity, head_dim)`` tensors whose capacity
    doubles when full: appending a position writes in place and copies the
    past only ``log2(T)`` times in all, so a step's cost does not grow with
    copies of the past. A single query reads the first ``length``
    positions of each (row, head), which are contiguous.

    With an attention window W (the model's ``attention_window``) the
    buffer holds at most W positions: once full, each new position
    overwrites the oldest one's slot (a ring), so tracking memory stays
    bounded too. The slots are then out of order, which attention does not
    see: its weights and sum do not depend on the order of the keys.

    Dropping stopped streamlines (:meth:`select`) gathers the kept rows
    into a second, spare storage of the same capacity, kept from one
    select to the next: a fresh allocation would cost page faults on every
    select (3x the gather itself, measured on CPU).

    Parameters
    ----------
    keys, values : torch.Tensor (rows, heads, capacity, head_dim)
        Storages; the buffer uses their first ``nb_rows`` rows.
    length : int
        Positions in use (the first ``length`` along dimension 2).
    nb_rows : int or None
        Streamlines in the buffer; None: all rows of the storages.
    spare : tuple of two torch.Tensor or None
        Storages that :meth:`select` may overwrite.
    window : int or None
        Positions kept at most (a ring once full); None: all.
    """

    def __init__(self, keys, values, length=0, nb_rows=None, spare=None,
                 window=None):
        self._storages = (keys, values)
        self.length = length
        self.nb_rows = len(keys) if nb_rows is None else nb_rows
        self._spare = spare
        self.window = window

    @property
    def keys(self):
        """torch.Tensor (nb_rows, heads, capacity, head_dim), a view."""
        return self._storages[0][:self.nb_rows]

    @property
    def values(self):
        """torch.Tensor (nb_rows, heads, capacity, head_dim), a view."""
        return self._storages[1][:self.nb_rows]

    @classmethod
    def empty(cls, like, nheads, head_dim, window=None):
        """An empty buffer for ``len(like)`` streamlines, like's dtype and
        device, keeping at most ``window`` positions (None: all)."""
        capacity = (INITIAL_CAPACITY if window is None
                    else min(INITIAL_CAPACITY, window))
        shape = (len(like), nheads, capacity, head_dim)
        return cls(like.new_empty(shape), like.new_empty(shape),
                   window=window)

    def append(self, keys, values):
        """Add positions (N, heads, T, head_dim); return all kept ones.

        Returns views ``(N, heads, kept, head_dim)`` of the keys and
        values: past then new, or, once a windowed buffer is full, its W
        slots in ring order.
        """
        window = self.window
        if window is not None and self.length >= window:
            if keys.shape[2] != 1:
                raise ValueError(
                    f"KeyValueBuffer.append: a full windowed buffer takes "
                    f"one position at a time, found {keys.shape[2]}.")
            slot = self.length % window
            stored_keys, stored_values = self.keys, self.values
            stored_keys[:, :, slot:slot + 1] = keys
            stored_values[:, :, slot:slot + 1] = values
            self.length += 1
            return stored_keys[:, :, :window], stored_values[:, :, :window]
        end = self.length + keys.shape[2]
        if end > self._storages[0].shape[2]:
            capacity = max(2 * self._storages[0].shape[2], end)
            if window is not None and end <= window:
                capacity = min(capacity, window)
            self._storages = (self._grown(self.keys, capacity),
                              self._grown(self.values, capacity))
            self.nb_rows = len(self._storages[0])
            self._spare = None
        stored_keys, stored_values = self.keys, self.values
        stored_keys[:, :, self.length:end] = keys
        stored_values[:, :, self.length:end] = values
        self.length = end
        return stored_keys[:, :, :end], stored_values[:, :, :end]

    def lags(self, nb_queries=1):
        """Lag of each kept key behind each of the last ``nb_queries``
        positions, in storage order (ALiBi's bias; see
        :func:`~dwi_ml.models.transformer_layers.attention_lags`).

        Returns
        -------
        torch.Tensor int64 (nb_queries, kept)
            Negative for keys after a query. A full windowed buffer (a
            ring) takes one query: the newest position, in slot
            ``(length - 1) % W``.
        """
        device = self._storages[0].device
        window = self.window
        if window is None or self.length < window:
            return attention_lags(nb_queries, self.length, device)
        newest = (self.length - 1) % window
        return ((newest - torch.arange(window, device=device)) % window)[None]

    def _grown(self, tensor, capacity):
        grown = tensor.new_empty(tensor.shape[:2] + (capacity,)
                                 + tensor.shape[3:])
        grown[:, :, :self.length] = tensor[:, :, :self.length]
        return grown

    def select(self, rows):
        """A buffer with streamlines ``rows`` (int64 indices) only, in that
        order.

        The rows are gathered into the spare storages (allocated at the
        first select), and this buffer's storages become the new buffer's
        spare: do not use this buffer afterwards.
        """
        spare = self._spare
        if spare is None or spare[0].shape[1:] != self._storages[0].shape[1:]:
            spare = tuple(storage.new_empty(storage.shape)
                          for storage in self._storages)
        nb_rows = len(rows)
        for source, target in zip((self.keys, self.values), spare):
            torch.index_select(source, 0, rows, out=target[:nb_rows])
        return KeyValueBuffer(*spare, self.length, nb_rows, self._storages,
                              self.window)


@dataclass
class TransformerCache:
    """Per-layer key/value buffers of a Transformer model, and the step.

    Attributes
    ----------
    encoder : tuple of KeyValueBuffer
        Self-attention of each encoder layer.
    decoder : tuple of KeyValueBuffer
        Self-attention of each decoder layer (empty without a decoder).
    cross : tuple of KeyValueBuffer
        Cross-attention keys and values of the encoder's outputs, for each
        decoder layer; they grow with each step because the encoder is
        causal (empty without a decoder).
    nb_steps : int
        Positions computed so far; the next step computes position
        ``nb_steps``.
    """

    encoder: tuple
    decoder: tuple = field(default_factory=tuple)
    cross: tuple = field(default_factory=tuple)
    nb_steps: int = 0

    @property
    def nb_streamlines(self):
        """int: rows of the buffers."""
        return len(self.encoder[0].keys)

    def select(self, keep):
        """The cache of the streamlines in ``keep`` (mask or indices), in
        that order. See :func:`keep_indices`."""
        rows = keep_indices(keep, self.encoder[0].keys.device)

        def select_all(buffers):
            return tuple(buffer.select(rows) for buffer in buffers)

        return TransformerCache(select_all(self.encoder),
                                select_all(self.decoder),
                                select_all(self.cross), self.nb_steps)
