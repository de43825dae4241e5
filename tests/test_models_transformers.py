"""Transformer models: layers, masks, loss, cached tracking, save/load.

Equalities that are about logic (masks, cache) run in float64 with a
tolerance derived from float64 rounding (``TIGHT``): float32 rounding would
need a tolerance loose enough to hide a small leak.
"""
import json
import os

import numpy as np
import pytest
import torch

from dwi_ml.data.processing.neighborhood import get_neighborhood_offsets
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import load_model_from_params_and_state
from dwi_ml.models.cnn_embedding import CNNEmbedding
from dwi_ml.models.transformer_cache import TransformerCache
from dwi_ml.models.transformer_layers import CachedTransformerLayer
from dwi_ml.models.transformer_tokens import PaddedLayout
from dwi_ml.models.transformers import (
    OriginalTransformerModel,
    TransformerSrcAndTgtModel,
    TransformerSrcOnlyModel,
)
from tests.tolerances import EPS64, rounding_atol

NB_FEATURES = 4
LENGTHS = (6, 3, 8, 5)
# Longest chain of roundings through these models (d_model 16, 2 heads,
# <= 48 tokens, up to 2 + 2 layers): a layer has at most ~450 (two
# attention blocks of ~180: 17-term projections, 9-term scores, a softmax
# and a weighted sum over <= 48 keys, a layer norm of 16 values ~40; a
# feed-forward block ~70), 4 layers, plus the embeddings and the direction
# getter: < 2000, on values below 4 (layer-normed: |x| <= sqrt(16)).
NB_ROUNDINGS, MAGNITUDE = 2000, 4.0
TIGHT = dict(atol=rounding_atol(MAGNITUDE, NB_ROUNDINGS, EPS64), rtol=0)

CONFIGS = [
    (TransformerSrcOnlyModel, dict()),
    (TransformerSrcOnlyModel, dict(
        position_encoding="learned", norm_first=True, activation="gelu",
        nb_previous_dirs=2, dg_key="fisher-von-mises",
        dg_args={"add_eos": True})),
    # "none": the source tokens (2 features x 7 neighbours) are d_model wide.
    (TransformerSrcOnlyModel, dict(
        input_embedding_key="none", position_encoding="none",
        nb_features=2, d_model=14,
        neighborhood_type="axes", neighborhood_radius=1,
        neighborhood_resolution=1.0)),
    (TransformerSrcOnlyModel, dict(
        input_embedding_key="cnn", nb_features=2, neighborhood_type="grid",
        neighborhood_radius=1, neighborhood_resolution=1.0,
        nb_previous_dirs=1, cnn_nb_filters=3)),
    (TransformerSrcAndTgtModel, dict(sos_token_type="learned",
                                     position_encoding="none")),
    (TransformerSrcAndTgtModel, dict(
        sos_token_type="class", token_combination="add",
        target_embedded_size=None, position_encoding="learned",
        norm_first=True, dg_args={"add_eos": True})),
    (OriginalTransformerModel, dict(sos_token_type="learned",
                                    dg_args={"add_eos": True})),
    (OriginalTransformerModel, dict(
        sos_token_type="class", norm_first=True, activation="gelu",
        position_encoding="learned", nb_previous_dirs=1,
        dg_key="sphere-classification")),
    # Attention windows shorter than the streamlines (2 to 40 points).
    (TransformerSrcOnlyModel, dict(attention_window=2, nb_previous_dirs=1)),
    (TransformerSrcAndTgtModel, dict(attention_window=4,
                                     position_encoding="none")),
    (OriginalTransformerModel, dict(attention_window=3, norm_first=True,
                                    dg_args={"add_eos": True})),
    # ALiBi: biased self-attention, with and without a window.
    (TransformerSrcOnlyModel, dict(position_encoding="alibi",
                                   attention_window=3, nb_previous_dirs=1)),
    (TransformerSrcAndTgtModel, dict(position_encoding="alibi")),
    (OriginalTransformerModel, dict(position_encoding="alibi",
                                    sos_token_type="class")),
    # Target tokens kept as they are (3 values, or 4 with the SOS class),
    # concatenated; the getters not met above; cnn sources with targets.
    (TransformerSrcAndTgtModel, dict(
        target_embedding_key="none", target_embedded_size=4,
        sos_token_type="class", dg_key="gaussian-mixture",
        dg_args={"add_eos": True})),
    (TransformerSrcAndTgtModel, dict(
        target_embedding_key="none", target_embedded_size=3,
        input_embedding_key="cnn", nb_features=2, neighborhood_type="grid",
        neighborhood_radius=1, neighborhood_resolution=1.0,
        attention_window=1, dg_key="smooth-sphere-classification")),
    (OriginalTransformerModel, dict(
        input_embedding_key="cnn", nb_features=2, neighborhood_type="grid",
        neighborhood_radius=1, neighborhood_resolution=1.0,
        position_encoding="alibi", attention_window=2, dg_key="gaussian",
        dg_args={"add_eos": True})),
    (TransformerSrcOnlyModel, dict(dg_key="cosine-plus-l2-regression",
                                   nb_previous_dirs=3,
                                   dg_args={"add_eos": True})),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CONFIGS)]


