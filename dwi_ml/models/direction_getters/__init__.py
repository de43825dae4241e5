"""Direction getters: from a hidden state to a direction (and EOS).

Choose one by key with :func:`make_direction_getter`. See
:mod:`dwi_ml.models.direction_getters.base` for the shared outputs, loss
and tracking API.
"""
import inspect

from dwi_ml.io_utils.arg_checks import check_choice
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import option_given
from dwi_ml.models.direction_getters.base import AbstractDirectionGetter
from dwi_ml.models.direction_getters.fisher_von_mises import FisherVonMisesDG
from dwi_ml.models.direction_getters.gaussian import GaussianDG, GaussianMixtureDG
from dwi_ml.models.direction_getters.regression import (
    CosinePlusL2RegressionDG,
    CosineRegressionDG,
    L2RegressionDG,
)
from dwi_ml.models.direction_getters.sphere_classification import (
    SmoothSphereClassificationDG,
    SphereClassificationDG,
)

DIRECTION_GETTERS = {cls.key: cls for cls in (
    CosineRegressionDG, L2RegressionDG, CosinePlusL2RegressionDG,
    SphereClassificationDG, SmoothSphereClassificationDG, GaussianDG,
    GaussianMixtureDG, FisherVonMisesDG)}


def make_direction_getter(dg_key, input_size, dg_args=None):
    """Build the direction getter ``dg_key`` with its arguments.

    Parameters
    ----------
    dg_key : str
        One of ``DIRECTION_GETTERS``.
    input_size : int
        Width of the hidden state it receives.
    dg_args : dict or None
        Keyword arguments: ``add_eos``, ``eos_weight``,
        ``eos_only_at_fibre_ends``, ``dropout`` and each
        getter's own (``sphere``, ``normalize_targets``, ``entropy_weight``,
        ``nb_gaussians``, ``smoothing_sigma_deg``...).
    """
    check_choice("dg_key", dg_key, DIRECTION_GETTERS)
    cls = DIRECTION_GETTERS[dg_key]
    if dg_args is not None and not isinstance(dg_args, dict):
        raise DwiMLUserError(
            f"argument 'dg_args': expected a dict of the getter's options, "
            f"found {type(dg_args).__name__} {dg_args!r}.")
    dg_args = dict(dg_args or {})
    allowed = set(inspect.signature(cls).parameters) - {"input_size"}
    if not set(dg_args) <= allowed:
        raise DwiMLUserError(
            f"argument 'dg_args': expected keys among {sorted(allowed)} for "
            f"'{dg_key}', found {sorted(dg_args)}.")
    return cls(input_size, **dg_args)


def add_direction_getter_args(group):
    """Add ``--dg_key``, EOS and every getter's own options to ``group``.

    Options of another getter than the chosen one are refused by
    :func:`direction_getter_args`.
    """
    group.add_argument("--dg_key", default="cosine-regression",
                       choices=sorted(DIRECTION_GETTERS),
                       help="Direction getter: the output head and loss.")
    group.add_argument("--add_eos", action="store_true",
                       help="Learn an end-of-streamline output.")
    group.add_argument("--eos_weight", type=float, default=1.0,
                       help="Weight of the end-of-streamline loss (with "
                            "--add_eos).")
    group.add_argument("--eos_only_at_fibre_ends", action="store_true",
                       help="With --add_eos and --split_ratio: learn EOS only "
                            "where a fibre ends; the last point of a split "
                            "piece that ends at the cut is left out of the "
                            "loss. By default every streamline's last point, "
                            "cut or not, is an EOS target, as in the "
                            "reference dwi_ml: on our synthetic data both "
                            "model families tracked worse with this option "
                            "(bench/README.md).")
    group.add_argument("--dg_dropout", type=float, default=0.0,
                       help="Dropout between the direction getter's two "
                            "layers.")
    group.add_argument("--normalize_targets", type=float, metavar="NORM",
                       help="L2 regression getters: scale the target "
                            "directions to this norm before the loss "
                            "(default: 1; refused with cosine-regression, "
                            "which ignores norms).")
    group.add_argument("--normalize_outputs", type=float, metavar="NORM",
                       help="L2 regression getters: scale the outputs to "
                            "this norm before the loss (default: unscaled).")
    group.add_argument("--entropy_weight", type=float, default=0.0,
                       help="Gaussian getters: loss = NLL + W * entropy.")
    group.add_argument("--nb_gaussians", type=int, default=3,
                       help="gaussian-mixture: number of components.")
    group.add_argument("--sphere", default="symmetric724",
                       help="Sphere classification getters: dipy sphere "
                            "name.")
    group.add_argument("--smoothing_sigma_deg", type=float, default=10.0,
                       help="smooth-sphere-classification: sigma of the "
                            "target smoothing, degrees.")


# Command-line option -> constructor argument, for the getter's own options.
# Option of add_direction_getter_args -> its argument in dg_args.
DG_OPTION_ARGS = {"dg_dropout": "dropout", "normalize_targets":
                "normalize_targets", "normalize_outputs": "normalize_outputs",
                "entropy_weight": "entropy_weight", "nb_gaussians":
                "nb_gaussians", "sphere": "sphere",
                "smoothing_sigma_deg": "smoothing_sigma_deg"}


def direction_getter_args(args):
    """``dg_args`` from the options of :func:`add_direction_getter_args`.

    Options left at their default are omitted (the getter's own default
    applies); an option the chosen getter does not take is refused.
    """
    cls = DIRECTION_GETTERS[args.dg_key]
    accepted = set(inspect.signature(cls).parameters)
    if not args.add_eos and option_given(args, "eos_weight", 1.0):
        # Without EOS there is no EOS loss to weigh.
        raise DwiMLUserError(
            f"argument --eos_weight: an option of --add_eos, found "
            f"{args.eos_weight!r} without --add_eos.")
    if not args.add_eos and args.eos_only_at_fibre_ends:
        raise DwiMLUserError(
            "argument --eos_only_at_fibre_ends: an option of --add_eos, "
            "found without --add_eos.")
    dg_args = {"add_eos": args.add_eos, "eos_weight": args.eos_weight}
    if args.eos_only_at_fibre_ends:
        dg_args["eos_only_at_fibre_ends"] = True
    defaults = {action: value for action, value in (
        ("dg_dropout", 0.0), ("normalize_targets", None),
        ("normalize_outputs", None), ("entropy_weight", 0.0),
        ("nb_gaussians", 3), ("sphere", "symmetric724"),
        ("smoothing_sigma_deg", 10.0))}
    for option, name in DG_OPTION_ARGS.items():
        value = getattr(args, option)
        if not option_given(args, option, defaults[option]):
            continue
        if name not in accepted:
            raise DwiMLUserError(
                f"argument --{option}: not an option of direction getter "
                f"'{args.dg_key}', found {value!r}.")
        dg_args[name] = value
    return dg_args


__all__ = ["AbstractDirectionGetter", "CosineRegressionDG", "L2RegressionDG",
           "CosinePlusL2RegressionDG", "SphereClassificationDG",
           "SmoothSphereClassificationDG", "GaussianDG", "GaussianMixtureDG",
           "FisherVonMisesDG", "DIRECTION_GETTERS", "make_direction_getter",
           "add_direction_getter_args", "DG_OPTION_ARGS", "direction_getter_args"]
