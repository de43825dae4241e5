"""Learn2track's "reference" stacking of its RNN layers is the reference
dwi_ml's StackedRNN: layer norm after each layer, then, between layers only,
dropout and a ReLU; with skip connections every later layer reads the
stack's input again, and the output is every layer's output, concatenated.
"reference" is the default; "plain" (ours before it, and what a model
saved before the option is) puts layer norm and dropout after every layer
and nothing else."""
import json
import os

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from dwi_ml.io_utils.manifest import write_manifest
from dwi_ml.models import Learn2TrackModel
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.models.stacked_rnn import StackedRNN
from tests.tolerances import EPS64, rounding_atol

INPUT_SIZE = 5
LAYER_SIZES = [8, 6, 4]


def make_stack(stacking, skip, norm, dropout=0.0):
    torch.manual_seed(0)
    stack = StackedRNN("lstm", INPUT_SIZE, LAYER_SIZES, skip, norm, dropout,
                       stacking).double()
    if norm:  # Weights other than 1 and 0, so that they count.
        for post_layer in stack.post_layers:
            torch.nn.init.uniform_(post_layer[0].weight, 0.5, 1.5)
            torch.nn.init.uniform_(post_layer[0].bias, -0.5, 0.5)
    return stack.eval()


def reference_stack(stack, inputs, skip, norm):
    """The reference's algorithm, on the stack's own weights."""
    outputs, sequence = [], inputs
    for index, rnn in enumerate(stack.rnn_layers):
        if index > 0 and skip:
            sequence = torch.cat([sequence, inputs], dim=-1)
        sequence, _ = rnn(sequence)
        if norm:
            ln = stack.post_layers[index][0]
            sequence = torch.nn.functional.layer_norm(
                sequence, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        if index < len(stack.rnn_layers) - 1:
            sequence = torch.relu(sequence)
        outputs.append(sequence)
    return torch.cat(outputs, dim=-1) if skip else sequence


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("norm", [False, True])
def test_reference_stacking_is_the_reference_algorithm(skip, norm):
    stack = make_stack("reference", skip, norm)
    inputs = torch.randn(9, 3, INPUT_SIZE, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found, _ = stack(inputs)
        expected = reference_stack(stack, inputs, skip, norm)
    # The same operations on the same values: the same bits.
    assert torch.equal(found, expected)
    expected_width = sum(LAYER_SIZES) if skip else LAYER_SIZES[-1]
    assert found.shape == (9, 3, expected_width) == (9, 3, stack.output_size)
    assert [rnn.input_size for rnn in stack.rnn_layers] == (
        [5, 8 + 5, 6 + 5] if skip else [5, 8, 6])
    # The last layer's output keeps its negative values; with skip
    # connections the others, after their ReLU, have none.
    assert (found[..., -LAYER_SIZES[-1]:] < 0).any()
    if skip:
        assert (found[..., :-LAYER_SIZES[-1]] >= 0).all()


def test_plain_stacking_has_no_relu_and_drops_out_after_every_layer():
    plain = make_stack("plain", True, True, dropout=0.3)
    reference = make_stack("reference", True, True, dropout=0.3)
    kinds = [[type(module).__name__ for module in post]
             for post in plain.post_layers]
    assert kinds == [["LayerNorm", "Dropout"]] * 3
    kinds = [[type(module).__name__ for module in post]
             for post in reference.post_layers]
    assert kinds == [["LayerNorm", "Dropout", "ReLU"]] * 2 + [["LayerNorm"]]


def test_packed_sequences_read_the_input_again_in_their_own_order():
    stack = make_stack("reference", True, True)
    generator = torch.Generator().manual_seed(2)
    sequences = [torch.randn(length, INPUT_SIZE, dtype=torch.float64,
                             generator=generator) for length in (7, 3, 5)]
    with torch.no_grad():
        packed, _ = stack(pack_sequence(sequences, enforce_sorted=False))
        padded, lengths = pad_packed_sequence(packed)
        for column, sequence in enumerate(sequences):
            alone, _ = stack(sequence[:, None])
            # Other batch sizes, other sums: each gate a sum of at most
            # 13 + 8 + 2 products, over 7 steps, in both; a row read from
            # another sequence would be off by far more.
            atol = rounding_atol(float(alone.abs().max()), 2 * 7 * 23,
                                 eps=EPS64)
            torch.testing.assert_close(padded[:lengths[column], column],
                                       alone[:, 0], rtol=0, atol=atol)


def test_a_model_saved_before_the_option_loads_as_plain(tmp_path):
    torch.manual_seed(0)
    new = Learn2TrackModel("m", nb_features=INPUT_SIZE, rnn_layer_sizes=[8, 6])
    assert new.params_for_checkpoint["rnn_stacking"] == "reference"
    new.save_params_and_state(str(tmp_path / "new"))
    assert load_model_from_params_and_state(
        str(tmp_path / "new")).rnn_stacking == "reference"
    model = Learn2TrackModel("m", nb_features=INPUT_SIZE,
                             rnn_layer_sizes=[8, 6], rnn_stacking="plain")
    folder = str(tmp_path / "model")
    model.save_params_and_state(folder)
    # As written before the option existed: no rnn_stacking key.
    params_path = os.path.join(folder, "parameters.json")
    with open(params_path) as f:
        params = json.load(f)
    del params["rnn_stacking"]
    with open(params_path, "w") as f:
        json.dump(params, f)
    write_manifest(folder)
    loaded = load_model_from_params_and_state(folder)
    assert loaded.rnn_stacking == "plain"
    inputs = torch.randn(4, 2, loaded.rnn.rnn_layers[0].input_size)
    with torch.no_grad():
        assert torch.equal(loaded.rnn(inputs)[0], model.eval().rnn(inputs)[0])
