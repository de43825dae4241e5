"""A stack of single-layer RNNs with their own sizes, on packed sequences.

Two ways of stacking the layers (``stacking``):

- ``"plain"``: each layer's output goes through layer norm (optional) and
  dropout, then feeds the next layer;
- ``"reference"``, as the reference dwi_ml's ``StackedRNN``: layer norm
  (optional) after each layer, then, between layers only, dropout and a
  ReLU; with skip connections every layer after the first also reads the
  stack's input, concatenated to the previous layer's output.

With skip connections the stack's output is the concatenation of every
layer's output; without, the last layer's.

Hidden states are a tuple with one entry per layer: ``(h, c)`` for LSTM,
``h`` for GRU, each tensor of shape ``(1, N, layer_size)`` as in
``torch.nn.LSTM``/``torch.nn.GRU``. Streamline ``j`` of the batch is
column ``j`` of every tensor.

A tracking step (one point of N sequences, :meth:`StackedRNN.forward_step`)
runs the layers' cell functions (``torch.lstm_cell``, ``torch.gru_cell``)
on their weights instead of ``torch.nn.LSTM``/``GRU``: on CPU those call
oneDNN, which builds a kernel for each new batch size (a tracking batch
shrinks through some 70 sizes as streamlines stop, 1.5 - 2 ms each the
first time) and costs 0.2 ms a call at one streamline, against 0.05 ms
for the cell. The cell gives torch's native values, those of ``nn.LSTM``
with oneDNN disabled: other last bits than ``forward``'s oneDNN ones, the
same in every run. Training keeps oneDNN (faster there).
"""
import functools
import logging
import os

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

# oneDNN keeps its last 1024 kernels (primitives) by default. Training's
# length groups meet a new (steps, sequences) shape at most RNN calls, so
# an LSTM kernel is seldom reused before it is evicted, and each one kept
# pins heap memory between the batches' large tensors that glibc cannot
# give back: with 1024 or 4096 entries, one epoch of 200 batches peaked
# ~450 MiB higher than with 32, and 3 epochs of 300 batches ~1.4 GiB
# higher, for more CPU, not less (bench/README.md, "Peak RSS of a CPU
# epoch"). 32 entries still keep the weights' reorders, used at every call
# (12 kernels for an LSTM [64, 64]). bfloat16 runs too: with 16384
# entries a bf16 epoch took longer and peaked 1.8 GiB higher.
ONEDNN_CACHE_CAPACITY = 32
_ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                           "DNNL_PRIMITIVE_CACHE_CAPACITY")


def set_onednn_cache_capacity(capacity=ONEDNN_CACHE_CAPACITY):
    """Give oneDNN's kernel cache ``capacity`` entries, unless the
    environment sets its size (either of oneDNN's names).

    oneDNN reads the variable when it builds its first kernel: this runs
    when this module is imported, before any RNN of dwi_ml runs (later in a
    process that already ran an RNN, it changes nothing). Kernels are the
    same whatever the cache's size: only their reuse changes.
    """
    if not any(variable in os.environ
               for variable in _ONEDNN_CACHE_VARIABLES):
        os.environ[_ONEDNN_CACHE_VARIABLES[0]] = str(capacity)


set_onednn_cache_capacity()

RNN_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
# Cell function of each RNN class: one time step of a layer,
# (inputs (N, F), state, w_ih, w_hh, b_ih, b_hh) -> new state.
RNN_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell}
STACKINGS = ("plain", "reference")
logger = logging.getLogger(__name__)


def _map_data(sequence, function):
    """Apply ``function`` to each point of a packed or (L, N, F) sequence."""
    if isinstance(sequence, PackedSequence):
        return sequence._replace(data=function(sequence.data))
    return function(sequence)


def _data(sequence):
    return sequence.data if isinstance(sequence, PackedSequence) else sequence