def make_model(cls, **kwargs):
    torch.manual_seed(0)
    args = dict(experiment_name="test", nb_features=NB_FEATURES, d_model=16,
                nheads=2, n_layers_e=2, max_len=48, dropout=0.1)
    if cls is OriginalTransformerModel:
        args["n_layers_d"] = 2
    args.update(kwargs)
    return cls(**args)


def make_batch(model, lengths=LENGTHS, seed=0, dtype=torch.float64):
    """Random walks (voxel space, corner origin) and their inputs."""
    generator = torch.Generator().manual_seed(seed)
    streamlines = [10 + torch.cumsum(torch.randn(n, 3, generator=generator),
                                     0).to(dtype) for n in lengths]
    inputs = [torch.randn(n, model.input_size, generator=generator).to(dtype)
              for n in lengths]
    return inputs, streamlines


def total_loss(losses):
    """The optimised loss: the sum of named terms, or the single one."""
    return sum(losses.values()) if isinstance(losses, dict) else losses


def eval_double(cls, config):
    return make_model(cls, **config).double().eval()


def split_outputs(model, outputs, lengths):
    return torch.split(outputs, [n - 1 + model.add_eos for n in lengths])


# ----------------------------------------------------------------------
# The layer equals torch's layers
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("cross_attention", [False, True])
def test_layer_equals_torch_layer(norm_first, activation, cross_attention):
    torch.manual_seed(0)
    d_model, nheads, hidden, length = 8, 2, 12, 5
    torch_class = (torch.nn.TransformerDecoderLayer if cross_attention
                   else torch.nn.TransformerEncoderLayer)
    reference = torch_class(d_model, nheads, hidden, dropout=0.1,
                            activation=activation, batch_first=True,
                            norm_first=norm_first).double().eval()
    layer = CachedTransformerLayer(d_model, nheads, hidden, 0.1, activation,
                                   norm_first, cross_attention)
    layer.load_state_dict(reference.state_dict())
    layer.double().eval()
    x = torch.randn(3, length, d_model, dtype=torch.float64)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    with torch.no_grad():
        if cross_attention:
            memory = torch.randn(3, length, d_model, dtype=torch.float64)
            expected = reference(x, memory, tgt_mask=~causal,
                                 memory_mask=~causal)
            got = layer(x, True, memory=layer.memory_keys_values(memory))
        else:
            expected = reference(x, src_mask=~causal)
            got = layer(x, True)
    torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("radius", [1, 2])
