"""Learn2track: a recurrent network that predicts the next direction.

For each prediction point (see :mod:`dwi_ml.models.directions`)::

    input at t  -> input embedding --------------.
    previous dirs -> previous-directions embedding -> concatenated
                -> stacked RNN -> direction getter -> output row

Training (whole streamlines, :meth:`Learn2TrackModel.forward`)
    The batch's streamlines, sorted by length, run in a few padded blocks
    (:mod:`dwi_ml.models.length_groups`; exact for a unidirectional RNN,
    and faster than packed sequences on CPU). Outputs are
    ``(M, output_size)``, the predictions of streamline 0, then of
    streamline 1, etc. The loss is
    :meth:`Learn2TrackModel.compute_loss` with the same streamlines.

Tracking (one step at a time, :meth:`Learn2TrackModel.forward_step`)
    At step ``t`` the tracker gives, for its N active streamlines, the input
    interpolated at their last point, the streamlines so far (to read their
    previous directions) and the hidden states returned at step ``t - 1``
    (None at the seed). It gets the outputs for that point and the new
    hidden states, then turns outputs into directions with
    :meth:`Learn2TrackModel.get_tracking_directions`. When streamlines stop,
    :meth:`Learn2TrackModel.select_hidden_states` keeps the others' states,
    in the same order as the streamlines it keeps. Step after step, the
    outputs equal those of ``forward`` over the complete streamlines, to
    float rounding (the step runs the RNN cells' native kernels, see
    :meth:`StackedRNN.forward_step
    <dwi_ml.models.stacked_rnn.StackedRNN.forward_step>`).
    Put the model in eval mode (no dropout) and under ``torch.no_grad()``.
"""
import logging

import torch

from dwi_ml.data.processing.input_spec import add_input_spec_args
from dwi_ml.io_utils.arg_checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.cnn_embedding import check_cnn_neighborhood, make_cnn_embedding
from dwi_ml.models.direction_getter_model import DirectionGetterModel
from dwi_ml.models.direction_getters import (
    add_direction_getter_args,
    make_direction_getter,
)
from dwi_ml.models.embeddings import (
    EMBEDDING_KEYS,
    INPUT_EMBEDDING_KEYS,
    make_embedding,
    make_prev_dirs_embedding,
)
from dwi_ml.models.length_groups import PaddedGroups
from dwi_ml.models.model_io import register_model
from dwi_ml.models.stacked_rnn import (
    RNN_CLASSES,
    STACKINGS,
    StackedRNN,
    select_hidden_states,
)

logger = logging.getLogger(__name__)


