"""Direction getters: from a hidden state to a direction (and EOS).

Choose one by key with :func:`make_direction_getter`. See
:mod:`dwi_ml.models.direction_getters.base` for the shared outputs, loss
and tracking API.
"""
import inspect

from dwi_ml.io_utils.arg_checks import check_choice
from dwi_ml.io_utils.errors import DwiMLUserError
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
        Keyword arguments: ``add_eos``, ``eos_weight``, ``dropout`` and each
        getter's own (``sphere``, ``normalize_targets``, ``entropy_weight``,
        ``nb_gaussians``, ``smoothing_sigma_deg``...).
    """
    check_choice("dg_key", dg_key, DIRECTION_GETTERS)
    cls = DIRECTION_GETTERS[dg_key]
    dg_args = dict(dg_args or {})
    allowed = set(inspect.signature(cls).parameters) - {"input_size"}
    if not set(dg_args) <= allowed:
        raise DwiMLUserError(
            f"argument 'dg_args': expected keys among {sorted(allowed)} for "
            f"'{dg_key}', found {sorted(dg_args)}.")
    return cls(input_size, **dg_args)


__all__ = ["AbstractDirectionGetter", "CosineRegressionDG", "L2RegressionDG",
           "CosinePlusL2RegressionDG", "SphereClassificationDG",
           "SmoothSphereClassificationDG", "GaussianDG", "GaussianMixtureDG",
           "FisherVonMisesDG", "DIRECTION_GETTERS", "make_direction_getter"]