@functools.cache
def cpu_bf16_rnn_works(rnn_class):
    """Whether ``rnn_class`` runs forward and backward under CPU bfloat16
    autocast: oneDNN has no bfloat16 LSTM on CPUs without AVX-512, where
    torch's call fails ("could not create a primitive descriptor"). Asked
    once per class; a warning says when it does not.

    Gradients are on for the test, whatever the caller's mode: first asked
    under ``no_grad`` (a run resumed in its validation), the backward
    failed, and False stayed for the whole process."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            with torch.random.fork_rng(devices=[]):  # the run's draws kept
                layer = rnn_class(2, 2)
            inputs = torch.zeros(1, 1, 2, requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = layer(inputs)[0]
            outputs.float().sum().backward()
    except RuntimeError:
        logger.warning("This CPU has no bfloat16 %s (oneDNN needs AVX-512): "
                       "the RNN layers run in float32, the rest of the "
                       "model in bfloat16.", rnn_class.__name__)
        return False
    return True


def _needs_float32_rnn(rnn, sequence):
    """CPU bfloat16 autocast, on a CPU that cannot run ``rnn`` in it."""
    return (_data(sequence).device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not cpu_bf16_rnn_works(type(rnn)))


def _run_rnn(rnn, sequence, state):
    """``rnn(sequence, state)``, in float32 where the CPU has no bfloat16
    kernel for it (see :func:`cpu_bf16_rnn_works`)."""
    if not _needs_float32_rnn(rnn, sequence):
        return rnn(sequence, state)
    with torch.autocast("cpu", enabled=False):
        sequence = _map_data(sequence, lambda data: data.float())
        if state is not None:
            state = (tuple(part.float() for part in state)
                     if isinstance(state, tuple) else state.float())
        return rnn(sequence, state)


class StackedRNN(torch.nn.Module):
    """LSTM or GRU layers of sizes ``layer_sizes``.

    Parameters
    ----------
    rnn_key : "lstm" or "gru"
    input_size : int
    layer_sizes : list of int
    use_skip_connection : bool
        Output every layer's output, concatenated.
    use_layer_norm : bool
        Layer norm on each layer's output.
    dropout : float
        Dropout probability on each layer's output (training only; with
        ``"reference"`` stacking, between layers only).
    stacking : "plain" or "reference"
        See the module docstring.
    """

    def __init__(self, rnn_key, input_size, layer_sizes, use_skip_connection,
                 use_layer_norm, dropout, stacking="plain"):
        super().__init__()
        rnn_class = RNN_CLASSES[rnn_key]
        self.rnn_key = rnn_key
        self.use_skip_connection = use_skip_connection
        self.use_layer_norm = use_layer_norm
        # The reference's skip connection: later layers read the input too.
        self.inputs_to_every_layer = (stacking == "reference"
                                      and use_skip_connection)
        self.rnn_layers = torch.nn.ModuleList()
        self.post_layers = torch.nn.ModuleList()
        size = input_size
        for index, layer_size in enumerate(layer_sizes):
            self.rnn_layers.append(rnn_class(size, layer_size))
            post = [torch.nn.LayerNorm(layer_size) if use_layer_norm
                    else torch.nn.Identity()]
            is_last = index == len(layer_sizes) - 1
            if stacking == "plain":
                post.append(torch.nn.Dropout(dropout))
            elif not is_last:
                post += [torch.nn.Dropout(dropout), torch.nn.ReLU()]
            self.post_layers.append(torch.nn.Sequential(*post))
            size = layer_size + (input_size if self.inputs_to_every_layer
                                 else 0)
        self.output_size = (sum(layer_sizes) if use_skip_connection
                            else layer_sizes[-1])

    def forward(self, inputs, hidden_states=None):
        """Run the stack.

        Parameters
        ----------
        inputs : PackedSequence or torch.Tensor (L, N, input_size)
        hidden_states : tuple or None
            One state per layer (see module docstring); None starts at zero.

        Returns
        -------
        outputs : PackedSequence or torch.Tensor (L, N, output_size)
            Same kind as ``inputs``.
        hidden_states : tuple
            The new states, one per layer.
        """
        if hidden_states is None:
            hidden_states = (None,) * len(self.rnn_layers)
        layer_outputs = []
        new_states = []
        sequence = inputs
        for layer, (rnn, post_layer, state) in enumerate(
                zip(self.rnn_layers, self.post_layers, hidden_states)):
            if layer > 0 and self.inputs_to_every_layer:
                sequence = _map_data(sequence, lambda data: torch.cat(
                    [data, _data(inputs)], dim=-1))
            sequence, new_state = _run_rnn(rnn, sequence, state)
            sequence = _map_data(sequence, post_layer)
            layer_outputs.append(_data(sequence))
            new_states.append(new_state)
        # Skip connection: every layer's output (one layer: it already is).
        if self.use_skip_connection and len(layer_outputs) > 1:
            sequence = _map_data(
                sequence, lambda _: torch.cat(layer_outputs, dim=-1))
        return sequence, tuple(new_states)

    def forward_step(self, inputs, hidden_states=None):
        """One time step of N sequences: ``forward`` of length-1 sequences,
        by the layers' cell functions (see module docstring).

        Parameters
        ----------
        inputs : torch.Tensor (N, input_size)
        hidden_states : tuple or None
            As in :meth:`forward`.

        Returns
        -------
        outputs : torch.Tensor (N, output_size)
        hidden_states : tuple
            The new states, one per layer, shaped as :meth:`forward`'s.
        """
        cell = RNN_CELLS[self.rnn_key]
        is_lstm = self.rnn_key == "lstm"
        layer_outputs = []
        new_states = []
        outputs = inputs
        for layer, (rnn, post_layer) in enumerate(zip(self.rnn_layers,
                                                      self.post_layers)):
            if layer > 0 and self.inputs_to_every_layer:
                outputs = torch.cat([outputs, inputs], dim=1)
            if hidden_states is None:
                zeros = outputs.new_zeros((len(outputs), rnn.hidden_size))
                state = (zeros, zeros) if is_lstm else zeros
            elif is_lstm:
                state = (hidden_states[layer][0][0],
                         hidden_states[layer][1][0])
            else:
                state = hidden_states[layer][0]
            # _flat_weights: the list nn.LSTM/GRU's own forward gives its
            # kernel (w_ih, w_hh, b_ih, b_hh), kept current by the module;
            # all_weights rebuilds it at each call.
            new_state = cell(outputs, state, *rnn._flat_weights)
            if is_lstm:
                outputs = new_state[0]
                new_states.append((outputs.unsqueeze(0),
                                   new_state[1].unsqueeze(0)))
            else:
                outputs = new_state
                new_states.append(outputs.unsqueeze(0))
            outputs = self._post_layer_step(post_layer, outputs)
            layer_outputs.append(outputs)
        if self.use_skip_connection and len(layer_outputs) > 1:
            outputs = torch.cat(layer_outputs, dim=-1)
        return outputs, tuple(new_states)

    def _post_layer_step(self, post_layer, outputs):
        """``post_layer(outputs)``; in eval mode (no dropout) its layer
        norm's kernel alone (``torch.layer_norm`` is what ``LayerNorm`` and
        ``F.layer_norm`` call, without their Python layers), then its ReLU
        if it has one."""
        if self.training:
            return post_layer(outputs)
        if self.use_layer_norm:
            norm = post_layer[0]
            outputs = torch.layer_norm(outputs, norm.normalized_shape,
                                       norm.weight, norm.bias, norm.eps)
        if isinstance(post_layer[-1], torch.nn.ReLU):
            outputs = torch.relu(outputs)
        return outputs


def select_hidden_states(hidden_states, keep):
    """Keep the hidden states of some streamlines only.

    Parameters
    ----------
    hidden_states : tuple
        As returned by :class:`StackedRNN`.
    keep : bool mask (N,) or int indices, torch tensor, numpy array or list
        Streamlines to keep, in the order wanted.

    Returns
    -------
    tuple
        The same structure, with ``len(kept)`` streamlines.

    Notes
    -----
    A numpy ``keep`` is copied into a new tensor: ``torch.as_tensor`` would
    share its memory, and autograd keeps the index for the backward pass, so
    a later in-place change of the caller's array would send gradients to
    the wrong streamlines.
    """
    if isinstance(keep, np.ndarray) or isinstance(keep, (list, tuple)):
        keep = torch.tensor(np.asarray(keep))
    if keep.dtype == torch.bool:
        keep = torch.nonzero(keep).squeeze(1)

    def select(tensor):
        return tensor.index_select(1, keep.to(tensor.device))

    return tuple(tuple(select(t) for t in state) if isinstance(state, tuple)
                 else select(state) for state in hidden_states)
