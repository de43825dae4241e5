"""Transformer layers that can run one new position at a time.

:class:`CachedTransformerLayer` is ``torch.nn.TransformerEncoderLayer``
(without cross-attention) or ``torch.nn.TransformerDecoderLayer`` (with it,
``batch_first=True``): same sub-modules, same parameter names, hence the same
``state_dict``, the same ``norm_first``, activation and dropouts. It computes
attention with ``F.scaled_dot_product_attention`` on the parameters of its
``nn.MultiheadAttention`` modules instead of calling them, because
incremental decoding needs each layer's keys and values, which the torch
layers do not expose:

- full sequences (training): keys and values of all positions, causal
  (position ``t`` attends to positions ``<= t``), as the torch layers with
  a causal mask;
- one new position (tracking): its keys and values are appended to a
  :class:`~dwi_ml.models.transformer_cache.KeyValueBuffer` and its query
  attends to every position kept there, all in the past.

With an ``attention_window`` W, a position attends to itself and the W - 1
positions before it only (a banded causal mask in training; when tracking,
the buffer keeps the last W positions), so a tracking step reads at most W
past keys and values whatever the streamline's length.

With ALiBi (Press et al., 2022, "Train short, test long"; the models'
``position_encoding="alibi"``), self-attention scores get a bias
``-slope_h * lag`` that grows with the lag between the query and the key,
one slope per head: the tokens carry no position vector, each head
prefers recent points at its own rate, and the order of the points is
known from the lags alone. Cross-attention gets no bias.

Shapes: tokens ``(N, T, d_model)``, keys and values ``(N, heads, T,
head_dim)``.

For visualization only, a layer whose ``attention_records`` is a dict
also computes each attention's weights explicitly, from the same queries
and keys (:func:`explicit_attention_weights`), and keeps them there with
the values and the kernel's output: see
:mod:`dwi_ml.models.transformer_attention`. The outputs still come from
``scaled_dot_product_attention``.
"""
import math

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
POSITION_ENCODINGS = ("sinusoidal", "learned", "none", "alibi")


def _split_heads(x, nheads):
    """(N, T, d) -> (N, heads, T, d / heads)."""
    n, t, d = x.shape
    return x.view(n, t, nheads, d // nheads).transpose(1, 2)


def attention_lags(nb_queries, nb_keys, device):
    """Lag ``p - j`` of each key ``j`` behind each query's position ``p``.

    Queries are the last ``nb_queries`` of ``nb_keys`` positions (bottom
    right aligned; in training both are the sequence): query ``i`` is at
    position ``p = nb_keys - nb_queries + i``. Negative lags are keys in
    the query's future.

    Returns
    -------
    torch.Tensor int64 (nb_queries, nb_keys)
    """
    positions = torch.arange(nb_keys - nb_queries, nb_keys, device=device)
    return positions[:, None] - torch.arange(nb_keys, device=device)[None]


def window_mask(nb_queries, nb_keys, window, device):
    """Which keys each query sees within an attention window: keys ``j``
    with ``0 <= p - j < window`` (see :func:`attention_lags`).

    Returns
    -------
    torch.Tensor bool (nb_queries, nb_keys)
        True where the query attends to the key.
    """
    lags = attention_lags(nb_queries, nb_keys, device)
    return (lags >= 0) & (lags < window)


def alibi_head_slopes(nheads):
    """ALiBi's head slopes ``2 ** (-8 (h + 1) / nheads)``, h = 0 .. nheads - 1.

    With 4 heads: 1/4, 1/16, 1/64, 1/256 (per point of lag).

    Returns
    -------
    torch.Tensor float64 (nheads,)
    """
    return 2.0 ** (-8.0 * torch.arange(1, nheads + 1, dtype=torch.float64)
                   / nheads)


def alibi_bias(slopes, lags, window=None):
    """Additive attention bias ``-slope_h * lag``, ``-inf`` where a key is
    not seen (in the future, or ``window`` or more points back).

    Parameters
    ----------
    slopes : torch.Tensor (heads,)
        Floating, in the attention's dtype.
    lags : torch.Tensor int64 (Tq, Tk)
        From :func:`attention_lags` or :meth:`KeyValueBuffer.lags`.
    window : int or None

    Returns
    -------
    torch.Tensor (1, heads, Tq, Tk), ``slopes``' dtype
        Four dimensions: ``scaled_dot_product_attention`` then keeps its
        fast CPU kernel (a 3D mask halved its speed in tracking steps).
    """
    bias = -slopes[None, :, None, None] * lags.to(slopes.dtype)
    unseen = lags < 0
    if window is not None:
        unseen = unseen | (lags >= window)
    return bias.masked_fill(unseen, float("-inf"))


def explicit_attention_weights(queries, keys, causal, mask=None):
    """Softmax of scaled dot products, as ``scaled_dot_product_attention``
    computes them (default scale ``1 / sqrt(head_dim)``; ``causal``: query
    ``t`` sees keys ``<= t``, top-left aligned; ``mask``: a boolean
    ``attn_mask``, True where a query sees a key, or a float one added to
    the scores, used instead).

    Parameters
    ----------
    queries : torch.Tensor (N, heads, Tq, head_dim)
    keys : torch.Tensor (N, heads, Tk, head_dim)
    causal : bool
    mask : torch.Tensor bool (Tq, Tk), float (1, heads, Tq, Tk), or None

    Returns
    -------
    torch.Tensor (N, heads, Tq, Tk)
        Each row sums to 1.
    """
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    if mask is None and causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool,
                          device=scores.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1)


