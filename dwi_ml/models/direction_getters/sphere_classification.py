"""Classification over the vertices of a dipy sphere."""
import math

import torch
import torch.nn.functional as F

from dwi_ml.io_utils.arg_checks import check_positive_float
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.base import AbstractDirectionGetter
from dwi_ml.models.direction_getters.random_draws import sample_classes


def _load_sphere_vertices(name):
    # Imported here: dipy.data costs a second at the start of every script.
    import dipy.data

    try:
        sphere = dipy.data.get_sphere(name=name)
    except dipy.data.DataError:
        raise DwiMLUserError(
            f"argument 'sphere': expected a dipy sphere name such as "
            f"'repulsion100' or 'symmetric724', found {name!r}.") from None
    return torch.as_tensor(sphere.vertices, dtype=torch.float32)


class SphereClassificationDG(AbstractDirectionGetter):
    """One logit per sphere vertex; cross-entropy loss.

    The class of a target direction is the vertex closest to it in angle
    (largest dot product with the unit target). Tracking returns that
    vertex ("det": highest logit) or draws one from the softmax ("prob").

    Parameters
    ----------
    sphere : str
        Name given to ``dipy.data.get_sphere``: 'symmetric724' (the
        default, as in the reference), 'repulsion100', 'repulsion724'...
    """

    key = "sphere-classification"

    def __init__(self, input_size, sphere="symmetric724", add_eos=False,
                 eos_weight=1.0, dropout=0.0,
                 eos_only_at_fibre_ends=False):
        vertices = _load_sphere_vertices(sphere)
        self.nb_dir_outputs = len(vertices)
        super().__init__(input_size, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)
        self.sphere = sphere
        # Rebuilt from the name: kept out of the state_dict.
        self.register_buffer("vertices", vertices, persistent=False)

    @property
    def params(self):
        return {**super().params, "sphere": self.sphere}

    def directions_to_classes(self, target_dirs):
        """Index of the vertex closest to each direction, int64 (M,)."""
        unit_targets = F.normalize(target_dirs, dim=1)
        return torch.argmax(unit_targets @ self.vertices.T, dim=1)

    def compute_direction_losses(self, dir_outputs, target_dirs):
        return F.cross_entropy(dir_outputs,
                               self.directions_to_classes(target_dirs),
                               reduction="none")

    def log_largest_class_probability(self, dir_outputs):
        return torch.log_softmax(dir_outputs, dim=1).max(dim=1).values

    def get_det_directions(self, dir_outputs):
        return self.vertices[torch.argmax(dir_outputs, dim=1)]

    def sample_directions(self, dir_outputs, draws):
        probs = torch.softmax(dir_outputs, dim=1)
        uniforms, _ = draws.draw(dir_outputs, nb_uniforms=1)
        return self.vertices[sample_classes(probs, uniforms)]


class SmoothSphereClassificationDG(SphereClassificationDG):
    """Sphere classification with Gaussian-smoothed targets.

    The target of a direction ``x`` is not one vertex but a distribution
    over all of them, ``p_j ∝ exp(-angle(v_j, x)^2 / (2 sigma^2))``, and the
    loss is the cross-entropy ``-sum_j p_j log softmax(outputs)_j``: a
    prediction one vertex away costs little, one across the sphere a lot.
    Its minimum is the entropy of ``p``, not 0. Tracking is as for
    'sphere-classification'.

    Parameters
    ----------
    smoothing_sigma_deg : float
        Sigma of the smoothing, in degrees (default 10, about twice the
        5-degree spacing of symmetric724's vertices).
    """

    key = "smooth-sphere-classification"

    def __init__(self, input_size, sphere="symmetric724", add_eos=False,
                 eos_weight=1.0, dropout=0.0, smoothing_sigma_deg=10.0,
                 eos_only_at_fibre_ends=False):
        super().__init__(input_size, sphere, add_eos, eos_weight, dropout,
                         eos_only_at_fibre_ends=eos_only_at_fibre_ends)
        self.smoothing_sigma_deg = check_positive_float(
            "smoothing_sigma_deg", smoothing_sigma_deg)

    @property
    def params(self):
        return {**super().params,
                "smoothing_sigma_deg": self.smoothing_sigma_deg}

    def smoothed_targets(self, target_dirs):
        """Target distributions over the vertices, (M, nb_vertices)."""
        cosines = F.normalize(target_dirs, dim=1) @ self.vertices.T
        angles = torch.acos(cosines.clamp(-1.0, 1.0))
        sigma = math.radians(self.smoothing_sigma_deg)
        return torch.softmax(-angles ** 2 / (2 * sigma ** 2), dim=1)

    def compute_direction_losses(self, dir_outputs, target_dirs):
        log_probs = torch.log_softmax(dir_outputs, dim=1)
        return -(self.smoothed_targets(target_dirs) * log_probs).sum(dim=1)
