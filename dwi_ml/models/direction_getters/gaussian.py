"""Gaussians over the unit direction: one, or a mixture.

Both take ``entropy_weight`` (w, default 0): the loss becomes
``NLL + w * H``, where ``H`` is the entropy of the predicted distribution
(for the mixture, its upper bound ``H(pi) + sum_k pi_k H_k``), so a positive
w favours confident predictions, as in the reference.
"""
import math

import torch
import torch.nn.functional as F

from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.base import AbstractDirectionGetter
from dwi_ml.models.direction_getters.random_draws import sample_classes
from dwi_ml.models.directions import unit_vectors

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _gaussian_log_densities(unit_targets, means, log_sigmas):
    """log N(x; mu, diag(sigma^2)) summed over the 3 axes, (..., K)."""
    # Written from log sigma rather than with torch.distributions, whose
    # argument checks raise on a diverged (NaN) output: a NaN loss must
    # reach the trainer's NaN check and stop the run cleanly.
    # ((x - mu) / sigma)^2 / 2 through exp(-log sigma): exp(2 log sigma)
    # squared underflowed in the backward pass from log sigma ~ -22 (float32).
    squared = 0.5 * ((unit_targets - means) * torch.exp(-log_sigmas)) ** 2
    return -(log_sigmas + _HALF_LOG_2PI + squared).sum(dim=-1)


def _gaussian_entropies(log_sigmas):
    """Entropy of diagonal 3-D Gaussians: sum_k log sigma_k + 3/2 log(2 pi e)."""
    return (log_sigmas + _HALF_LOG_2PI + 0.5).sum(dim=-1)


def _check_entropy_weight(value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise DwiMLUserError(
            f"argument 'entropy_weight': expected a number >= 0, got "
            f"{value!r}.")
    return float(value)


class GaussianDG(AbstractDirectionGetter):
    """Outputs ``(mu_x, mu_y, mu_z, log_sigma_x, log_sigma_y, log_sigma_z)``.

    The loss is the negative log-likelihood of the unit target direction
    ``x`` under ``N(mu, diag(sigma ** 2))``::

        sum_k [ log sigma_k + log(2 pi) / 2 + (x_k - mu_k) ** 2 / (2 sigma_k ** 2) ]

    plus ``entropy_weight`` times the entropy. Tracking returns ``mu``
    ("det") or a draw ``mu + sigma * z`` ("prob"), normalised to unit length.
    """

    key = "gaussian"
    nb_dir_outputs = 6

    def __init__(self, input_size, add_eos=False, eos_weight=1.0,
                 dropout=0.0, entropy_weight=0.0,
                 eos_only_at_fibre_ends=False):
        super().__init__(input_size, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)
        self.entropy_weight = _check_entropy_weight(entropy_weight)

    @property
    def params(self):
        return {**super().params, "entropy_weight": self.entropy_weight}

    def compute_direction_losses(self, dir_outputs, target_dirs):
        means, log_sigmas = dir_outputs[:, :3], dir_outputs[:, 3:6]
        unit_targets = F.normalize(target_dirs, dim=1)
        losses = -_gaussian_log_densities(unit_targets, means, log_sigmas)
        if self.entropy_weight:
            losses = losses + self.entropy_weight * _gaussian_entropies(
                log_sigmas)
        return losses

    def get_det_directions(self, dir_outputs):
        return unit_vectors(dir_outputs[:, :3])

    def sample_directions(self, dir_outputs, draws):
        means, sigmas = dir_outputs[:, :3], torch.exp(dir_outputs[:, 3:6])
        _, normals = draws.draw(dir_outputs, nb_normals=3)
        return unit_vectors(means + sigmas * normals)


class GaussianMixtureDG(AbstractDirectionGetter):
    """A mixture of ``nb_gaussians`` diagonal Gaussians.

    Outputs, per point: K mixture logits, then K means (3 each), then K log
    sigmas (3 each): ``7 K`` columns. The loss is the negative
    log-likelihood of the unit target, ``-log sum_k pi_k N(x; mu_k,
    sigma_k)`` (computed with logsumexp), plus ``entropy_weight`` times the
    entropy bound. Tracking: "det" returns the mean of the most probable
    component; "prob" draws a component from ``pi``, then a direction from
    it. The reference has no EOS for this getter; ours has, like the others.

    Parameters
    ----------
    nb_gaussians : int
        K, the number of components (3 in the reference).
    """

    key = "gaussian-mixture"

    def __init__(self, input_size, add_eos=False, eos_weight=1.0,
                 dropout=0.0, entropy_weight=0.0, nb_gaussians=3,
                 eos_only_at_fibre_ends=False):
        self.nb_gaussians = check_int("nb_gaussians", nb_gaussians, 1)
        self.nb_dir_outputs = 7 * self.nb_gaussians
        super().__init__(input_size, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)
        self.entropy_weight = _check_entropy_weight(entropy_weight)

    @property
    def params(self):
        return {**super().params, "entropy_weight": self.entropy_weight,
                "nb_gaussians": self.nb_gaussians}

    def split_mixture(self, dir_outputs):
        """Log weights (M, K), means (M, K, 3) and log sigmas (M, K, 3)."""
        k = self.nb_gaussians
        log_weights = torch.log_softmax(dir_outputs[:, :k], dim=1)
        means = dir_outputs[:, k:4 * k].reshape(-1, k, 3)
        log_sigmas = dir_outputs[:, 4 * k:7 * k].reshape(-1, k, 3)
        return log_weights, means, log_sigmas

    def compute_direction_losses(self, dir_outputs, target_dirs):
        log_weights, means, log_sigmas = self.split_mixture(dir_outputs)
        unit_targets = F.normalize(target_dirs, dim=1)[:, None, :]
        log_densities = _gaussian_log_densities(unit_targets, means,
                                                log_sigmas)
        losses = -torch.logsumexp(log_weights + log_densities, dim=1)
        if self.entropy_weight:
            weights = torch.exp(log_weights)
            entropy = (-(weights * log_weights).sum(dim=1)
                       + (weights * _gaussian_entropies(log_sigmas)).sum(1))
            losses = losses + self.entropy_weight * entropy
        return losses

    def get_det_directions(self, dir_outputs):
        log_weights, means, _ = self.split_mixture(dir_outputs)
        best = torch.argmax(log_weights, dim=1)
        return unit_vectors(means[torch.arange(len(best)), best])

    def sample_directions(self, dir_outputs, draws):
        log_weights, means, log_sigmas = self.split_mixture(dir_outputs)
        rows = torch.arange(len(means), device=means.device)
        # One uniform picks the component, three normals its draw.
        uniforms, noise = draws.draw(dir_outputs, nb_uniforms=1,
                                     nb_normals=3)
        chosen = sample_classes(torch.exp(log_weights), uniforms)
        return unit_vectors(means[rows, chosen]
                            + torch.exp(log_sigmas[rows, chosen]) * noise)