def _merge_heads(x):
    """(N, heads, T, head_dim) -> (N, T, heads * head_dim)."""
    n, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(n, t, h * hd)


class CachedTransformerLayer(torch.nn.Module):
    """Self-attention, optional cross-attention, feed-forward; norms.

    Parameters
    ----------
    d_model : int
    nheads : int
        Divides ``d_model``.
    ffnn_hidden_size : int
        Hidden width of the feed-forward network.
    dropout : float
        As in the torch layers: on attention weights, in the feed-forward
        network and on each sub-layer's output (training only).
    activation : "relu" or "gelu"
    norm_first : bool
        Pre-norm (norm, sub-layer, residual) instead of post-norm.
    cross_attention : bool
        A decoder layer, attending to an encoder's outputs too.
    attention_window : int or None
        Positions each query sees, itself included, in every attention
        (module docstring); None: all earlier positions.
    alibi : bool
        Bias the self-attention scores by the lags (ALiBi, module
        docstring).
    """

    def __init__(self, d_model, nheads, ffnn_hidden_size, dropout,
                 activation, norm_first, cross_attention,
                 attention_window=None, alibi=False):
        super().__init__()
        self.nheads = nheads
        self.attention_window = attention_window
        # Computed, not learned: not in the state_dict (as torch's layers).
        self.register_buffer("alibi_slopes",
                             alibi_head_slopes(nheads).float() if alibi else None,
                             persistent=False)
        self.dropout_p = dropout
        self.activation = ACTIVATIONS[activation]
        self.norm_first = norm_first
        self.cross_attention = cross_attention
        # Names follow torch's layers, so their state_dicts load here.
        self.self_attn = torch.nn.MultiheadAttention(
            d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = torch.nn.Linear(d_model, ffnn_hidden_size)
        self.dropout = torch.nn.Dropout(dropout)
        self.linear2 = torch.nn.Linear(ffnn_hidden_size, d_model)
        self.norm1 = torch.nn.LayerNorm(d_model)
        self.norm2 = torch.nn.LayerNorm(d_model)
        self.dropout1 = torch.nn.Dropout(dropout)
        self.dropout2 = torch.nn.Dropout(dropout)
        if cross_attention:
            self.multihead_attn = torch.nn.MultiheadAttention(
                d_model, nheads, dropout=dropout, batch_first=True)
            self.norm3 = torch.nn.LayerNorm(d_model)
            self.dropout3 = torch.nn.Dropout(dropout)
        # A plain tuple: the feed-forward's norm is the last one of either
        # layer, registered above under torch's name.
        self._ff_norm_dropout = ((self.norm3, self.dropout3) if cross_attention
                                 else (self.norm2, self.dropout2))
        # None, or a dict that each attention fills (visualization only).
        self.attention_records = None

    def _attend(self, attention, queries, keys, values, causal, lags=None):
        """Heads of ``attention`` over given keys/values -> (N, T, d).

        ``lags`` (Tq, Tk) int64: ALiBi's lags of the keys (self-attention
        of an ALiBi layer only; see :func:`attention_lags`).
        """
        d_model = attention.embed_dim
        queries = _split_heads(F.linear(
            queries, attention.in_proj_weight[:d_model],
            attention.in_proj_bias[:d_model]), self.nheads)
        window, mask = self.attention_window, None
        if lags is not None:
            mask = alibi_bias(self.alibi_slopes.to(queries.dtype), lags,
                              window)
        # Tracking needs no mask: a windowed buffer keeps W positions.
        elif window is not None and keys.shape[2] > window:
            mask = window_mask(queries.shape[2], keys.shape[2], window,
                               keys.device)
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask,
            is_causal=causal and mask is None,
            dropout_p=self.dropout_p if self.training else 0.0)
        if self.attention_records is not None:
            name = "self" if attention is self.self_attn else "cross"
            self.attention_records[name] = (
                explicit_attention_weights(queries, keys, causal, mask),
                values, out)
        return attention.out_proj(_merge_heads(out))

    def _keys_values(self, attention, x):
        """Keys and values of ``attention`` for tokens x (N, T, d)."""
        d_model = attention.embed_dim
        keys, values = F.linear(x, attention.in_proj_weight[d_model:],
                                attention.in_proj_bias[d_model:]).chunk(2, -1)
        return _split_heads(keys, self.nheads), _split_heads(values,
                                                             self.nheads)

    def memory_keys_values(self, memory):
        """Cross-attention keys and values of encoder outputs (N, T, d)."""
        return self._keys_values(self.multihead_attn, memory)

    def _self_attention(self, x, causal, buffer):
        keys, values = self._keys_values(self.self_attn, x)
        if buffer is not None:
            keys, values = buffer.append(keys, values)
        lags = None
        if self.alibi_slopes is not None:
            lags = (attention_lags(x.shape[1], keys.shape[2], keys.device)
                    if buffer is None else buffer.lags(x.shape[1]))
        return self._attend(self.self_attn, x, keys, values, causal, lags)

    def _feed_forward(self, x):
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, x, causal=False, buffer=None, memory=None):
        """Run the layer on tokens x (N, T, d_model).

        Parameters
        ----------
        x : torch.Tensor (N, T, d_model)
        causal : bool
            Position ``t`` attends to keys ``<= t`` only, in self- and
            cross-attention alike (the encoder's outputs are aligned with
            the positions). False: attend to every key (one new position
            over the buffer's past ones).
        buffer : KeyValueBuffer or None
            Keys and values of earlier positions: this call's are appended
            to it (in place) and the queries attend to all of them.
        memory : tuple (keys, values) or None
            Cross-attention keys and values of the encoder's outputs
            (:meth:`memory_keys_values`), for a decoder layer.

        Returns
        -------
        torch.Tensor (N, T, d_model)
        """
        ff_norm, ff_dropout = self._ff_norm_dropout
        if self.norm_first:
            x = x + self.dropout1(self._self_attention(self.norm1(x), causal,
                                                       buffer))
            if self.cross_attention:
                x = x + self.dropout2(self._attend(
                    self.multihead_attn, self.norm2(x), *memory, causal))
            return x + ff_dropout(self._feed_forward(ff_norm(x)))
        x = self.norm1(x + self.dropout1(self._self_attention(x, causal,
                                                              buffer)))
        if self.cross_attention:
            x = self.norm2(x + self.dropout2(self._attend(
                self.multihead_attn, x, *memory, causal)))
        return ff_norm(x + ff_dropout(self._feed_forward(x)))


