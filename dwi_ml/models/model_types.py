"""The model families a script can train, chosen with ``--model_type``.

Each type names a registered model class; its constructor arguments come
from the options every model shares (input spec, previous directions,
direction getter, dropout, input embedding) and from its family's own
argument group. Resume, evaluation and tracking read the class back from
the experiment (``model_type.txt``): they need no option.
"""
import argparse
import functools

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import option_given
from dwi_ml.models.direction_getters import direction_getter_args
from dwi_ml.models.learn2track import Learn2TrackModel, add_learn2track_args
from dwi_ml.models.transformer_layers import POSITION_ENCODINGS
from dwi_ml.models.transformers import (
    OriginalTransformerModel,
    TransformerSrcAndTgtModel,
    TransformerSrcOnlyModel,
)

MODEL_TYPES = {"learn2track": Learn2TrackModel,
               "transformer_original": OriginalTransformerModel,
               "transformer_src_tgt": TransformerSrcAndTgtModel,
               "transformer_src_only": TransformerSrcOnlyModel}


def add_model_args(parser):
    """``--model_type``, Learn2track's group and the Transformers' group."""
    parser.add_argument(
        "--model_type", default="learn2track", choices=tuple(MODEL_TYPES),
        help="Model family: Learn2track (recurrent) or one of the "
             "reference's Transformers (see docs/models.md).")
    add_learn2track_args(parser)
    group = parser.add_argument_group(
        "Transformers (--model_type transformer_*)",
        "Options of the Transformer models; the input spec, previous "
        "directions, --dropout, --input_embedding_key (none, linear or cnn "
        "with a grid neighbourhood), --cnn_nb_filters and the direction "
        "getter options above apply too (not --input_embedding_size nor "
        "--prev_dirs_embedding_*: the Transformers embed whole tokens to "
        "--d_model). An option of another model type than --model_type's "
        "is refused unless left at its default.")
    group.add_argument("--d_model", type=int, default=64,
                       help="Width of every token and attention layer.")
    group.add_argument("--nheads", type=int, default=4,
                       help="Attention heads (must divide d_model).")
    group.add_argument("--n_layers_e", type=int, default=2,
                       help="Encoder layers.")
    group.add_argument("--n_layers_d", type=int, default=2,
                       help="Decoder layers (transformer_original).")
    group.add_argument("--ffnn_hidden_size", type=int,
                       help="Hidden size of each layer's feed-forward "
                            "network (default: d_model // 2, at least 1).")
    group.add_argument("--activation", default="relu",
                       choices=("relu", "gelu"),
                       help="Feed-forward activation.")
    group.add_argument("--norm_first", action="store_true",
                       help="Layer norm before attention and feed-forward "
                            "(pre-norm) instead of after.")
    group.add_argument("--max_len", type=int, default=1000,
                       help="Most prediction points of a streamline, in "
                            "training and tracking: n - 1 for a streamline "
                            "of n points (n with --add_eos).")
    group.add_argument("--position_encoding", default="sinusoidal",
                       choices=POSITION_ENCODINGS,
                       help="Position vectors added to the tokens: fixed "
                            "sines and cosines, one learned vector per "
                            "position, none (the causal mask alone "
                            "orders the points), or alibi (none added; "
                            "self-attention is biased against points "
                            "further back, one rate per head; see "
                            "docs/models.md). Default: sinusoidal.")
    group.add_argument("--attention_window", type=int,
                       help="Points each attention sees, the current one "
                            "included; a tracking step then reads at most "
                            "this many past keys and values whatever the "
                            "length (default: every earlier point, as the "
                            "reference; see docs/models.md).")
    group.add_argument("--target_embedding_key", default="linear",
                       choices=("none", "linear"),
                       help="Embedding of the previous direction "
                            "(transformer_original, transformer_src_tgt).")
    group.add_argument("--sos_token_type", default="learned",
                       choices=("learned", "class"),
                       help="Start-of-sequence target token: a learned "
                            "vector, or a class label.")
    group.add_argument("--token_combination", default="concat",
                       choices=("concat", "add"),
                       help="transformer_src_tgt: concatenate or add the "
                            "embedded input and previous direction.")
    group.add_argument("--target_embedded_size", type=int, default=8,
                       help="transformer_src_tgt with concat: width of the "
                            "embedded previous direction.")
    return group