@register_model
class Learn2TrackModel(DirectionGetterModel):
    """Input embedding, stacked LSTM/GRU and a direction getter.

    Parameters
    ----------
    experiment_name, nb_features, step_size, nb_points, compress :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`.
    neighborhood_type, neighborhood_radius, neighborhood_resolution :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`.
    nb_previous_dirs, normalize_prev_dirs :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`.
    input_embedding_key : "none", "linear" or "cnn"
        Embedding of each point's input (before previous directions are
        appended); "cnn" (:class:`~dwi_ml.models.cnn_embedding.CNNEmbedding`)
        needs a "grid" neighbourhood.
    input_embedding_size : int or None
        Output width of the "linear" and "cnn" embeddings (required by
        them; None with "none").
    cnn_nb_filters : int
        Channels of the "cnn" embedding's convolution.
    prev_dirs_embedding_key : "none" or "linear"
        Embedding of each point's ``3 k`` previous-direction values.
    prev_dirs_embedding_size : int or None
        Its output width; None is ``3 k``.
    rnn_key : "lstm" or "gru"
    rnn_layer_sizes : list of int
        Hidden size of each RNN layer.
    use_skip_connection : bool
        Feed the direction getter every layer's output, concatenated.
    use_layer_norm : bool
        Layer norm on each RNN layer's output.
    dropout : float
        Dropout on the RNN layers' outputs, in [0, 1): between layers only
        with ``rnn_stacking="reference"`` (none with one layer; a warning
        says so when the model is trained), after each layer with
        ``"plain"``.
    rnn_stacking : "reference" or "plain"
        How the RNN layers are stacked; "reference" is the reference
        dwi_ml's (see :mod:`dwi_ml.models.stacked_rnn`). A model saved
        before this option existed is "plain" (:attr:`SAVED_BEFORE`).
    dg_key : str
        Direction getter, a key of
        :data:`dwi_ml.models.direction_getters.DIRECTION_GETTERS`.
    dg_args : dict or None
        Its arguments: ``add_eos``, ``eos_weight`` (and ``sphere``).
    """

    # The value of each parameter added since the first saved models, for
    # a model saved before it existed (see model_io).
    SAVED_BEFORE = {"rnn_stacking": "plain"}
    # It learns faster at 0.005 than at 0.001 (docs/training.md).
    default_learning_rate = 5e-3

    def __init__(self, experiment_name, nb_features, step_size=None,
                 nb_points=None, compress=None, neighborhood_type=None,
                 neighborhood_radius=None, neighborhood_resolution=None,
                 nb_previous_dirs=0, normalize_prev_dirs=True,
                 input_embedding_key="none", input_embedding_size=None,
                 cnn_nb_filters=8, prev_dirs_embedding_key="none",
                 prev_dirs_embedding_size=None, rnn_key="lstm",
                 rnn_layer_sizes=(100, 100),
                 use_skip_connection=True, use_layer_norm=True, dropout=0.0,
                 dg_key="cosine-regression", dg_args=None,
                 rnn_stacking="reference"):
        super().__init__(experiment_name, nb_features, step_size, nb_points,
                         compress, neighborhood_type, neighborhood_radius,
                         neighborhood_resolution, nb_previous_dirs,
                         normalize_prev_dirs)
        self.input_embedding_key = check_choice(
            "input_embedding_key", input_embedding_key, INPUT_EMBEDDING_KEYS)
        check_cnn_neighborhood(input_embedding_key, self.input_spec.neighborhood)
        self.cnn_nb_filters = check_int("cnn_nb_filters", cnn_nb_filters, 1)
        if input_embedding_key == "cnn":
            self.embedding = make_cnn_embedding(
                self.nb_features, self.input_spec.neighborhood, 0,
                check_int("input_embedding_size", input_embedding_size, 1),
                self.cnn_nb_filters)
        else:
            self.embedding = make_embedding(
                input_embedding_key, self.input_size, input_embedding_size)
        self.prev_dirs_embedding = make_prev_dirs_embedding(
            prev_dirs_embedding_key, self.nb_previous_dirs,
            prev_dirs_embedding_size)
        self.prev_dirs_embedding_key = prev_dirs_embedding_key
        self.rnn_key = check_choice("rnn_key", rnn_key, RNN_CLASSES)
        if (not isinstance(rnn_layer_sizes, (list, tuple))
                or len(rnn_layer_sizes) == 0):
            raise DwiMLUserError(
                f"argument 'rnn_layer_sizes': expected a non-empty list of "
                f"integers, found {rnn_layer_sizes!r}.")
        self.rnn_layer_sizes = [check_int("rnn_layer_sizes", size, 1)
                                for size in rnn_layer_sizes]
        self.use_skip_connection = check_bool("use_skip_connection",
                                              use_skip_connection)
        self.use_layer_norm = check_bool("use_layer_norm", use_layer_norm)
        self.dropout = check_fraction("dropout", dropout)
        self.rnn_stacking = check_choice("rnn_stacking", rnn_stacking,
                                         STACKINGS)
        self._said_dropout_does_nothing = False
        self.rnn = StackedRNN(
            rnn_key, (self.embedding.output_size
                      + self.prev_dirs_embedding.output_size),
            self.rnn_layer_sizes, self.use_skip_connection,
            self.use_layer_norm, self.dropout, self.rnn_stacking)
        self.dg_key = dg_key
        self.direction_getter = make_direction_getter(
            dg_key, self.rnn.output_size, dg_args)

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        embedding_size = (None if self.input_embedding_key == "none" else
                          self.embedding.output_size)
        params.update(input_embedding_key=self.input_embedding_key,
                      input_embedding_size=embedding_size,
                      cnn_nb_filters=self.cnn_nb_filters,
                      prev_dirs_embedding_key=self.prev_dirs_embedding_key,
                      prev_dirs_embedding_size=(
                          self.prev_dirs_embedding.output_size),
                      rnn_key=self.rnn_key,
                      rnn_layer_sizes=list(self.rnn_layer_sizes),
                      use_skip_connection=self.use_skip_connection,
                      use_layer_norm=self.use_layer_norm,
                      dropout=self.dropout, rnn_stacking=self.rnn_stacking)
        return params

    def _point_features(self, point_inputs, previous_dirs):
        # Inputs and points come as float32 (interpolation, the loader);
        # a model.double() computes in float64 from here on.
        dtype = self.dtype
        return torch.cat(
            [self.embedding(point_inputs.to(dtype)),
             self.prev_dirs_embedding(previous_dirs.to(dtype))], dim=1)

    def hidden_states(self, point_inputs, streamlines, counts):
        """The RNN's outputs at the prediction points (see
        :meth:`DirectionGetterModel.hidden_states`)."""
        features = self._point_features(
            point_inputs,
            self.compute_previous_dirs(streamlines, self.add_eos))
        # Padded (time, streamline, features) blocks of a few length
        # groups: see dwi_ml.models.length_groups.
        if len(features) == 0:
            return features.new_empty((0, self.rnn.output_size))
        groups = PaddedGroups(counts)
        return groups.unpad([self.rnn(block)[0]
                             for block in groups.pad(features)])

    def train(self, mode=True):
        """torch's ``train``; training with a dropout that one RNN layer
        stacked as the reference's ignores (dropout between layers only)
        is said once."""
        if (mode and not self._said_dropout_does_nothing and self.dropout
                and self.rnn_stacking == "reference"
                and len(self.rnn_layer_sizes) == 1):
            self._said_dropout_does_nothing = True
            logger.warning(
                "Learn2track: dropout %s does nothing with one RNN layer "
                "and rnn_stacking 'reference' (dropout between layers "
                "only); use the direction getter's dropout, or "
                "rnn_stacking 'plain'.", self.dropout)
        return super().train(mode)

    def forward_step(self, step_inputs, partial_streamlines,
                     hidden_states=None):
        """Outputs at the last point of N streamlines being tracked.

        Parameters
        ----------
        step_inputs : torch.Tensor (N, input_size)
            Inputs interpolated at the last point of each streamline.
        partial_streamlines : list of torch.Tensor (m_i, 3) or torch.Tensor (N, m, 3)
            The streamlines so far (m_i >= 1; the seed alone at the first
            step), voxel space, corner origin.
            The tracker passes one (N, m, 3) tensor of the last
            ``tracking_context_points`` points (all streamlines step
            together).
        hidden_states : tuple or None
            Returned by the previous step, for the same N streamlines in the
            same order; None at the first step.

        Returns
        -------
        outputs : torch.Tensor (N, output_size)
        hidden_states : tuple
            Give them to the next step (after
            :meth:`select_hidden_states` if streamlines stopped).
        """
        self.check_step_inputs(step_inputs, partial_streamlines)
        features = self._point_features(
            step_inputs, self.compute_last_previous_dirs(partial_streamlines))
        outputs, hidden_states = self.rnn.forward_step(features, hidden_states)
        return self.direction_getter(outputs), hidden_states

    @staticmethod
    def select_hidden_states(hidden_states, keep):
        """Hidden states of the streamlines in ``keep`` (mask or indices).

        See :func:`dwi_ml.models.stacked_rnn.select_hidden_states`.
        """
        return select_hidden_states(hidden_states, keep)




