"""Learn2track: shapes, previous directions, packing, steps, save/load."""
import json
import os

import numpy as np
import pytest
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import (
    Learn2TrackModel,
    MainModelAbstract,
    length_groups,
    load_model_from_params_and_state,
)
from dwi_ml.models.directions import (
    compute_direction_targets,
    compute_last_previous_dirs,
    compute_previous_dirs,
)
from dwi_ml.training.trainer_optimization import combine_losses
from tests.tolerances import EPS64, rounding_atol

NB_FEATURES = 4
LENGTHS = (5, 3, 7)


def make_batch(lengths=LENGTHS, seed=0):
    """Random walks (voxel space, corner origin) and their inputs."""
    generator = torch.Generator().manual_seed(seed)
    streamlines = [10 + torch.cumsum(torch.randn(n, 3, generator=generator),
                                     0) for n in lengths]
    inputs = [torch.randn(n, NB_FEATURES, generator=generator)
              for n in lengths]
    return inputs, streamlines


def make_batch64(lengths=LENGTHS):
    """make_batch in float64: packed and one-by-one runs use matrices of
    different sizes, hence kernels that round differently in float32."""
    return tuple([x.double() for x in tensors] for tensors in make_batch(lengths))


def float64_recurrent_atol(values, widest=32):
    """Rounding bound of RNN results: over at most max(LENGTHS) steps (and
    as many back), each a sum of at most ``widest`` products (32: no layer
    is wider; the model's input width when it is wider), in values of the
    size of ``values``."""
    return rounding_atol(float(values.abs().max()),
                         2 * max(LENGTHS) * widest, eps=EPS64)


def make_model(**kwargs):
    torch.manual_seed(0)
    args = dict(experiment_name="test", nb_features=NB_FEATURES,
                rnn_layer_sizes=[8, 6])
    args.update(kwargs)
    return Learn2TrackModel(**args)


