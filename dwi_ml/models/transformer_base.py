"""What the three Transformer models share: options, tokens, loss, steps.

Each prediction point ``t`` of a streamline (see
:mod:`dwi_ml.models.directions`) is one position of a sequence:

- its **source** token is the input at ``t``, extended with the ``k``
  previous directions when ``nb_previous_dirs > 0``;
- its **target** token (models with a target) is the previous direction
  ``d_{t-1}`` (unit length with ``normalize_prev_dirs``), or a
  start-of-sequence (SOS) token at ``t = 0``.

Training (:meth:`TransformerModelAbstract.forward`)
    Tokens are gathered over the packed prediction points, embedded, given
    their position vector, then padded to ``(N, T, d_model)`` with one
    indexed write. Attention is causal: position ``t`` attends to
    positions ``<= t`` of its own streamline. Padding comes after each
    streamline's points, so the causal mask alone keeps it out of every
    real position (no per-batch padding mask is needed, and
    ``scaled_dot_product_attention`` runs its causal kernel). Outputs are
    gathered back to the packed ``(M, output_size)`` rows, so the loss
    sees real points only.

Tracking (:meth:`TransformerModelAbstract.forward_step`)
    Every attention is causal, so position ``t`` depends on positions
    ``<= t`` only: a step computes the new position alone, with the keys
    and values of the past ones kept in a
    :class:`~dwi_ml.models.transformer_cache.TransformerCache`. Step after
    step, the outputs equal those of ``forward`` over the complete
    streamlines. Put the model in eval mode and under ``torch.no_grad()``.
"""
import torch

from dwi_ml.io_utils.arg_checks import check_choice, check_fraction, check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.cnn_embedding import check_cnn_neighborhood, make_cnn_embedding
from dwi_ml.models.direction_getter_model import DirectionGetterModel
from dwi_ml.models.direction_getters import make_direction_getter
from dwi_ml.models.directions import (
    compute_last_previous_dirs,
    compute_previous_dirs,
)
from dwi_ml.models.embeddings import INPUT_EMBEDDING_KEYS
from dwi_ml.models.transformer_cache import KeyValueBuffer
from dwi_ml.models.transformer_layers import (
    ACTIVATIONS,
    POSITION_ENCODINGS,
    LayerStack,
    PositionEncoding,
)
from dwi_ml.models.transformer_tokens import (
    PaddedLayout,
    make_token_embedding,
)


