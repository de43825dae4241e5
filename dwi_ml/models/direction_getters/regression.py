"""Regression: the getter outputs one 3-D vector per point.

All are deterministic: tracking with ``algo="prob"`` is refused.

``normalize_targets`` and ``normalize_outputs`` (as in the reference) scale
the target and output vectors to that norm before the loss; None keeps
their length. They change the L2 terms only: a cosine ignores lengths.
"""
import torch
import torch.nn.functional as F

from dwi_ml.io_utils.arg_checks import check_positive_float
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.base import AbstractDirectionGetter
from dwi_ml.models.directions import unit_vectors


class _RegressionDG(AbstractDirectionGetter):
    """Shared options and tracking of the regression getters."""

    nb_dir_outputs = 3
    default_normalize_targets = None

    def __init__(self, input_size, add_eos=False, eos_weight=1.0,
                 dropout=0.0, normalize_targets="default",
                 normalize_outputs=None,
                 eos_only_at_fibre_ends=False):
        super().__init__(input_size, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)
        if normalize_targets == "default":
            normalize_targets = self.default_normalize_targets
        self.normalize_targets = _optional_norm("normalize_targets",
                                                normalize_targets)
        self.normalize_outputs = _optional_norm("normalize_outputs",
                                                normalize_outputs)

    @property
    def params(self):
        return {**super().params, "normalize_targets": self.normalize_targets,
                "normalize_outputs": self.normalize_outputs}

    def scaled(self, dir_outputs, target_dirs):
        """Outputs and targets at their chosen norms."""
        return (_rescale(dir_outputs, self.normalize_outputs),
                _rescale(target_dirs, self.normalize_targets))

    def get_det_directions(self, dir_outputs):
        return unit_vectors(dir_outputs)


class CosineRegressionDG(_RegressionDG):
    """Loss ``1 - cos(output, target)``, in [0, 2].

    Only the angle counts: neither vector's length matters, so
    ``normalize_targets`` and ``normalize_outputs``, which would change
    nothing, are refused.
    """

    key = "cosine-regression"

    def __init__(self, input_size, add_eos=False, eos_weight=1.0,
                 dropout=0.0, normalize_targets=None, normalize_outputs=None,
                 eos_only_at_fibre_ends=False):
        for name, value in (("normalize_targets", normalize_targets),
                            ("normalize_outputs", normalize_outputs)):
            if value is not None:
                raise DwiMLUserError(
                    f"argument '{name}': expected None with "
                    f"'cosine-regression' (a cosine ignores lengths; "
                    f"'l2-regression' or 'cosine-plus-l2-regression' use "
                    f"it), found {value!r}.")
        super().__init__(input_size, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)

    def compute_direction_losses(self, dir_outputs, target_dirs):
        return 1 - F.cosine_similarity(dir_outputs, target_dirs, dim=1)


class L2RegressionDG(_RegressionDG):
    """Loss ``|| output - target ||_2`` (not squared).

    Targets are normalised to unit length by default
    (``normalize_targets=1``), so the loss does not depend on the step size;
    the output is not, so the getter learns unit vectors.
    """

    key = "l2-regression"
    default_normalize_targets = 1.0

    def compute_direction_losses(self, dir_outputs, target_dirs):
        outputs, targets = self.scaled(dir_outputs, target_dirs)
        return torch.linalg.vector_norm(outputs - targets, dim=1)


class CosinePlusL2RegressionDG(_RegressionDG):
    """Loss ``(1 - cos(output, target)) + || output - target ||_2``.

    The cosine term drives the angle and the L2 term the length too; with
    the default unit targets the outputs learn unit vectors, as with
    'l2-regression'.
    """

    key = "cosine-plus-l2-regression"
    default_normalize_targets = 1.0

    def compute_direction_losses(self, dir_outputs, target_dirs):
        outputs, targets = self.scaled(dir_outputs, target_dirs)
        return (1 - F.cosine_similarity(dir_outputs, target_dirs, dim=1)
                + torch.linalg.vector_norm(outputs - targets, dim=1))


# Getters whose output is a direction (the others output distributions).
REGRESSION_KEYS = (CosineRegressionDG.key, L2RegressionDG.key,
                   CosinePlusL2RegressionDG.key)


def _optional_norm(name, value):
    return None if value is None else check_positive_float(name, value)


def _rescale(vectors, norm):
    if norm is None:
        return vectors
    return norm * F.normalize(vectors, dim=1)
