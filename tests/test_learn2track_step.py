"""Learn2track's tracking step: the stacked RNN's cell path, the lockstep
previous directions and the model's dtype walk give the general paths'
values.

``StackedRNN.forward_step`` runs ``torch.lstm_cell``/``torch.gru_cell``
(torch's native kernels) where ``forward`` runs ``nn.LSTM``/``nn.GRU``
(oneDNN on CPU): the same arithmetic summed in other orders, so values agree
within the rounding of the sums, chained over the steps.
"""
import pytest
import torch

from dwi_ml.models import Learn2TrackModel
from dwi_ml.models.directions import compute_last_previous_dirs
from dwi_ml.models.stacked_rnn import StackedRNN
from dwi_ml.models.transformers import TransformerSrcOnlyModel
from tests.tolerances import EPS32, EPS64, rounding_atol

NB_STEPS = 4
NB_SEQUENCES = 7
INPUT_SIZE = 5

STACKS = [
    dict(rnn_key="lstm", layer_sizes=[8], use_skip_connection=False,
         use_layer_norm=False),
    dict(rnn_key="lstm", layer_sizes=[8, 6], use_skip_connection=True,
         use_layer_norm=True),
    dict(rnn_key="gru", layer_sizes=[6], use_skip_connection=True,
         use_layer_norm=True),
    dict(rnn_key="gru", layer_sizes=[8, 6, 4], use_skip_connection=False,
         use_layer_norm=False),
    # The reference's stacking: ReLUs between layers, and with skip
    # connections the input read again by the later layers.
    dict(rnn_key="lstm", layer_sizes=[8, 6], use_skip_connection=True,
         use_layer_norm=True, stacking="reference"),
    dict(rnn_key="gru", layer_sizes=[8, 6, 4], use_skip_connection=False,
         use_layer_norm=False, stacking="reference"),
]


def make_stack(dtype, dropout=0.0, **options):
    torch.manual_seed(0)
    return StackedRNN(input_size=INPUT_SIZE, dropout=dropout,
                      **options).to(dtype)


def step_by_step(stack, sequence):
    """forward_step over the (L, N, F) sequence: (L, N, output_size), and
    the last states."""
    outputs, states = [], None
    for inputs in sequence:
        step_outputs, states = stack.forward_step(inputs, states)
        outputs.append(step_outputs)
    return torch.stack(outputs), states


def recurrent_atol(values, layer_sizes, eps, gain=1.0, input_width=None):
    """Each step's gates are sums of at most ``widest`` products (input,
    hidden and two biases); the error of a step carries into the next
    through the state: ``NB_STEPS`` such sums, in each of the two
    computations compared; the layer norms multiply it by ``gain`` (a ReLU
    does not grow it). ``input_width``: the widest layer input (default:
    the stack's input or a layer's output)."""
    widest = (input_width or max(INPUT_SIZE, *layer_sizes)) \
        + max(layer_sizes) + 2
    return gain * rounding_atol(float(values.detach().abs().max()),
                                2 * NB_STEPS * widest, eps=eps)


def layer_norm_gain(stack, sequence):
    """How much the stack's layer norms may multiply an error of their
    inputs: ``(x - mean(x)) / std(x)`` moves by up to twice the error
    divided by the row's std (its weights are 1 here), layer after layer.
    The stds are those of ``forward`` over ``sequence``."""
    gains = []

    def record(norm, inputs):
        gains.append(2 / float(inputs[0].std(-1, unbiased=False).min()))

    hooks = [post_layer[0].register_forward_pre_hook(record)
             for post_layer in stack.post_layers
             if isinstance(post_layer[0], torch.nn.LayerNorm)]
    with torch.no_grad():
        stack(sequence)
    for hook in hooks:
        hook.remove()
    return float(torch.tensor(gains, dtype=torch.float64).clamp_min(1).prod())


def flat_states(states):
    return [tensor for state in states
            for tensor in (state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("options", STACKS)
@pytest.mark.parametrize("dtype, eps", [(torch.float64, EPS64),
                                        (torch.float32, EPS32)])
def test_steps_reproduce_forward(options, dtype, eps):
    stack = make_stack(dtype, **options).eval()
    sequence = torch.randn(NB_STEPS, NB_SEQUENCES, INPUT_SIZE,
                           generator=torch.Generator().manual_seed(1),
                           dtype=dtype)
    with torch.no_grad():
        expected, expected_states = stack(sequence)
        found, states = step_by_step(stack, sequence)
    atol = recurrent_atol(expected, options["layer_sizes"], eps,
                          layer_norm_gain(stack, sequence),
                          max(rnn.input_size for rnn in stack.rnn_layers))
    assert found.shape == expected.shape
    torch.testing.assert_close(found, expected, rtol=0, atol=atol)
    for state, expected_state in zip(flat_states(states),
                                     flat_states(expected_states)):
        assert state.shape == expected_state.shape  # (1, N, layer_size)
        torch.testing.assert_close(state, expected_state, rtol=0,
                                   atol=atol)


def test_step_in_training_mode_draws_forward_dropout():
    """In training mode the step applies the same dropout (same draws from
    the same seed) as ``forward`` over a one-point sequence."""
    stack = make_stack(torch.float64, dropout=0.5, **STACKS[1]).train()
    inputs = torch.randn(NB_SEQUENCES, INPUT_SIZE, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    expected, _ = stack(inputs[None])
    torch.manual_seed(3)
    found, _ = stack.forward_step(inputs)
    # Dropped values are exact zeros in both.
    assert torch.equal(found == 0, expected[0] == 0)
    assert 0 < int((found == 0).sum()) < found.numel()
    torch.testing.assert_close(
        found, expected[0], rtol=0,
        atol=recurrent_atol(expected, STACKS[1]["layer_sizes"], EPS64,
                            layer_norm_gain(stack.eval(), inputs[None])))


def test_step_is_the_same_in_every_run():
    stack = make_stack(torch.float32, **STACKS[1]).eval()
    sequence = torch.randn(NB_STEPS, NB_SEQUENCES, INPUT_SIZE,
                           generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        first, _ = step_by_step(stack, sequence)
        second, _ = step_by_step(stack, sequence)
    assert torch.equal(first, second)


@pytest.mark.parametrize("normalize", [False, True])
def test_lockstep_previous_dirs_equal_list_ones_bit_for_bit(normalize):
    generator = torch.Generator().manual_seed(5)
    points = 10 + torch.cumsum(torch.randn(9, 4, 3, generator=generator), 1)
    points[0, 2] = points[0, 1]  # a zero step stays zero
    for nb_points in (1, 2, 4):
        partial = points[:, :nb_points]
        expected = compute_last_previous_dirs(list(partial), 3, normalize)
        found = compute_last_previous_dirs(partial, 3, normalize)
        assert torch.equal(found, expected)


@pytest.mark.parametrize("model_class",
                         [Learn2TrackModel, TransformerSrcOnlyModel])
def test_dtype_and_device_are_those_of_the_first_parameter(model_class):
    model = model_class("dtype", nb_features=3)
    for converted in (model, model.double()):
        first = next(converted.parameters())
        assert converted._first_parameter() is first
        assert converted.dtype == first.dtype
        assert converted.device == first.device
    assert model.dtype == torch.float64


def test_first_parameter_skips_submodules_set_to_none():
    model = Learn2TrackModel("dtype", nb_features=3)
    model.rnn = None  # held the first parameter
    first = next(model.parameters())
    assert first is model.direction_getter.layers[0].weight
    assert model._first_parameter() is first