# Each class's own (Learn2track 0.005, the Transformers 0.001).
DEFAULT_LEARNING_RATES = {name: model_class.default_learning_rate
                          for name, model_class in MODEL_TYPES.items()}


_TRANSFORMERS = ("transformer_original", "transformer_src_tgt",
                 "transformer_src_only")
_WITH_TARGET = ("transformer_original", "transformer_src_tgt")
# The model types that take each family-specific option; the others would
# ignore it, so one given is refused (even typed at its default).
OPTION_MODEL_TYPES = {
    **dict.fromkeys(("input_embedding_size", "prev_dirs_embedding_key",
                     "prev_dirs_embedding_size", "rnn_key", "rnn_layer_sizes",
                     "no_skip_connection", "no_layer_norm", "rnn_stacking"),
                    ("learn2track",)),
    **dict.fromkeys(("d_model", "nheads", "n_layers_e", "ffnn_hidden_size",
                     "activation", "norm_first", "max_len",
                     "position_encoding", "attention_window"), _TRANSFORMERS),
    "n_layers_d": ("transformer_original",),
    "target_embedding_key": _WITH_TARGET, "sos_token_type": _WITH_TARGET,
    "token_combination": ("transformer_src_tgt",),
    "target_embedded_size": ("transformer_src_tgt",)}


def check_options_of_model_type(args):
    """Refuse an option of another model type than ``args.model_type``
    (e.g. --n_layers_d with transformer_src_only) given, even typed at
    its default: the model would silently ignore it.

    ``--target_embedded_size`` is refused with ``--token_combination add``
    too (both tokens embed to d_model).
    """
    for option, model_types in OPTION_MODEL_TYPES.items():
        value = getattr(args, option)
        if not option_given(args, option, _default(option)):
            continue
        if args.model_type not in model_types:
            raise DwiMLUserError(
                f"argument --{option}: an option of --model_type "
                f"{' or '.join(model_types)}, found {value!r} with "
                f"--model_type {args.model_type}.")
        if option == "target_embedded_size" and args.token_combination == "add":
            raise DwiMLUserError(
                f"argument --target_embedded_size: an option of "
                f"--token_combination concat (with add, both tokens embed to "
                f"--d_model), found {value!r} with --token_combination add.")


def _check_options_of_inputs(args, input_embedding_key, model_class):
    """Refuse --cnn_nb_filters without the cnn embedding, and
    --no-normalize_prev_dirs for a model that reads no previous direction:
    either would be silently ignored."""
    if (option_given(args, "cnn_nb_filters", _default("cnn_nb_filters"))
            and input_embedding_key != "cnn"):
        raise DwiMLUserError(
            f"argument --cnn_nb_filters: an option of --input_embedding_key "
            f"cnn, found {args.cnn_nb_filters!r} with --input_embedding_key "
            f"{input_embedding_key}.")
    # The Transformers with targets read d_{t-1} even when k is 0.
    if (not args.normalize_prev_dirs and args.nb_previous_dirs == 0
            and model_class in (Learn2TrackModel, TransformerSrcOnlyModel)):
        raise DwiMLUserError(
            f"argument --no-normalize_prev_dirs: an option of "
            f"--nb_previous_dirs >= 1 with --model_type {args.model_type} "
            f"(it reads no previous direction), found --nb_previous_dirs 0.")


def _check_rnn_stacking(args, dropout):
    """Refuse a given --rnn_stacking where it changes nothing: one
    RNN layer and no dropout."""
    if (option_given(args, "rnn_stacking", _default("rnn_stacking"))
            and len(args.rnn_layer_sizes) == 1 and dropout == 0):
        raise DwiMLUserError(
            f"argument --rnn_stacking: an option of two or more RNN layers "
            f"or --dropout (the stackings differ between layers and by the "
            f"dropout after the last one), found {args.rnn_stacking!r} with "
            f"one layer (--rnn_layer_sizes {args.rnn_layer_sizes[0]}) and no "
            f"dropout.")