def test_cnn_embedding_puts_neighbours_on_their_grid(radius):
    # Each neighbour's two features are its x and y offsets: on the grid,
    # cell (x, y, z) must hold (x - r, y - r).
    offsets = torch.as_tensor(get_neighborhood_offsets(
        "grid", radius, 1.0, np.eye(4)), dtype=torch.float32)
    tokens = torch.cat([offsets[:, :2].reshape(1, -1),
                        torch.ones(1, 3)], dim=1)
    embedding = CNNEmbedding(2, radius, 3, 5, 4)
    grid = embedding.to_grid(tokens)[0]
    side = torch.arange(-radius, radius + 1, dtype=torch.float32)
    x, y, _ = torch.meshgrid(side, side, side, indexing="ij")
    assert torch.equal(grid[0], x) and torch.equal(grid[1], y)
    assert embedding(tokens).shape == (1, 5)


# ----------------------------------------------------------------------
# Shapes, masks and loss
@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_output_shapes_and_loss_names(cls, config):
    model = make_model(cls, **config)
    inputs, streamlines = make_batch(model, dtype=torch.float32)
    outputs = model(inputs, streamlines)
    nb_rows = sum(LENGTHS) - (0 if model.add_eos else len(LENGTHS))
    assert outputs.shape == (nb_rows, model.output_size)
    losses, n_points = model.compute_loss(outputs, streamlines)
    assert n_points == nb_rows
    if model.add_eos:
        assert sorted(losses) == ["direction", "eos"]
    else:
        assert losses.ndim == 0 and torch.isfinite(losses)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_no_attention_to_padding(cls, config):
    # Streamline 1 (3 points) is padded to 6, then to 12 points: its outputs
    # stay those it has alone.
    model = eval_double(cls, config)
    inputs, streamlines = make_batch(model)
    longer_inputs, longer = make_batch(model, lengths=(12,), seed=1)
    with torch.no_grad():
        alone = model(inputs[1:2], streamlines[1:2])
        batch = split_outputs(model, model(inputs, streamlines), LENGTHS)[1]
        with_longer = split_outputs(
            model, model(inputs[1:2] + longer_inputs,
                         streamlines[1:2] + longer), (3, 12))[0]
    torch.testing.assert_close(batch, alone, **TIGHT)
    torch.testing.assert_close(with_longer, alone, **TIGHT)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_padding_values_do_not_enter(cls, config, monkeypatch):
    # Padded positions filled with large random values instead of zeros
    # (in every stack, and the encoder's outputs for cross-attention).
    model = eval_double(cls, config)
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        expected = model(inputs, streamlines)
    zero_pad = PaddedLayout.pad
    generator = torch.Generator().manual_seed(3)

    def noisy_pad(layout, packed):
        padded = zero_pad(layout, packed)
        real = torch.zeros(padded.shape[:2], dtype=torch.bool)
        real[layout.streamline_ids, layout.time_ids] = True
        noise = 1e3 * torch.randn(padded.shape, generator=generator,
                                  dtype=padded.dtype)
        return torch.where(real[:, :, None], padded, noise)

    monkeypatch.setattr(PaddedLayout, "pad", noisy_pad)
    with torch.no_grad():
        got = model(inputs, streamlines)
    torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_no_attention_to_the_future(cls, config):
    # Changing the points after point 3 (and their inputs) changes no
    # output at points <= 3 (point 4 moves d_3, the previous direction of
    # point 4 only).
    model = eval_double(cls, config)
    inputs, streamlines = make_batch(model)
    changed_inputs = [x.clone() for x in inputs]
    changed = [s.clone() for s in streamlines]
    changed_inputs[2][4:] += 1.0
    changed[2][4:] += torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    with torch.no_grad():
        before = split_outputs(model, model(inputs, streamlines), LENGTHS)
        after = split_outputs(model, model(changed_inputs, changed), LENGTHS)
    torch.testing.assert_close(after[2][:4], before[2][:4], **TIGHT)
    assert not torch.allclose(after[2][4:], before[2][4:])
    for i in (0, 1, 3):
        torch.testing.assert_close(after[i], before[i], **TIGHT)


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_loss_is_the_point_weighted_mean_of_streamline_losses(cls, config):
    # Direction getters compute their losses in float32: so does this test.
    model = make_model(cls, **config).eval()
    inputs, streamlines = make_batch(model, dtype=torch.float32)
    with torch.no_grad():
        losses, n_points = model.compute_loss(model(inputs, streamlines),
                                              streamlines)
        weighted, counted = 0.0, 0
        for x, s in zip(inputs, streamlines):
            alone, n = model.compute_loss(model([x], [s]), [s])
            weighted += float(total_loss(alone)) * n
            counted += n
    total = total_loss(losses)
    assert n_points == counted
    # float32: the model's chain of roundings (NB_ROUNDINGS), then a mean
    # over <= 48 points and the sum of the terms (the weighting is float64).
    assert float(total) == pytest.approx(
        weighted / counted, rel=0,
        abs=rounding_atol(MAGNITUDE, NB_ROUNDINGS + 50))