class TransformerModelAbstract(DirectionGetterModel):
    """Options, embeddings, causal attention, loss and tracking of the
    Transformer models; subclasses build their stacks and say how tokens
    go through them (:meth:`_run` and :meth:`_new_cache`).

    Parameters
    ----------
    experiment_name, nb_features, step_size, nb_points, compress :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`.
    neighborhood_type, neighborhood_radius, neighborhood_resolution :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`.
    nb_previous_dirs, normalize_prev_dirs :
        See :class:`dwi_ml.models.main_models.MainModelOneInput`; the
        previous directions extend the source tokens.
    d_model : int
        Width of the tokens in the layers.
    nheads : int
        Attention heads; divides ``d_model``.
    n_layers_e : int
        Encoder layers.
    ffnn_hidden_size : int or None
        Hidden width of each layer's feed-forward network; None:
        ``d_model // 2`` (at least 1).
    dropout : float
        In [0, 1), in the layers and after the position encoding.
    activation : "relu" or "gelu"
    norm_first : bool
        Pre-norm layers (and a final norm after each stack).
    max_len : int
        Longest sequence, in prediction points, in training and tracking.
    position_encoding : "sinusoidal", "learned", "none" or "alibi"
        See :class:`~dwi_ml.models.transformer_layers.PositionEncoding`.
    attention_window : int or None
        Points each attention sees, the current one included: point ``t``
        attends to points ``t - W + 1 .. t``. A tracking step then reads at
        most W past keys and values. None: every earlier point (the
        reference's Transformers).
    input_embedding_key : "none", "linear" or "cnn"
        Embedding of the source tokens: linear layer and ReLU, or (with a
        "grid" neighbourhood) :class:`~dwi_ml.models.cnn_embedding.CNNEmbedding`.
    cnn_nb_filters : int
        Channels of the "cnn" embedding's convolution.
    dg_key, dg_args :
        Direction getter, as in
        :class:`dwi_ml.models.learn2track.Learn2TrackModel`; it gets the
        last stack's ``d_model`` outputs.
    """

    def __init__(self, experiment_name, nb_features, step_size=None,
                 nb_points=None, compress=None, neighborhood_type=None,
                 neighborhood_radius=None, neighborhood_resolution=None,
                 nb_previous_dirs=0, normalize_prev_dirs=True, d_model=64,
                 nheads=4, n_layers_e=2, ffnn_hidden_size=None, dropout=0.1,
                 activation="relu", norm_first=False, max_len=1000,
                 position_encoding="sinusoidal", attention_window=None,
                 input_embedding_key="linear",
                 cnn_nb_filters=8, dg_key="cosine-regression", dg_args=None):
        super().__init__(experiment_name, nb_features, step_size, nb_points,
                         compress, neighborhood_type, neighborhood_radius,
                         neighborhood_resolution, nb_previous_dirs,
                         normalize_prev_dirs)
        self.d_model = check_int("d_model", d_model, 1)
        self.nheads = check_int("nheads", nheads, 1)
        if d_model % nheads:
            raise DwiMLUserError(
                f"argument 'nheads': expected a divisor of d_model "
                f"({d_model}), found {nheads}.")
        self.n_layers_e = check_int("n_layers_e", n_layers_e, 1)
        self.ffnn_hidden_size = check_int(
            "ffnn_hidden_size",
            max(d_model // 2, 1) if ffnn_hidden_size is None
            else ffnn_hidden_size, 1)
        self.dropout = check_fraction("dropout", dropout)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.norm_first = bool(norm_first)
        self.max_len = check_int("max_len", max_len, 1)
        self.position_encoding_key = check_choice(
            "position_encoding", position_encoding, POSITION_ENCODINGS)
        self.position_encoding = PositionEncoding(position_encoding, d_model,
                                                  self.max_len)
        self.attention_window = (None if attention_window is None else
                                 check_int("attention_window",
                                           attention_window, 1))
        self.input_embedding_key = check_choice(
            "input_embedding_key", input_embedding_key, INPUT_EMBEDDING_KEYS)
        check_cnn_neighborhood(input_embedding_key, self.input_spec.neighborhood)
        self.cnn_nb_filters = check_int("cnn_nb_filters", cnn_nb_filters, 1)
        self.token_dropout = torch.nn.Dropout(self.dropout)
        self.dg_key = dg_key
        self.direction_getter = make_direction_getter(dg_key, d_model,
                                                      dg_args)

    @property
    def source_size(self):
        """int: width of a source token (input and previous directions)."""
        return self.input_size + 3 * self.nb_previous_dirs

    def make_input_embedding(self, output_size, set_by="d_model"):
        """The source tokens' embedding, to ``output_size`` values (set by
        the options ``set_by``)."""
        if self.input_embedding_key == "cnn":
            return make_cnn_embedding(self.nb_features,
                                      self.input_spec.neighborhood,
                                      3 * self.nb_previous_dirs, output_size,
                                      self.cnn_nb_filters)
        return make_token_embedding("input_embedding_key",
                                    self.input_embedding_key,
                                    self.source_size, output_size, set_by)

    def make_stack(self, n_layers, cross_attention):
        """``n_layers`` layers with the model's options."""
        return LayerStack(n_layers, self.d_model, self.nheads,
                          self.ffnn_hidden_size, self.dropout,
                          self.activation, self.norm_first, cross_attention,
                          self.attention_window,
                          self.position_encoding_key == "alibi")

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        params.update(d_model=self.d_model, nheads=self.nheads,
                      n_layers_e=self.n_layers_e,
                      ffnn_hidden_size=self.ffnn_hidden_size,
                      dropout=self.dropout, activation=self.activation,
                      norm_first=self.norm_first, max_len=self.max_len,
                      position_encoding=self.position_encoding_key,
                      attention_window=self.attention_window,
                      input_embedding_key=self.input_embedding_key,
                      cnn_nb_filters=self.cnn_nb_filters)
        return params

    def add_position(self, tokens, positions):
        """Embedded tokens (M, d_model) plus their position vectors."""
        return self.token_dropout(self.position_encoding(tokens, positions))

    def _run(self, sources, previous_dirs, is_first, positions, layout,
             cache):
        """Tokens (packed rows) through the model's stacks.

        Parameters
        ----------
        sources : torch.Tensor (M, source_size)
        previous_dirs : torch.Tensor (M, 3)
            ``d_{t-1}`` of each row (zeros at ``t = 0``).
        is_first : torch.Tensor bool (M,)
        positions : torch.Tensor int64 (M,)
        layout : PaddedLayout or None
            Training: where rows go in the padded batch. None when tracking
            (one row per streamline, all at position ``cache.nb_steps``).
        cache : TransformerCache or None
            Tracking only; its buffers are appended to in place.

        Returns
        -------
        torch.Tensor (M, d_model)
        """
        raise NotImplementedError

    def _new_cache(self, like):
        """An empty :class:`TransformerCache` for ``len(like)`` streamlines."""
        raise NotImplementedError

    def new_buffers(self, n_layers, like):
        """``n_layers`` empty key/value buffers for ``len(like)``
        streamlines, in the model's dtype, on like's device (the tracker's
        inputs stay float32 for a ``model.double()``)."""
        like = like.to(self.dtype)
        return tuple(KeyValueBuffer.empty(like, self.nheads,
                                          self.d_model // self.nheads,
                                          self.attention_window)
                     for _ in range(n_layers))

    def run_stack(self, stack, tokens, layout, buffers=None, memories=None):
        """Packed tokens through ``stack``: padded with ``layout`` and the
        causal attention in training, one position per row when tracking."""
        if layout is None:
            return stack(tokens[:, None], False, buffers, memories)[:, 0]
        padded = stack(layout.pad(tokens), True,
                       memories=memories)
        return layout.unpad(padded)

    def hidden_states(self, point_inputs, streamlines, counts):
        """The last layer's outputs at the prediction points (see
        :meth:`DirectionGetterModel.hidden_states`).

        The previous directions are gathered once: the first ``3 * k``
        columns extend the sources, the first 3 (``d_{t-1}``) are the
        targets.
        """
        if int(counts.max()) > self.max_len:
            raise DwiMLUserError(
                f"streamlines: expected at most max_len={self.max_len} "
                f"prediction points, found {int(counts.max())}.")
        layout = PaddedLayout(counts)
        previous_dirs = compute_previous_dirs(
            streamlines, max(self.nb_previous_dirs, 1), self.add_eos,
            self.normalize_prev_dirs)
        # In the model's dtype, as Learn2track (a model.double(), float32
        # batches; float64 inputs to a float32 model).
        dtype = self.dtype
        sources = torch.cat(
            [point_inputs, previous_dirs[:, :3 * self.nb_previous_dirs]],
            dim=1).to(dtype)
        return self._run(sources, previous_dirs[:, :3].to(dtype),
                         layout.time_ids == 0, layout.time_ids, layout, None)

    def forward_step(self, step_inputs, partial_streamlines, cache=None):
        """Outputs at the last point of N streamlines being tracked.

        Parameters
        ----------
        step_inputs : torch.Tensor (N, input_size)
            Inputs interpolated at the last point of each streamline.
        partial_streamlines : list of torch.Tensor (m_i, 3) or torch.Tensor (N, m, 3)
            The streamlines so far, voxel space, corner origin. All have
            ``cache.nb_steps + 1`` points (the tracker's lockstep; a
            streamline replaying a known prefix counts its points too).
            The tracker passes one (N, m, 3) tensor of the last
            ``tracking_context_points`` points (all streamlines step
            together).
        cache : TransformerCache or None
            Returned by the previous step for the same N streamlines, in
            the same order; None at the first step (the seeds). It is
            updated in place and returned.

        Returns
        -------
        outputs : torch.Tensor (N, output_size)
        cache : TransformerCache
            Give it to the next step (after :meth:`select_hidden_states` if
            streamlines stopped).
        """
        self.check_step_inputs(step_inputs, partial_streamlines,
                               1 if cache is None else cache.nb_steps + 1)
        if cache is None:
            cache = self._new_cache(step_inputs)
        elif cache.nb_streamlines != len(step_inputs):
            raise ValueError(
                f"forward_step: the cache holds {cache.nb_streamlines} "
                f"streamlines, the step {len(step_inputs)}; keep the rows "
                f"of those still tracked with select_hidden_states.")
        step = cache.nb_steps
        if step >= self.max_len:
            raise DwiMLUserError(
                f"tracking: expected at most max_len={self.max_len} "
                f"steps (prediction points) per streamline, found more; "
                f"track with a shorter maximal length.")
        previous_dirs = compute_last_previous_dirs(
            partial_streamlines, max(self.nb_previous_dirs, 1),
            self.normalize_prev_dirs)
        dtype = self.dtype
        sources = torch.cat(
            [step_inputs, previous_dirs[:, :3 * self.nb_previous_dirs]],
            dim=1).to(dtype)
        positions = torch.full((len(step_inputs),), step, dtype=torch.int64,
                               device=step_inputs.device)
        hidden = self._run(sources, previous_dirs[:, :3].to(dtype),
                           positions == 0, positions, None, cache)
        cache.nb_steps = step + 1
        return self.direction_getter(hidden), cache

    @staticmethod
    def select_hidden_states(cache, keep):
        """The cache of the streamlines in ``keep`` (bool mask or indices).

        See :meth:`dwi_ml.models.transformer_cache.TransformerCache.select`.
        """
        return cache.select(keep)


