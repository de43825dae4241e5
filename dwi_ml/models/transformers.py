"""Three Transformer models that predict the next direction of streamlines.

They share :class:`~dwi_ml.models.transformer_base.TransformerModelAbstract`
(options, tokens, causal attention, loss, cached tracking) and differ in their
stacks of layers:

- :class:`OriginalTransformerModel` (``transformer_original``): an encoder
  over the source tokens and a decoder over the target tokens, with
  cross-attention to the encoder;
- :class:`TransformerSrcAndTgtModel` (``transformer_src_tgt``): one encoder
  over tokens that join each point's source and target;
- :class:`TransformerSrcOnlyModel` (``transformer_src_only``): one encoder
  over the source tokens.

Every attention is causal: point ``t`` sees points ``<= t`` only, which
tracking requires (it knows nothing beyond the current point) and which lets
a tracking step compute the new point alone.
"""
import torch

from dwi_ml.io_utils.arg_checks import check_choice, check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.model_io import register_model
from dwi_ml.models.transformer_base import TransformerModelAbstract
from dwi_ml.models.transformer_cache import TransformerCache
from dwi_ml.models.transformer_tokens import SOS_TOKEN_TYPES, TargetEmbedding

TOKEN_COMBINATIONS = ("concat", "add")


@register_model
class TransformerSrcOnlyModel(TransformerModelAbstract):
    """A causal encoder over the source tokens::

        input at t [, previous dirs] -> embedding -> + position
            -> causal encoder -> direction getter

    Parameters
    ----------
    *args, **kwargs :
        Those of
        :class:`~dwi_ml.models.transformer_base.TransformerModelAbstract`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_embedding = self.make_input_embedding(self.d_model)
        self.encoder = self.make_stack(self.n_layers_e, False)

    def _run(self, sources, previous_dirs, is_first, positions, layout,
             cache):
        tokens = self.add_position(self.input_embedding(sources), positions)
        return self.run_stack(self.encoder, tokens, layout,
                              None if cache is None else cache.encoder)

    def _new_cache(self, like):
        return TransformerCache(self.new_buffers(self.n_layers_e, like))


@register_model
class TransformerSrcAndTgtModel(TransformerModelAbstract):
    """A causal encoder over tokens joining source and target::

        input at t [, previous dirs] -> input embedding  --.
                                                            concat or add
        d_{t-1} (SOS at t = 0)       -> target embedding --'
            -> + position -> causal encoder -> direction getter

    Parameters
    ----------
    *args, **kwargs :
        Those of
        :class:`~dwi_ml.models.transformer_base.TransformerModelAbstract`.
    target_embedding_key : "none" or "linear"
        Embedding of the target tokens.
    sos_token_type : "learned" or "class"
        See :class:`~dwi_ml.models.transformer_tokens.TargetEmbedding`.
    token_combination : "concat" or "add"
        "concat": the source is embedded to ``d_model -
        target_embedded_size`` values and the target to
        ``target_embedded_size``; "add": both to ``d_model``, summed.
    target_embedded_size : int or None
        Required with "concat", None with "add".
    """

    def __init__(self, *args, target_embedding_key="linear",
                 sos_token_type="learned", token_combination="concat",
                 target_embedded_size=8, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_combination = check_choice(
            "token_combination", token_combination, TOKEN_COMBINATIONS)
        if token_combination == "add":
            if target_embedded_size is not None:
                raise DwiMLUserError(
                    f"argument 'target_embedded_size': expected None with "
                    f"token_combination 'add' (both embed to d_model), "
                    f"found {target_embedded_size!r}.")
            source_width = target_width = self.d_model
        else:
            target_width = check_int("target_embedded_size",
                                     target_embedded_size, 1)
            source_width = self.d_model - target_width
            if source_width < 1:
                raise DwiMLUserError(
                    f"argument 'target_embedded_size': expected less than "
                    f"d_model ({self.d_model}), found {target_width}.")
        token_size = TargetEmbedding.token_size(check_choice(
            "sos_token_type", sos_token_type, SOS_TOKEN_TYPES))
        if (token_combination == "concat" and target_embedding_key == "none"
                and target_width != token_size):
            raise DwiMLUserError(
                f"arguments 'target_embedding_key' and "
                f"'target_embedded_size': 'none' keeps the target token's "
                f"{token_size} values (sos_token_type {sos_token_type!r}), "
                f"expected target_embedded_size {token_size}, found "
                f"{target_width}; or use 'linear'.")
        self.target_embedded_size = target_embedded_size
        self.target_embedding_key = target_embedding_key
        self.input_embedding = self.make_input_embedding(
            source_width, "d_model" if token_combination == "add"
            else "d_model - target_embedded_size")
        self.target_embedding = TargetEmbedding(
            target_embedding_key, target_width, sos_token_type)
        self.encoder = self.make_stack(self.n_layers_e, False)

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        params.update(
            target_embedding_key=self.target_embedding_key,
            sos_token_type=self.target_embedding.sos_token_type,
            token_combination=self.token_combination,
            target_embedded_size=self.target_embedded_size)
        return params

    def _run(self, sources, previous_dirs, is_first, positions, layout,
             cache):
        sources = self.input_embedding(sources)
        targets = self.target_embedding(previous_dirs, is_first)
        tokens = (sources + targets if self.token_combination == "add"
                  else torch.cat([sources, targets], dim=1))
        return self.run_stack(self.encoder,
                              self.add_position(tokens, positions), layout,
                              None if cache is None else cache.encoder)

    def _new_cache(self, like):
        return TransformerCache(self.new_buffers(self.n_layers_e, like))


@register_model
class OriginalTransformerModel(TransformerModelAbstract):
    """Vaswani et al.'s encoder-decoder, causal on both sides::

        input at t [, previous dirs] -> input embedding -> + position
            -> causal encoder ------------------------.
                                                       | cross-attention
        d_{t-1} (SOS at t = 0) -> target embedding     v  (to points <= t)
            -> + position -> causal decoder -> direction getter

    Unlike a translation model, the encoder is causal too (point ``t``'s
    encoder output depends on the inputs at points ``<= t`` only) and the
    decoder's cross-attention at ``t`` sees the encoder outputs at points
    ``<= t`` only: when tracking, the inputs beyond the current point do
    not exist yet, so a model trained on them could not track. This is also
    what makes a tracking step compute only the new point: the encoder's
    outputs, and their cross-attention keys and values, grow by one point
    per step.

    Parameters
    ----------
    *args, **kwargs :
        Those of
        :class:`~dwi_ml.models.transformer_base.TransformerModelAbstract`.
    n_layers_d : int
        Decoder layers.
    target_embedding_key : "none" or "linear"
        Embedding of the target tokens to ``d_model``.
    sos_token_type : "learned" or "class"
        See :class:`~dwi_ml.models.transformer_tokens.TargetEmbedding`.
    """

    def __init__(self, *args, n_layers_d=2, target_embedding_key="linear",
                 sos_token_type="learned", **kwargs):
        super().__init__(*args, **kwargs)
        self.n_layers_d = check_int("n_layers_d", n_layers_d, 1)
        self.target_embedding_key = target_embedding_key
        self.input_embedding = self.make_input_embedding(self.d_model)
        self.target_embedding = TargetEmbedding(
            target_embedding_key, self.d_model, sos_token_type)
        self.encoder = self.make_stack(self.n_layers_e, False)
        self.decoder = self.make_stack(self.n_layers_d, True)

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        params.update(n_layers_d=self.n_layers_d,
                      target_embedding_key=self.target_embedding_key,
                      sos_token_type=self.target_embedding.sos_token_type)
        return params

    def _run(self, sources, previous_dirs, is_first, positions, layout,
             cache):
        tokens = self.add_position(self.input_embedding(sources), positions)
        memory = self.run_stack(self.encoder, tokens, layout,
                                None if cache is None else cache.encoder)
        # The memory's cross-attention keys and values, per decoder layer:
        # of the whole padded batch in training, of the new point appended
        # to the cache's when tracking.
        if layout is None:
            memories = [
                buffer.append(*keys_values) for buffer, keys_values in zip(
                    cache.cross,
                    self.decoder.memory_keys_values(memory[:, None]))]
        else:
            memories = self.decoder.memory_keys_values(layout.pad(memory))
        targets = self.add_position(
            self.target_embedding(previous_dirs, is_first), positions)
        return self.run_stack(self.decoder, targets, layout,
                              None if cache is None else cache.decoder,
                              memories)

    def _new_cache(self, like):
        return TransformerCache(self.new_buffers(self.n_layers_e, like),
                                self.new_buffers(self.n_layers_d, like),
                                self.new_buffers(self.n_layers_d, like))