# ----------------------------------------------------------------------
# Cached tracking
def track_step_by_step(model, inputs, streamlines, keep_as_indices=False):
    """Step all streamlines together, dropping each one after its last
    prediction; return each one's outputs, stacked."""
    counts = [len(s) - 1 + model.add_eos for s in streamlines]
    active = list(range(len(streamlines)))
    outputs = [[] for _ in streamlines]
    cache = None
    for t in range(max(counts)):
        step_outputs, cache = model.forward_step(
            torch.stack([inputs[i][t] for i in active]),
            [streamlines[i][:t + 1] for i in active], cache)
        assert isinstance(cache, TransformerCache)
        assert cache.nb_steps == t + 1
        for row, i in enumerate(active):
            outputs[i].append(step_outputs[row])
        keep = np.array([t + 1 < counts[i] for i in active])
        active = [i for i, kept in zip(active, keep) if kept]
        if not keep.all():
            cache = model.select_hidden_states(
                cache, np.nonzero(keep)[0] if keep_as_indices else keep)
            assert cache.nb_streamlines == len(active)
    return [torch.stack(rows) for rows in outputs]


@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_cached_steps_equal_full_forward(cls, config):
    model = eval_double(cls, config)
    # 40 points: the key/value buffers grow past their first capacity.
    lengths = LENGTHS + (40,)
    inputs, streamlines = make_batch(model, lengths)
    with torch.no_grad():
        full = split_outputs(model, model(inputs, streamlines), lengths)
        stepped = track_step_by_step(model, inputs, streamlines,
                                     keep_as_indices=cls is
                                     OriginalTransformerModel)
    for expected, got in zip(full, stepped):
        torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("cls", [TransformerSrcOnlyModel,
                                 TransformerSrcAndTgtModel,
                                 OriginalTransformerModel])
def test_a_double_model_steps_on_the_trackers_float32_inputs(cls):
    """The tracker's interpolation gives float32 inputs; the key/value
    buffers took their dtype, and a model.double() failed at its second
    step (query double, key float)."""
    model = eval_double(cls, {})
    inputs, streamlines = make_batch(model, lengths=(5, 5))
    outputs = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            cache, rows = None, []
            for t in range(4):
                step = torch.stack([x[t] for x in inputs]).to(torch.float32)
                step_outputs, cache = model.forward_step(
                    step.to(dtype), [s[:t + 1] for s in streamlines], cache)
                rows.append(step_outputs)
            outputs[dtype] = torch.stack(rows)
            assert all(buffer.keys.dtype == torch.float64
                       for buffer in cache.encoder)
    assert torch.equal(outputs[torch.float32], outputs[torch.float64])


def test_windowed_cache_keeps_at_most_the_window():
    # 40 steps with a window of 3: every buffer stays at 3 positions (a
    # ring), and the steps still equal the full forward
    # (test_cached_steps_equal_full_forward covers the values).
    model = eval_double(OriginalTransformerModel, dict(attention_window=3))
    inputs, streamlines = make_batch(model, lengths=(41, 41))
    cache = None
    with torch.no_grad():
        for t in range(40):
            _, cache = model.forward_step(
                torch.stack([x[t] for x in inputs]),
                [s[:t + 1] for s in streamlines], cache)
    for buffer in cache.encoder + cache.decoder + cache.cross:
        assert buffer.keys.shape[2] == 3 and buffer.length == 40
    with pytest.raises(ValueError, match="one position at a time"):
        buffer.append(buffer.keys[:, :, :2], buffer.values[:, :, :2])