def add_learn2track_args(parser):
    """The script options of :class:`Learn2TrackModel` (group "Model")."""
    group = parser.add_argument_group("Model (Learn2track)")
    add_input_spec_args(group)
    group.add_argument("--input_embedding_key",
                       choices=INPUT_EMBEDDING_KEYS,
                       help="Embedding of each point's input: none, linear, "
                            "or cnn (a 3-D convolution over a grid "
                            "neighbourhood, --neighborhood_type grid). "
                            "Default: none for Learn2track, linear for the "
                            "Transformers.")
    group.add_argument("--input_embedding_size", type=int,
                       help="Learn2track: output size of the linear or cnn "
                            "input embedding (required by them). Default: "
                            "none (no embedding).")
    group.add_argument("--cnn_nb_filters", type=int, default=8,
                       help="Filters of the cnn input embedding's "
                            "convolution (kernel 3).")
    group.add_argument("--prev_dirs_embedding_key", default="none",
                       choices=EMBEDDING_KEYS,
                       help="Learn2track: embedding of the 3 * "
                            "--nb_previous_dirs previous-direction values: "
                            "none (as they are) or linear (a linear layer "
                            "and a ReLU).")
    group.add_argument("--prev_dirs_embedding_size", type=int,
                       help="Learn2track: output size of the linear "
                            "previous-directions embedding. Default: 3 * "
                            "--nb_previous_dirs.")
    group.add_argument("--rnn_key", default="lstm", choices=tuple(RNN_CLASSES),
                       help="Recurrent layer type.")
    group.add_argument("--rnn_layer_sizes", type=int, nargs="+",
                       default=[100, 100],
                       help="Hidden size of each stacked RNN layer.")
    group.add_argument("--no_skip_connection", action="store_true",
                       help="Feed the direction getter the last layer only, "
                            "not all layers.")
    group.add_argument("--no_layer_norm", action="store_true",
                       help="No layer normalisation between RNN layers.")
    group.add_argument("--rnn_stacking", default="reference",
                       choices=STACKINGS,
                       help="How the RNN layers are stacked: reference (the "
                            "reference dwi_ml's: layer norm after each "
                            "layer, dropout and a ReLU between layers, and "
                            "with skip connections each later layer also "
                            "reads the input) or plain (layer norm and "
                            "dropout after each layer, the only way before "
                            "2026-12). The same with one layer and no "
                            "dropout.")
    group.add_argument("--dropout", type=float,
                       help="Dropout probability between RNN layers "
                            "(default 0), or in the Transformer layers "
                            "(default 0.1).")
    add_direction_getter_args(group)
    return group