CONFIGS = [
    dict(rnn_key="lstm", use_skip_connection=False, use_layer_norm=False),
    dict(rnn_key="gru", use_skip_connection=True, use_layer_norm=True),
    dict(rnn_key="lstm", input_embedding_key="linear",
         input_embedding_size=5, nb_previous_dirs=2, dropout=0.2),
    dict(rnn_key="gru", nb_previous_dirs=1,
         dg_key="sphere-classification", dg_args={"add_eos": True}),
    dict(rnn_key="lstm", neighborhood_type="axes", neighborhood_radius=1,
         neighborhood_resolution=1.5, dg_key="fisher-von-mises",
         dg_args={"add_eos": True, "eos_weight": 0.5}),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_output_shapes_and_loss(config):
    model = make_model(**config)
    nb_neighbours = 7 if config.get("neighborhood_type") else 1
    assert model.input_size == NB_FEATURES * nb_neighbours
    generator = torch.Generator().manual_seed(0)
    streamlines = make_batch()[1]
    inputs = [torch.randn(len(s), model.input_size, generator=generator)
              for s in streamlines]
    outputs = model(inputs, streamlines)
    add_eos = config.get("dg_args", {}).get("add_eos", False)
    nb_rows = sum(LENGTHS) - (0 if add_eos else len(LENGTHS))
    assert outputs.shape == (nb_rows, model.output_size)
    expected_width = {"cosine-regression": 3, "sphere-classification": 724,
                      "fisher-von-mises": 4}[model.dg_key] + add_eos
    assert model.output_size == expected_width
    expected_rnn_out = 14 if model.use_skip_connection else 6
    assert model.direction_getter.input_size == expected_rnn_out
    losses, n_points = model.compute_loss(outputs, streamlines)
    loss, named = combine_losses(losses)
    assert n_points == nb_rows and torch.isfinite(loss)
    assert sorted(named) == (["direction", "eos"] if add_eos else [])


def hand_previous_dirs(streamline, k, add_eos, normalize):
    points = streamline.numpy()
    directions = np.diff(points, axis=0)
    if normalize:
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows = []
    for t in range(len(points) if add_eos else len(points) - 1):
        row = [directions[t - j] if t - j >= 0 else np.zeros(3)
               for j in range(1, k + 1)]
        rows.append(np.concatenate(row))
    return np.array(rows)


@pytest.mark.parametrize("add_eos", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_previous_dirs_equal_hand_built_ones(add_eos, normalize):
    streamlines = make_batch()[1]
    expected = np.concatenate([hand_previous_dirs(s, 3, add_eos, normalize)
                               for s in streamlines])
    found = compute_previous_dirs(streamlines, 3, add_eos, normalize)
    # The same float32 differences; normalising adds a norm (4 roundings)
    # and a division.
    atol = rounding_atol(np.abs(expected).max(), 5)
    np.testing.assert_allclose(found.numpy(), expected, rtol=0, atol=atol)
    # At the tracker's steps, same rows from partial streamlines.
    partials = [streamlines[0][:1], streamlines[1][:3], streamlines[2][:5]]
    last = compute_last_previous_dirs(partials, 3, normalize)
    expected_last = [hand_previous_dirs(s, 3, True, normalize)[-1]
                     for s in partials]
    np.testing.assert_allclose(last.numpy(), expected_last, rtol=0,
                               atol=atol)


def test_direction_targets_with_eos():
    streamlines = [torch.tensor([[0., 0., 0.], [1., 0., 0.], [1., 2., 0.]]),
                   torch.tensor([[5., 5., 5.], [5., 5., 6.]])]
    target_dirs, eos_targets = compute_direction_targets(streamlines, True)
    np.testing.assert_array_equal(
        target_dirs.numpy(),
        [[1, 0, 0], [0, 2, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(eos_targets.numpy(), [0, 0, 1, 0, 1])
    target_dirs, eos_targets = compute_direction_targets(streamlines, False)
    assert eos_targets is None and target_dirs.shape == (3, 3)


@pytest.mark.parametrize("config", CONFIGS[:4])
def test_packed_forward_equals_each_streamline_alone(config):
    model = make_model(**config).double().eval()
    inputs, streamlines = make_batch64()
    with torch.no_grad():
        batch_outputs = model(inputs, streamlines)
        alone = torch.cat([model([x], [s])
                           for x, s in zip(inputs, streamlines)])
    torch.testing.assert_close(batch_outputs, alone, rtol=0,
                               atol=float64_recurrent_atol(batch_outputs))


@pytest.mark.parametrize("lengths", [(2, 30, 3, 29, 5, 31, 4, 2, 28, 6),
                                     (20, 19, 21, 18, 20)])
def test_length_groups_give_each_streamline_its_own_outputs(lengths,
                                                           monkeypatch):
    # At 5 padded points a group, the first batch runs in 3 groups (of
    # 30 29 28 27 | 5 4 3 | 2 1 1 predictions: 141 padded points + 15,
    # against 300 + 5 in one), the second in one: both equal each
    # streamline alone.
    monkeypatch.setattr(length_groups, "GROUP_COST", 5)
    monkeypatch.setattr(length_groups, "MULTITHREAD_GROUP_COST", 5)
    groups = length_groups.PaddedGroups(torch.tensor(lengths) - 1)
    assert len(groups.shapes) == (3 if max(lengths) > 21 else 1)
    model = make_model(**CONFIGS[1]).double().eval()
    inputs, streamlines = make_batch64(lengths)
    with torch.no_grad():
        batch_outputs = model(inputs, streamlines)
        alone = torch.cat([model([x], [s])
                           for x, s in zip(inputs, streamlines)])
    atol = rounding_atol(float(batch_outputs.abs().max()),
                         2 * max(lengths) * 32, eps=EPS64)
    torch.testing.assert_close(batch_outputs, alone, rtol=0, atol=atol)


# Settings a tracker meets too: many non-normalised previous directions
# through the linear embedding, no skip connection over 3 layers, the cnn
# embedding on a grid, axes of 2 layers, and the other getters with EOS.
STEP_CONFIGS = CONFIGS[1:] + [
    dict(rnn_key="lstm", rnn_layer_sizes=[8, 6, 4], use_skip_connection=False,
         nb_previous_dirs=5, normalize_prev_dirs=False,
         prev_dirs_embedding_key="linear", prev_dirs_embedding_size=7),
    dict(rnn_key="gru", neighborhood_type="grid", neighborhood_radius=1,
         neighborhood_resolution=1.0, input_embedding_key="cnn",
         input_embedding_size=6, cnn_nb_filters=2, nb_previous_dirs=2,
         dg_key="gaussian-mixture", dg_args={"add_eos": True}),
    dict(rnn_key="lstm", neighborhood_type="axes", neighborhood_radius=2,
         neighborhood_resolution=0.5, dg_key="cosine-plus-l2-regression",
         dg_args={"add_eos": True}),
    dict(rnn_key="lstm", nb_previous_dirs=1, dropout=0.5,
         dg_key="smooth-sphere-classification",
         dg_args={"add_eos": True, "sphere": "repulsion100"}),
]


@pytest.mark.parametrize("config", STEP_CONFIGS)
def test_step_by_step_reproduces_full_sequence(config):
    model = make_model(**config).double().eval()
    streamlines = make_batch64()[1]
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(len(s), model.input_size, generator=generator,
                          dtype=torch.float64) for s in streamlines]
    with torch.no_grad():
        full_outputs = model(inputs, streamlines)
        atol = float64_recurrent_atol(full_outputs,
                                      max(32, model.input_size))
        full = torch.split(full_outputs,
                           [n - 1 + model.add_eos for n in LENGTHS])
        # Tracking all three at once: longest one, others stop early.
        active = [0, 1, 2]
        hidden = None
        for t in range(max(LENGTHS) - 1 + model.add_eos):
            outputs, hidden = model.forward_step(
                torch.stack([inputs[i][t] for i in active]),
                [streamlines[i][:t + 1] for i in active], hidden)
            for row, i in enumerate(active):
                torch.testing.assert_close(outputs[row], full[i][t],
                                           rtol=0, atol=atol)
            keep = np.array([t + 1 < len(full[i]) for i in active])
            active = [i for i, kept in zip(active, keep) if kept]
            hidden = model.select_hidden_states(hidden, keep)


def test_select_hidden_states_with_indices_reorders():
    model = make_model(rnn_key="lstm").eval()
    inputs, streamlines = make_batch()
    with torch.no_grad():
        _, hidden = model.forward_step(torch.stack([x[0] for x in inputs]),
                                       [s[:1] for s in streamlines])
    selected = model.select_hidden_states(hidden, torch.tensor([2, 0]))
    for layer, new_layer in zip(hidden, selected):
        for state, new_state in zip(layer, new_layer):
            assert torch.equal(new_state, state[:, [2, 0]])


def test_gradients_reach_the_right_input_rows():
    # The numpy-index pitfall: a numpy array used as an index and later
    # modified in place would send gradients to the wrong rows.
    model = make_model(nb_previous_dirs=2).double()
    inputs, streamlines = make_batch64()
    inputs = [x.requires_grad_() for x in inputs]
    loss, n_points = model.compute_loss(model(inputs, streamlines),
                                        streamlines)
    (loss * n_points).backward()
    batch_grads = [x.grad.clone() for x in inputs]
    for x, s, grad in zip(inputs, streamlines, batch_grads):
        x.grad = None
        alone_loss, alone_n = model.compute_loss(model([x], [s]), [s])
        (alone_loss * alone_n).backward()
        torch.testing.assert_close(grad, x.grad, rtol=0,
                                   atol=float64_recurrent_atol(grad))
        assert torch.all(grad[-1] == 0) and torch.any(grad[:-1] != 0)

    hidden = (torch.randn(1, 4, 3, requires_grad=True),)
    keep = np.array([1, 3])
    selected = model.select_hidden_states(hidden, keep)
    keep[:] = [0, 2]
    selected[0].sum().backward()
    assert hidden[0].grad[0, :, 0].tolist() == [0, 1, 0, 1]


def test_a_few_optimisation_steps_reduce_the_loss():
    model = make_model(nb_previous_dirs=1, dg_args={"add_eos": True})
    inputs, streamlines = make_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss, _ = combine_losses(model.compute_loss(model(inputs, streamlines),
                                                    streamlines)[0])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = make_model(step_size=0.5, nb_previous_dirs=2,
                       input_embedding_key="linear", input_embedding_size=5,
                       dg_key="sphere-classification",
                       dg_args={"add_eos": True, "sphere": "repulsion100"})
    model.eval()
    folder = str(tmp_path / "best_model")
    model.save_params_and_state(folder)

    def refuse_constant(name):
        raise ValueError(f"non-strict JSON constant {name}")
    with open(os.path.join(folder, "parameters.json")) as f:
        params = json.load(f, parse_constant=refuse_constant)
    assert params == model.params_for_checkpoint
    assert params["dg_args"] == {"add_eos": True, "eos_weight": 1.0,
                                 "dropout": 0.0, "sphere": "repulsion100",
                                 "eos_only_at_fibre_ends": False}
    with open(os.path.join(folder, "model_type.txt")) as f:
        assert f.read().strip() == "Learn2TrackModel"
    state = torch.load(os.path.join(folder, "model_state.pt"),
                       weights_only=True)
    assert set(state) == set(model.state_dict())
    assert sorted(os.listdir(folder)) == [
        "model_state.pt", "model_type.txt", "parameters.json"]

    loaded = Learn2TrackModel.load_model_from_params_and_state(folder, "cpu")
    assert loaded.device == torch.device("cpu") and not loaded.training
    inputs, streamlines = make_batch()
    with torch.no_grad():
        assert torch.equal(model(inputs, streamlines),
                           loaded(inputs, streamlines))
    assert isinstance(load_model_from_params_and_state(folder),
                      MainModelAbstract)


def test_load_errors(tmp_path):
    with pytest.raises(DwiMLUserError, match="model_type.txt"):
        load_model_from_params_and_state(str(tmp_path))
    folder = str(tmp_path / "model")
    make_model().save_params_and_state(folder)
    with open(os.path.join(folder, "model_type.txt"), "w") as f:
        f.write("NoSuchModel\n")
    with pytest.raises(DwiMLUserError, match="NoSuchModel"):
        load_model_from_params_and_state(folder)


def test_a_diverged_model_is_refused_at_load(tmp_path):
    # Its NaN reached the evaluation's JSON writer or the tracker's
    # indexing as tracebacks; now one line names the weight.
    model = make_model()
    with torch.no_grad():
        model.rnn.rnn_layers[0].weight_hh_l0[1, 2] = float("inf")
    folder = str(tmp_path / "model")
    model.save_params_and_state(folder)
    with pytest.raises(DwiMLUserError) as error:
        load_model_from_params_and_state(folder)
    assert str(error.value) == (
        f"model weights '{folder}/model_state.pt': expected finite weights, "
        "found NaN or Inf in 'rnn.rnn_layers.0.weight_hh_l0' (a diverged "
        "training); use another epoch's model.")


@pytest.mark.parametrize("kwargs, match", [
    (dict(step_size=0.5, nb_points=20), "step_size, nb_points"),
    (dict(step_size=float("nan")), "step_size"),
    (dict(nb_features=0), "nb_features"),
    (dict(nb_previous_dirs=-1), "nb_previous_dirs"),
    (dict(neighborhood_type="axes"), "neighborhood_radius"),
    (dict(neighborhood_type="sphere"), "neighborhood_type"),
    (dict(neighborhood_radius=2), "neighborhood_radius"),
    (dict(input_embedding_key="linear"), "input_embedding_size"),
    (dict(input_embedding_key="cnn"), "input_embedding_key"),
    (dict(rnn_key="transformer"), "rnn_key"),
    (dict(rnn_layer_sizes=[]), "rnn_layer_sizes"),
    (dict(rnn_layer_sizes=[8, 0]), "rnn_layer_sizes"),
    (dict(dropout=1.0), "dropout"),
    (dict(dg_key="mixture"), "dg_key"),
    (dict(dg_args={"kappa": 3}), "dg_args"),
    (dict(experiment_name=""), "experiment_name"),
])
def test_bad_model_args_give_user_errors(kwargs, match):
    with pytest.raises(DwiMLUserError, match=match):
        make_model(**kwargs)


def test_bad_batches_give_user_errors():
    model = make_model()
    inputs, streamlines = make_batch()
    with pytest.raises(DwiMLUserError, match=r"shape \(n_i, 4\) .*found a "
                                             r"tensor of 3 columns"):
        model([torch.ones(5, 3)], [streamlines[0]])
    with pytest.raises(DwiMLUserError, match="at least 2 points"):
        model([inputs[0][:1]], [streamlines[0][:1]])