def test_select_hidden_states_reorders_rows():
    model = eval_double(OriginalTransformerModel, {})
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        _, cache = model.forward_step(torch.stack([x[0] for x in inputs]),
                                      [s[:1] for s in streamlines])
        _, cache = model.forward_step(torch.stack([x[1] for x in inputs]),
                                      [s[:2] for s in streamlines], cache)
    # Snapshots: select compacts the buffers in place.
    before = [[(b.keys[:, :, :2].clone(), b.values[:, :, :2].clone())
               for b in buffers]
              for buffers in (cache.encoder, cache.decoder, cache.cross)]
    selected = model.select_hidden_states(cache, torch.tensor([3, 0]))
    assert selected.nb_steps == 2
    assert selected.nb_streamlines == 2
    for old_buffers, new_buffers in zip(before, (
            selected.encoder, selected.decoder, selected.cross)):
        assert len(new_buffers) == 2
        for (keys, values), new in zip(old_buffers, new_buffers):
            assert new.length == 2
            assert torch.equal(new.keys[:, :, :2], keys[[3, 0]])
            assert torch.equal(new.values[:, :, :2], values[[3, 0]])


# ----------------------------------------------------------------------
# Options, save/load, training
@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_save_then_load_gives_identical_outputs(cls, config, tmp_path):
    model = make_model(cls, **config).eval()
    folder = str(tmp_path / "model")
    model.save_params_and_state(folder)
    with open(os.path.join(folder, "parameters.json")) as f:
        assert json.load(f) == model.params_for_checkpoint
    with open(os.path.join(folder, "model_type.txt")) as f:
        assert f.read().strip() == cls.__name__
    loaded = load_model_from_params_and_state(folder)
    assert type(loaded) is cls and not loaded.training
    inputs, streamlines = make_batch(model, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(inputs, streamlines),
                           loaded(inputs, streamlines))


def test_options_change_the_model():
    # Each option really builds another model: same seed, other outputs.
    base = dict(position_encoding="sinusoidal", sos_token_type="learned")
    inputs = None
    outputs = {}
    for name, change in [("base", {}),
                         ("learned_pe", dict(position_encoding="learned")),
                         ("no_pe", dict(position_encoding="none")),
                         ("class_sos", dict(sos_token_type="class"))]:
        model = eval_double(OriginalTransformerModel, {**base, **change})
        if inputs is None:
            inputs, streamlines = make_batch(model)
        with torch.no_grad():
            outputs[name] = model(inputs, streamlines)
    assert not torch.allclose(outputs["base"], outputs["learned_pe"])
    assert not torch.allclose(outputs["base"], outputs["no_pe"])
    assert not torch.allclose(outputs["base"], outputs["class_sos"])
    learned = make_model(TransformerSrcOnlyModel, position_encoding="learned")
    sinusoidal = make_model(TransformerSrcOnlyModel)
    assert "position_encoding.learned.weight" in learned.state_dict()
    assert not any(k.startswith("position_encoding")
                   for k in sinusoidal.state_dict())
    # Without positions, the tokens enter the layers as embedded.
    none = make_model(TransformerSrcOnlyModel, position_encoding="none")
    assert not any(k.startswith("position_encoding")
                   for k in none.state_dict())
    tokens = torch.randn(5, none.d_model)
    assert torch.equal(none.position_encoding(tokens, torch.arange(5)), tokens)
    assert torch.equal(sinusoidal.position_encoding(tokens, torch.arange(5)),
                       tokens + sinusoidal.position_encoding.table[:5])


