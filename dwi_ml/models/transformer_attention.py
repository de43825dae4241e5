"""What a Transformer model attends to: attention weights, for viewing.

The models compute attention with ``scaled_dot_product_attention``, which
returns no weights. :func:`attention_maps` runs the model's ordinary
``forward`` with every layer asked to also compute its weights from the
same queries and keys
(:func:`~dwi_ml.models.transformer_layers.explicit_attention_weights`);
the outputs are the model's usual ones. This costs ``(N, heads, T, T)``
values per attention: use it on a few streamlines.

Names of the attentions (``stack``):

- ``"encoder"``: self-attention of the encoder layers (every model);
- ``"decoder"``: self-attention of the decoder layers
  (``transformer_original``);
- ``"cross"``: the decoder layers' attention to the encoder's outputs
  (``transformer_original``).

Query and key positions are prediction points: position ``t`` is the
``t``-th point of the streamline (see :mod:`dwi_ml.models.directions`).
"""
from contextlib import contextmanager

import numpy as np
import torch

from dwi_ml.models.transformer_layers import CachedTransformerLayer


def _stacks(model):
    """(name, LayerStack) of the model's stacks, encoder first."""
    return [(name, getattr(model, name)) for name in ("encoder", "decoder")
            if hasattr(model, name)]


@contextmanager
def recording_attention(model):
    """Within the block, every layer keeps its attentions' weights.

    Yields
    ------
    dict of str to list of dict
        Stack name to one dict per layer, filled by each forward pass:
        ``{"self": (weights, values, output)}`` and, for a decoder layer,
        ``"cross"`` too. ``weights`` (N, heads, Tq, Tk), ``values`` (N,
        heads, Tk, head_dim), ``output`` (N, heads, Tq, head_dim) the
        kernel's output, before the heads are merged.
    """
    records = {}
    layers = []
    for name, stack in _stacks(model):
        records[name] = []
        for layer in stack.layers:
            if not isinstance(layer, CachedTransformerLayer):
                raise TypeError(f"{name}: expected CachedTransformerLayer "
                                f"layers, found {type(layer).__name__}.")
            layer.attention_records = {}
            records[name].append(layer.attention_records)
            layers.append(layer)
    try:
        yield records
    finally:
        for layer in layers:
            layer.attention_records = None


def attention_maps(model, inputs, streamlines):
    """Attention weights of every layer and head for a few streamlines.

    Parameters
    ----------
    model : TransformerModelAbstract
        In eval mode (dropout would change the weights).
    inputs, streamlines :
        As for the model's ``forward``.

    Returns
    -------
    maps : dict of str to torch.Tensor (layers, N, heads, T, T)
        Per attention name (module docstring); ``T`` is the longest
        streamline's number of prediction points. Row ``[.., q, :]`` are
        the weights of query position ``q``; they sum to 1, are zero on
        keys after ``q`` and (for real queries) on padding.
    counts : np.ndarray of int (N,)
        Prediction points of each streamline: the real rows and columns.
    """
    with torch.no_grad(), recording_attention(model) as records:
        model(inputs, streamlines)
    maps = {}
    for name, layers in records.items():
        maps[name] = torch.stack([layer["self"][0] for layer in layers])
        if "cross" in layers[0]:
            maps["cross"] = torch.stack([layer["cross"][0]
                                         for layer in layers])
    _, counts = model.count_predictions(inputs, streamlines)
    return maps, np.asarray(counts.cpu())


def point_attention_values(maps, counts, nb_points, window=None):
    """Per-point summaries of the self-attentions, for a tractogram.

    Averaged over every self-attention layer and head (``"encoder"`` and
    ``"decoder"``, not ``"cross"``):

    - ``attention_received``: for each point ``k``, the mean weight that
      the queries allowed to see it (positions ``q >= k``, and ``q < k +
      window`` with an attention window) give it, in [0, 1];
    - ``most_attended_from``: the query position ``q`` (a point index)
      that gives point ``k`` its largest weight, ``>= k``.

    Points without a position (the last point of a streamline when the
    model has no EOS) get 0 and their own index.

    Parameters
    ----------
    maps, counts :
        From :func:`attention_maps`.
    nb_points : sequence of int
        Points of each streamline.
    window : int or None
        The model's ``attention_window``.

    Returns
    -------
    dict of str to list of np.ndarray (n_i, 1) float32
    """
    weights = torch.cat([maps[name] for name in ("encoder", "decoder")
                         if name in maps]).mean(dim=(0, 2))  # (N, T, T)
    received, attended_from = [], []
    for row, (count, n) in enumerate(zip(counts, nb_points)):
        square = weights[row, :count, :count].double().cpu().numpy()
        # Query q sees keys k <= q (and q - k < window): column k's
        # viewers are rows k .. min(k + window, count) - 1.
        viewers = count - np.arange(count)
        if window is not None:
            viewers = np.minimum(viewers, window)
        values = np.zeros(n)
        values[:count] = square.sum(axis=0) / viewers
        most = np.arange(n, dtype=np.float64)
        most[:count] = np.argmax(square, axis=0)
        received.append(values.astype(np.float32)[:, None])
        attended_from.append(most.astype(np.float32)[:, None])
    return {"attention_received": received,
            "most_attended_from": attended_from}
