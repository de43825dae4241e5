"""A Fisher-von Mises distribution on the 3-D unit sphere."""
import math

import torch
import torch.nn.functional as F

from dwi_ml.models.direction_getters.base import AbstractDirectionGetter
from dwi_ml.models.direction_getters.random_draws import as_draws
from dwi_ml.models.directions import unit_vectors

# Beyond these, float32 cannot tell the densities apart: exp(20) ~ 5e8 is a
# spread of ~5e-5 rad, and the normaliser stays exact down to exp(-20).
LOG_KAPPA_RANGE = (-20.0, 20.0)


def fisher_von_mises_nll(mean_dirs, log_kappas, unit_targets):
    """Negative log-likelihood of unit vectors under FvM(mu, kappa), (M,).

    The exact 3-D density is ``kappa / (4 pi sinh kappa) exp(kappa mu.x)``.
    Written as::

        -log kappa + log(2 pi) + log(1 - exp(-2 kappa)) + kappa (1 - mu.x)

    it has no overflowing ``sinh`` and stays finite for large ``kappa``.

    Parameters
    ----------
    mean_dirs : torch.Tensor (M, 3)
        Unit mean directions ``mu``.
    log_kappas : torch.Tensor (M,)
        ``log kappa``.
    unit_targets : torch.Tensor (M, 3)
        Unit directions ``x``.
    """
    kappas = torch.exp(log_kappas)
    cosines = (mean_dirs * unit_targets).sum(dim=1)
    return (-log_kappas + math.log(2 * math.pi)
            + torch.log(-torch.expm1(-2 * kappas))
            + kappas * (1 - cosines))


def sample_fisher_von_mises(mean_dirs, kappas, draws=None):
    """One draw per row from FvM(mu, kappa) on the unit sphere, (N, 3).

    Wood's (1994) method, exact in 3-D: the cosine to the mean is
    ``w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa`` for ``u ~ U(0, 1)``,
    written ``1 + log1p((1 - u) expm1(-2 kappa)) / kappa`` to stay exact for
    small and large kappa; the remaining direction is uniform around the
    mean. ``draws``: a draws object of
    :mod:`~dwi_ml.models.direction_getters.random_draws`, a
    ``torch.Generator`` or None (torch's global stream).
    """
    uniforms, tangents = as_draws(draws).draw(mean_dirs, nb_uniforms=1,
                                              nb_normals=3)
    uniforms = uniforms.squeeze(1)
    cosines = 1 + torch.log1p((1 - uniforms)
                              * torch.expm1(-2 * kappas)) / kappas
    cosines = cosines.clamp(-1, 1)
    # A Gaussian vector projected on the plane orthogonal to the mean has a
    # uniform direction in that plane.
    tangents -= (tangents * mean_dirs).sum(1, keepdim=True) * mean_dirs
    tangents = F.normalize(tangents, dim=1)
    sines = torch.sqrt(1 - cosines ** 2)
    return cosines[:, None] * mean_dirs + sines[:, None] * tangents


class FisherVonMisesDG(AbstractDirectionGetter):
    """Outputs a mean direction (3 values, normalised) and ``log kappa``.

    ``log kappa`` is clamped to ``LOG_KAPPA_RANGE``. The loss is
    :func:`fisher_von_mises_nll` of the unit target. Tracking returns the
    mean ("det") or a draw from the distribution ("prob").
    """

    key = "fisher-von-mises"
    nb_dir_outputs = 4

    @staticmethod
    def _split(dir_outputs):
        mean_dirs = F.normalize(dir_outputs[:, :3], dim=1)
        return mean_dirs, dir_outputs[:, 3].clamp(*LOG_KAPPA_RANGE)

    def compute_direction_losses(self, dir_outputs, target_dirs):
        mean_dirs, log_kappas = self._split(dir_outputs)
        return fisher_von_mises_nll(mean_dirs, log_kappas,
                                    F.normalize(target_dirs, dim=1))

    def get_det_directions(self, dir_outputs):
        return unit_vectors(dir_outputs[:, :3])

    def sample_directions(self, dir_outputs, draws):
        mean_dirs, log_kappas = self._split(dir_outputs)
        return sample_fisher_von_mises(mean_dirs, torch.exp(log_kappas),
                                       draws)