class LayerStack(torch.nn.Module):
    """``n_layers`` :class:`CachedTransformerLayer`, with a final norm when
    ``norm_first`` (pre-norm layers leave their output un-normalised, as
    ``torch.nn.Transformer`` does with its final norms).

    ``layer_args`` are those of :class:`CachedTransformerLayer`, in order.
    """

    def __init__(self, n_layers, *layer_args):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            CachedTransformerLayer(*layer_args) for _ in range(n_layers))
        d_model, norm_first = layer_args[0], layer_args[5]
        self.final_norm = (torch.nn.LayerNorm(d_model) if norm_first
                           else torch.nn.Identity())

    def memory_keys_values(self, memory):
        """Each layer's cross-attention keys and values of ``memory``."""
        return [layer.memory_keys_values(memory) for layer in self.layers]

    def forward(self, x, causal=False, buffers=None, memories=None):
        """Tokens through every layer; see :meth:`CachedTransformerLayer.forward`.

        ``buffers`` and ``memories`` are None or hold one entry per layer.
        """
        for i, layer in enumerate(self.layers):
            x = layer(x, causal, None if buffers is None else buffers[i],
                      None if memories is None else memories[i])
        return self.final_norm(x)


class PositionEncoding(torch.nn.Module):
    """Position vectors added to the tokens: sinusoidal, learned or none.

    Parameters
    ----------
    kind : "sinusoidal", "learned", "none" or "alibi"
        Sinusoidal: Vaswani et al.'s fixed sines and cosines (no weights).
        Learned: one trained vector per position. None: tokens are left as
        they are; the causal mask alone tells positions apart (a position
        attends to itself and to the ones before it). ALiBi: tokens are
        left as they are too; the layers bias their self-attention by the
        lags (module docstring).
    d_model : int
    max_len : int
        Positions 0 .. max_len - 1, i.e. the longest streamline (points
        that predict) the model can take, in training or tracking.
    """

    def __init__(self, kind, d_model, max_len):
        super().__init__()
        self.kind = kind
        self.max_len = max_len
        if kind == "learned":
            self.learned = torch.nn.Embedding(max_len, d_model)
        if kind != "sinusoidal":
            return
        positions = torch.arange(max_len, dtype=torch.float64)[:, None]
        frequencies = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64)
                                * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(positions * frequencies)
        table[:, 1::2] = torch.cos(positions * frequencies)[:, :d_model // 2]
        # Not persistent: it is computed, not learned, and saved models
        # stay small.
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, tokens, positions):
        """Tokens (M, d_model) plus the vectors of their int64 positions."""
        if self.kind in ("none", "alibi"):
            return tokens
        if self.kind == "learned":
            return tokens + self.learned(positions)
        return tokens + self.table[positions]
