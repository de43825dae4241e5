"""Regression: the getter outputs one 3-D vector per point.

Both are deterministic: tracking with ``algo="prob"`` is refused.
"""
import torch
import torch.nn.functional as F

from dwi_ml.models.direction_getters.base import AbstractDirectionGetter


class CosineRegressionDG(AbstractDirectionGetter):
    """Loss ``1 - cos(output, target)``, in [0, 2].

    Only the angle counts: neither vector's length matters.
    """

    key = "cosine-regression"
    nb_dir_outputs = 3

    def compute_direction_losses(self, dir_outputs, target_dirs):
        return 1 - F.cosine_similarity(dir_outputs, target_dirs, dim=1)

    def get_det_directions(self, dir_outputs):
        return F.normalize(dir_outputs, dim=1)


class L2RegressionDG(AbstractDirectionGetter):
    """Loss ``|| output - target / ||target|| ||_2`` (not squared).

    The target is normalised to unit length, so the loss does not depend on
    the step size; the output is not, so the getter learns unit vectors.
    """

    key = "l2-regression"
    nb_dir_outputs = 3

    def compute_direction_losses(self, dir_outputs, target_dirs):
        unit_targets = F.normalize(target_dirs, dim=1)
        return torch.linalg.vector_norm(dir_outputs - unit_targets, dim=1)

    def get_det_directions(self, dir_outputs):
        return F.normalize(dir_outputs, dim=1)