@functools.lru_cache(maxsize=1)
def _model_args_parser():
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return parser


def _default(option):
    """The default value of one of :func:`add_model_args`'s options."""
    return _model_args_parser().get_default(option)


def model_options_given(args):
    """The options of :func:`add_model_args` given in ``args`` (see
    :func:`~dwi_ml.io_utils.script_args.option_given`), as ``--name``
    strings in the parser's order."""
    return [action.option_strings[0]
            for action in _model_args_parser()._actions
            if action.dest != "help" and hasattr(args, action.dest)
            and option_given(args, action.dest, action.default)]


def model_type_of(model_class_name):
    """The ``--model_type`` key of a registered model class's name; None for
    a model of your own (no ``--model_type`` builds it)."""
    return next((key for key, model_class in MODEL_TYPES.items()
                 if model_class.__name__ == model_class_name), None)


def model_params_from_args(args):
    """``(model class name, constructor arguments)`` from the options.

    ``nb_features`` is left to the caller (it comes from the HDF5).
    """
    resolution = args.neighborhood_resolution
    if args.neighborhood_type and resolution is None:
        resolution = 1.0
    # Without --neighborhood_type, a resolution given reaches the input spec,
    # which refuses it: it would interpolate nothing more.
    params = {"experiment_name": args.experiment_name,
              "step_size": args.step_size, "nb_points": args.nb_points,
              "compress": args.compress,
              "neighborhood_type": args.neighborhood_type,
              "neighborhood_radius": args.neighborhood_radius,
              "neighborhood_resolution": resolution,
              "nb_previous_dirs": args.nb_previous_dirs,
              "normalize_prev_dirs": args.normalize_prev_dirs,
              "dg_key": args.dg_key, "dg_args": direction_getter_args(args)}
    check_options_of_model_type(args)
    model_class = MODEL_TYPES[args.model_type]
    is_recurrent = model_class is Learn2TrackModel
    # Each family has its own defaults for the options they share.
    params["input_embedding_key"] = args.input_embedding_key or (
        "none" if is_recurrent else "linear")
    params["dropout"] = (args.dropout if args.dropout is not None
                         else 0.0 if is_recurrent else 0.1)
    params["cnn_nb_filters"] = args.cnn_nb_filters
    _check_options_of_inputs(args, params["input_embedding_key"], model_class)
    if is_recurrent:
        _check_rnn_stacking(args, params["dropout"])
        params.update(input_embedding_size=args.input_embedding_size,
                      prev_dirs_embedding_key=args.prev_dirs_embedding_key,
                      prev_dirs_embedding_size=args.prev_dirs_embedding_size,
                      rnn_key=args.rnn_key,
                      rnn_layer_sizes=args.rnn_layer_sizes,
                      use_skip_connection=not args.no_skip_connection,
                      use_layer_norm=not args.no_layer_norm,
                      rnn_stacking=args.rnn_stacking)
        return model_class.__name__, params
    if (args.attention_window is not None and args.max_len is not None
            and args.attention_window >= args.max_len):
        # Not in the model: saved models with such a window still load.
        raise DwiMLUserError(
            f"argument --attention_window: expected fewer points than "
            f"--max_len ({args.max_len}), found {args.attention_window}: a "
            f"window of every point is no window; leave it out.")
    params.update(d_model=args.d_model, nheads=args.nheads,
                  n_layers_e=args.n_layers_e,
                  ffnn_hidden_size=args.ffnn_hidden_size,
                  activation=args.activation, norm_first=args.norm_first,
                  max_len=args.max_len,
                  position_encoding=args.position_encoding,
                  attention_window=args.attention_window)
    if model_class is not TransformerSrcOnlyModel:
        params.update(target_embedding_key=args.target_embedding_key,
                      sos_token_type=args.sos_token_type)
    if model_class is OriginalTransformerModel:
        params["n_layers_d"] = args.n_layers_d
    if model_class is TransformerSrcAndTgtModel:
        params.update(token_combination=args.token_combination,
                      target_embedded_size=(
                          None if args.token_combination == "add"
                          else args.target_embedded_size))
    return model_class.__name__, params
