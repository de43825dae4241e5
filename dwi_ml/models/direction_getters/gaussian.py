"""A 3-D Gaussian with diagonal covariance over the unit direction."""
import math

import torch
import torch.nn.functional as F

from dwi_ml.models.direction_getters.base import AbstractDirectionGetter


class GaussianDG(AbstractDirectionGetter):
    """Outputs ``(mu_x, mu_y, mu_z, log_sigma_x, log_sigma_y, log_sigma_z)``.

    The loss is the negative log-likelihood of the unit target direction
    ``x`` under ``N(mu, diag(sigma ** 2))``::

        sum_k [ log sigma_k + log(2 pi) / 2 + (x_k - mu_k) ** 2 / (2 sigma_k ** 2) ]

    Tracking returns ``mu`` ("det") or a draw ``mu + sigma * z`` ("prob"),
    normalised to unit length.
    """

    key = "gaussian"
    nb_dir_outputs = 6

    @staticmethod
    def _split(dir_outputs):
        return dir_outputs[:, :3], torch.exp(dir_outputs[:, 3:6])

    def compute_direction_losses(self, dir_outputs, target_dirs):
        # Written from log sigma rather than with torch.distributions, whose
        # argument checks raise on a diverged (NaN) output: a NaN loss must
        # reach the trainer's NaN check and stop the run cleanly.
        means, log_sigmas = dir_outputs[:, :3], dir_outputs[:, 3:6]
        unit_targets = F.normalize(target_dirs, dim=1)
        squared = (unit_targets - means) ** 2 / (2 * torch.exp(2 * log_sigmas))
        return (log_sigmas + 0.5 * math.log(2 * math.pi) + squared).sum(dim=1)

    def get_det_directions(self, dir_outputs):
        return F.normalize(dir_outputs[:, :3], dim=1)

    def sample_directions(self, dir_outputs, generator):
        means, sigmas = self._split(dir_outputs)
        noise = torch.randn(means.shape, generator=generator,
                            device=means.device, dtype=means.dtype)
        return F.normalize(means + sigmas * noise, dim=1)