@pytest.mark.parametrize("window", [1, 3])
def test_a_point_beyond_the_window_changes_nothing(window):
    # One layer, inputs only (no previous directions): the output at point
    # t depends on the inputs at points t - window + 1 .. t alone.
    model = eval_double(TransformerSrcOnlyModel,
                        dict(attention_window=window, n_layers_e=1))
    inputs, streamlines = make_batch(model)
    changed = [x.clone() for x in inputs]
    changed[2][1] += 1.0
    with torch.no_grad():
        before = split_outputs(model, model(inputs, streamlines), LENGTHS)
        after = split_outputs(model, model(changed, streamlines), LENGTHS)
    seen_by = slice(1, 1 + window)
    assert not torch.allclose(after[2][seen_by], before[2][seen_by])
    torch.testing.assert_close(after[2][1 + window:], before[2][1 + window:],
                               **TIGHT)
    torch.testing.assert_close(after[2][:1], before[2][:1], **TIGHT)
    # Two layers see twice as far back (less the shared point).
    deep = eval_double(TransformerSrcOnlyModel,
                       dict(attention_window=window, n_layers_e=2))
    with torch.no_grad():
        before = split_outputs(deep, deep(inputs, streamlines), LENGTHS)
        after = split_outputs(deep, deep(changed, streamlines), LENGTHS)
    reach = 1 + 2 * (window - 1)
    assert not torch.allclose(after[2][reach], before[2][reach])
    torch.testing.assert_close(after[2][reach + 1:], before[2][reach + 1:],
                               **TIGHT)


def test_window_mask_is_a_band_aligned_on_the_last_queries():
    from dwi_ml.models.transformer_layers import window_mask
    square = window_mask(4, 4, 2, "cpu")
    assert square.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0],
                                     [0, 1, 1, 0], [0, 0, 1, 1]]
    # The last query of 5 keys sees the last 3.
    assert window_mask(1, 5, 3, "cpu").int().tolist() == [[0, 0, 1, 1, 1]]


def test_alibi_bias_decreases_with_the_lag_inside_the_band():
    from dwi_ml.models.transformer_layers import (
        alibi_bias,
        alibi_head_slopes,
        attention_lags,
    )
    slopes = alibi_head_slopes(4)
    assert slopes.tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    bias = alibi_bias(slopes[:2], attention_lags(3, 3, "cpu"), window=2)
    inf = float("-inf")
    assert bias.shape == (1, 2, 3, 3)
    assert bias[0, 0].tolist() == [[0, inf, inf], [-0.25, 0, inf],
                                   [inf, -0.25, 0]]
    assert bias[0, 1].tolist() == [[0, inf, inf], [-0.0625, 0, inf],
                                   [inf, -0.0625, 0]]
    # No window: every past key, further back costs more.
    assert alibi_bias(slopes[:1], attention_lags(1, 4, "cpu"))[0, 0].tolist() \
        == [[-0.75, -0.5, -0.25, 0]]


@pytest.mark.parametrize("window", [None, 3])
def test_buffer_lags_are_those_of_the_positions_kept(window):
    from dwi_ml.models.transformer_cache import KeyValueBuffer
    like = torch.zeros(2, 1)
    buffer = KeyValueBuffer.empty(like, 1, 1, window)
    for position in range(7):
        # Each position's keys hold the position itself.
        keys = torch.full((2, 1, 1, 1), float(position))
        kept_keys, _ = buffer.append(keys, keys)
        lags = buffer.lags()
        assert lags.shape == (1, kept_keys.shape[2])
        # position - lag is the position stored in each slot (a ring
        # once a window is full).
        assert (position - lags[0]).tolist() == \
            kept_keys[0, 0, :, 0].long().tolist()
    if window is None:
        # The last two positions as queries: the newest key is in the
        # first one's future.
        assert buffer.lags(2).tolist() == [[5, 4, 3, 2, 1, 0, -1],
                                           [6, 5, 4, 3, 2, 1, 0]]


def test_alibi_steep_slopes_attend_to_the_current_point_only():
    from dwi_ml.models.transformer_attention import recording_attention
    model = eval_double(TransformerSrcOnlyModel,
                        dict(position_encoding="alibi"))
    # Same weights without the bias: other outputs.
    plain = eval_double(TransformerSrcOnlyModel, dict(position_encoding="none"))
    plain.load_state_dict(model.state_dict())
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        assert not torch.allclose(model(inputs, streamlines),
                                  plain(inputs, streamlines))
        for layer in model.encoder.layers:
            layer.alibi_slopes *= 1e4
        with recording_attention(model) as records:
            model(inputs, streamlines)
    counts = [n - 1 for n in LENGTHS]
    for layer in records["encoder"]:
        weights = layer["self"][0]
        for row, count in enumerate(counts):
            torch.testing.assert_close(
                weights[row, :, :count, :count],
                torch.eye(count, dtype=weights.dtype).expand(
                    model.nheads, count, count), **TIGHT)


def test_dropout_is_active_in_training_only():
    model = make_model(TransformerSrcAndTgtModel, dropout=0.5).double()
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        model.train()
        first, second = (model(inputs, streamlines) for _ in range(2))
        model.eval()
        third, fourth = (model(inputs, streamlines) for _ in range(2))
    assert not torch.allclose(first, second)
    assert torch.equal(third, fourth)


@pytest.mark.parametrize("cls", [TransformerSrcOnlyModel,
                                 TransformerSrcAndTgtModel,
                                 OriginalTransformerModel])
def test_a_few_optimisation_steps_reduce_the_loss(cls):
    model = make_model(cls, nb_previous_dirs=1, dropout=0.0,
                       dg_args={"add_eos": True})
    inputs, streamlines = make_batch(model, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = total_loss(model.compute_loss(model(inputs, streamlines),
                                             streamlines)[0])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("cls, kwargs, match", [
    (TransformerSrcOnlyModel, dict(nheads=3), "nheads"),
    (TransformerSrcOnlyModel, dict(input_embedding_key="none"),
     "'input_embedding_key'.*4 values.*expects 16 \\(set by d_model\\)"),
    # Concatenated tokens: the source's share is what is left of d_model.
    (TransformerSrcAndTgtModel, dict(input_embedding_key="none"),
     "expects 8 \\(set by d_model - target_embedded_size\\)"),
    (TransformerSrcOnlyModel, dict(position_encoding="rope"),
     "position_encoding"),
    (TransformerSrcOnlyModel, dict(activation="tanh"), "activation"),
    (TransformerSrcOnlyModel, dict(attention_window=0), "attention_window"),
    (TransformerSrcOnlyModel, dict(input_embedding_key="cnn"), "grid"),
    (OriginalTransformerModel, dict(target_embedding_key="none"),
     "target_embedding_key"),
    (OriginalTransformerModel, dict(sos_token_type="eos"), "sos_token_type"),
    (TransformerSrcAndTgtModel, dict(target_embedded_size=16),
     "target_embedded_size"),
    (TransformerSrcAndTgtModel, dict(token_combination="add"),
     "target_embedded_size"),
    # Kept as they are, the target tokens must fill their share: the
    # message names the size to give.
    (TransformerSrcAndTgtModel, dict(target_embedding_key="none"),
     "'target_embedded_size'.*expected target_embedded_size 3, found 8"),
    (TransformerSrcAndTgtModel, dict(target_embedding_key="none",
                                     sos_token_type="class",
                                     target_embedded_size=3),
     "'target_embedded_size'.*expected target_embedded_size 4, found 3"),
])
def test_bad_model_args_give_user_errors(cls, kwargs, match):
    with pytest.raises(DwiMLUserError, match=match):
        make_model(cls, **kwargs)


def test_the_default_feed_forward_of_a_one_wide_model_is_one_wide():
    # Before: d_model // 2 = 0 refused 'ffnn_hidden_size', not given.
    model = make_model(TransformerSrcOnlyModel, d_model=1, nheads=1)
    assert model.ffnn_hidden_size == 1
    assert model.encoder.layers[0].linear1.out_features == 1


def test_sequences_longer_than_max_len_are_refused():
    model = make_model(TransformerSrcOnlyModel, max_len=4).eval()
    inputs, streamlines = make_batch(model)
    with pytest.raises(DwiMLUserError, match="max_len"):
        model(inputs, streamlines)
    cache = None
    with torch.no_grad(), pytest.raises(DwiMLUserError, match="max_len"):
        for t in range(5):
            _, cache = model.forward_step(
                inputs[0][t:t + 1].float(),
                [streamlines[0][:t + 1].float()], cache)


def test_tracker_refuses_max_length_beyond_max_len_before_tracking():
    """A streamline of n points takes n - 1 steps: max_len steps fit,
    one more is refused when the tracker is built, not mid-tracking."""
    from dwi_ml.tracking.propagation import BatchedTracker
    from dwi_ml.tracking.stopping import TrackingMask
    model = make_model(TransformerSrcOnlyModel, max_len=6)
    shape = (40, 40, 40)
    volume = np.random.default_rng(0).normal(
        size=shape + (NB_FEATURES,)).astype(np.float32)

    def tracker(max_length_mm):
        return BatchedTracker(model, volume, np.eye(4),
                              TrackingMask(shape, None), 1.0,
                              max_angle_deg=180, max_length_mm=max_length_mm,
                              track_forward_only=True)

    seeds = np.full((5, 3), 20.0, dtype=np.float32)
    result = tracker(6.0).track(seeds)
    assert result.streamlines._lengths.max() == 7
    with pytest.raises(DwiMLUserError,
                       match=r"max_length.*max_len=6 steps.*6 mm.*7 steps"):
        tracker(7.0)


# ----------------------------------------------------------------------
# Attention weights, for viewing
@pytest.mark.parametrize("cls, config", CONFIGS, ids=IDS)
def test_recorded_attention_weights_are_those_the_model_uses(cls, config):
    from dwi_ml.models.transformer_attention import (
        attention_maps,
        recording_attention,
    )
    model = eval_double(cls, config)
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        plain = model(inputs, streamlines)
        with recording_attention(model) as records:
            recorded = model(inputs, streamlines)
    # Recording changes nothing in the outputs.
    assert torch.equal(plain, recorded)
    counts = [n - 1 + model.add_eos for n in LENGTHS]
    nb_attentions = 0
    for stack, layers in records.items():
        for layer in layers:
            assert set(layer) == ({"self", "cross"} if stack == "decoder"
                                  else {"self"})
            for weights, values, output in layer.values():
                nb_attentions += 1
                n, heads, t, _ = weights.shape
                assert (n, heads, t) == (len(LENGTHS), model.nheads,
                                         max(counts))
                torch.testing.assert_close(weights.sum(-1),
                                           weights.new_ones(n, heads, t),
                                           **TIGHT)
                future = torch.ones(t, t, dtype=torch.bool).triu(1)
                assert torch.all(weights[..., future] == 0)
                window = model.attention_window
                if window is not None:
                    # Keys window or more points back get nothing.
                    too_old = torch.ones(t, t, dtype=torch.bool).tril(-window)
                    assert too_old.any()
                    assert torch.all(weights[..., too_old] == 0)
                for row, count in enumerate(counts):
                    # Real queries give padding nothing.
                    assert torch.all(weights[row, :, :count, count:] == 0)
                # The kernel's output is these weights applied to values.
                torch.testing.assert_close(weights @ values, output, **TIGHT)
    assert nb_attentions == model.n_layers_e + (
        2 * model.n_layers_d if cls is OriginalTransformerModel else 0)
    maps, map_counts = attention_maps(model, inputs, streamlines)
    assert list(map_counts) == counts
    assert maps["encoder"].shape == (model.n_layers_e, len(LENGTHS),
                                     model.nheads, max(counts), max(counts))
    # After the block, layers no longer record.
    assert all(layer.attention_records is None
               for layer in model.encoder.layers)
