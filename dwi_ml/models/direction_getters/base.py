"""What every direction getter shares: layers, EOS, loss and tracking API.

A direction getter maps the hidden state of each prediction point,
``(M, input_size)``, to one output row ``(M, output_size)``:

- the first ``nb_dir_outputs`` columns parametrise the direction (a vector,
  logits over a sphere, a distribution);
- with ``add_eos`` the last column is the EOS logit.

Loss per point ``m``::

    loss_m = (1 - eos_target_m) * direction_loss_m
             + eos_weight * BCEWithLogits(eos_logit_m, eos_target_m)

(the second term only with EOS), and ``compute_loss`` returns the mean over
the ``M`` points and ``M``. Targets follow
:mod:`dwi_ml.models.directions`: voxel-space segments; each getter says
whether it normalises them.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from dwi_ml.io_utils.arg_checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_positive_float,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters.random_draws import as_draws

TRACKING_ALGOS = ("det", "prob")


def at_least_float32(tensor):
    """``tensor`` as float32 if of a narrower (or integer) type; float64
    stays float64 (e.g. a model.double())."""
    if tensor.dtype in (torch.float32, torch.float64):
        # No call at all: a tracking step comes here for a few rows.
        return tensor
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class AbstractDirectionGetter(torch.nn.Module):
    """Two fully connected layers from the hidden size to the outputs.

    Parameters
    ----------
    input_size : int
        Width of the hidden state given to the getter.
    add_eos : bool
        Add an EOS logit (last output column).
    eos_weight : float
        Weight of the EOS loss term.
    dropout : float in [0, 1)
        Dropout between the two layers (``--dg_dropout``).
    eos_only_at_fibre_ends : bool
        With EOS, learn "stop" only where a fibre ends: the last point of a
        split piece that ends at the cut is left out of the loss (the
        model reads it in ``compute_loss``'s ``open_ends``). False, the
        default (as the reference dwi_ml): every streamline's last point
        is an EOS target.

    Notes
    -----
    Subclasses set ``key`` (their name in the registry),
    ``nb_dir_outputs`` (before calling this ``__init__``), and implement
    ``compute_direction_losses``, ``get_det_directions`` and, when they can
    sample, ``sample_directions``.
    """

    key = None
    nb_dir_outputs = None

    def __init__(self, input_size, add_eos=False, eos_weight=1.0,
                 dropout=0.0, eos_only_at_fibre_ends=False):
        super().__init__()
        self.input_size = input_size
        self.add_eos = check_bool("add_eos", add_eos)
        self.eos_only_at_fibre_ends = check_bool("eos_only_at_fibre_ends",
                                                 eos_only_at_fibre_ends)
        self.eos_weight = check_positive_float("eos_weight", eos_weight)
        self.dropout = check_fraction("dropout", dropout)
        self.output_size = self.nb_dir_outputs + int(self.add_eos)
        hidden_size = math.ceil(input_size / 2)
        # Named so that the linear layers keep the state_dict keys
        # (layers.0, layers.2) of models saved before the dropout existed.
        self.layers = torch.nn.Sequential(OrderedDict([
            ("0", torch.nn.Linear(input_size, hidden_size)),
            ("1", torch.nn.ReLU()),
            ("dropout", torch.nn.Dropout(self.dropout)),
            ("2", torch.nn.Linear(hidden_size, self.output_size))]))

    @property
    def params(self):
        """dict: the getter's own arguments (``dg_args``), JSON-able."""
        return {"add_eos": self.add_eos, "eos_weight": self.eos_weight,
                "dropout": self.dropout,
                "eos_only_at_fibre_ends": self.eos_only_at_fibre_ends}

    def forward(self, hidden):
        """(M, input_size) -> (M, output_size)."""
        if self.training:
            return self.layers(hidden)
        # In eval mode the dropout is the identity: the two products and the
        # ReLU called directly give the same values without three module
        # calls, which cost more than the products at a tracking step.
        first, _, _, last = self.layers
        return F.linear(F.relu(F.linear(hidden, first.weight, first.bias)),
                        last.weight, last.bias)

    def split_eos(self, outputs):
        """Return (direction outputs (M, nb_dir_outputs), EOS logits (M,)
        or None)."""
        dir_outputs = outputs[:, :self.nb_dir_outputs]
        if not self.add_eos:
            return dir_outputs, None
        return dir_outputs, outputs[:, self.nb_dir_outputs]

    def compute_direction_losses(self, dir_outputs, target_dirs):
        """Direction loss of each point, (M,)."""
        raise NotImplementedError(
            f"{type(self).__name__}.compute_direction_losses: not implemented; "
            "a subclass must define it (docs/extending.md).")

    def compute_loss(self, outputs, target_dirs, eos_targets=None):
        """Mean loss over the M points, and M.

        Parameters
        ----------
        outputs : torch.Tensor (M, output_size)
        target_dirs : torch.Tensor (M, 3)
            Voxel-space directions; ignored where ``eos_targets`` is 1.
        eos_targets : torch.Tensor (M,) or None
            Required with ``add_eos``: 1 where the streamline stops.

        Returns
        -------
        mean_loss : torch.Tensor (scalar)
        n_points : int
        """
        losses, n_points = self.compute_named_losses(outputs, target_dirs,
                                                     eos_targets)
        return sum(losses.values()), n_points

    def compute_named_losses(self, outputs, target_dirs, eos_targets=None):
        """The loss split by term: ``{'direction': ..., 'eos': ...}``.

        Same arguments as :meth:`compute_loss`. Each term is a mean over the
        M points, so their sum is :meth:`compute_loss`'s; ``eos`` (already
        weighted by ``eos_weight``) is present only with ``add_eos``.
        """
        losses = self.compute_per_point_losses(outputs, target_dirs,
                                               eos_targets)
        return ({name: values.mean() for name, values in losses.items()},
                len(losses["direction"]))

    def compute_per_point_losses(self, outputs, target_dirs,
                                 eos_targets=None):
        """Each term of the loss at each of the M points, not reduced.

        Same arguments as :meth:`compute_loss`. Returns ``{'direction':
        (M,), 'eos': (M,)}`` float32 tensors (``eos``, weighted by
        ``eos_weight``, only with ``add_eos``): ``direction`` is 0 where
        the streamline stops. Their means are
        :meth:`compute_named_losses`' terms; their sum over the terms is
        the loss of each point.
        """
        # Under mixed precision the outputs may be float16, in which exp()
        # of a log-sigma or log-kappa overflows: losses are float32 (float64
        # for a model.double()).
        dir_outputs, eos_logits = self.split_eos(at_least_float32(outputs))
        losses = self.compute_direction_losses(
            dir_outputs, at_least_float32(target_dirs))
        if not self.add_eos:
            return {"direction": losses}
        if eos_targets is None:
            raise ValueError("eos_targets are required with add_eos.")
        eos_targets = at_least_float32(eos_targets)
        eos_losses = F.binary_cross_entropy_with_logits(
            eos_logits, eos_targets, reduction="none")
        return {"direction": (1 - eos_targets) * losses,
                "eos": self.eos_weight * eos_losses}

    def log_largest_class_probability(self, dir_outputs):
        """Log-probability of the most likely direction class, (N,).

        A getter without classes has one "continue" class: 0 (probability
        1). See :meth:`eos_is_most_likely`.
        """
        return dir_outputs.new_zeros(len(dir_outputs))

    def eos_is_most_likely(self, outputs):
        """(N,) bool: EOS is the most likely class of each point.

        The classes are EOS, of probability ``p = sigmoid(eos_logit)``, and
        each direction class ``j``, of probability ``(1 - p) q_j``. EOS wins
        where ``p > (1 - p) max_j q_j``, i.e. ``eos_logit > log max_j q_j``:
        ``p > 0.5`` for getters without classes. The reference's
        ``--eos_stop max``. Requires ``add_eos``.
        """
        dir_outputs, eos_logits = self.split_eos(at_least_float32(outputs))
        return eos_logits > self.log_largest_class_probability(dir_outputs)

    def get_det_directions(self, dir_outputs):
        """Most likely unit direction of each point, (N, 3)."""
        raise NotImplementedError(
            f"{type(self).__name__}.get_det_directions: not implemented; "
            "a subclass must define it (docs/extending.md).")

    def sample_directions(self, dir_outputs, draws):
        """One random unit direction per point, (N, 3), from ``draws``
        (:mod:`~dwi_ml.models.direction_getters.random_draws`)."""
        raise DwiMLUserError(
            f"argument 'algo': 'prob' needs a probabilistic direction "
            f"getter; '{self.key}' is deterministic, use 'det'.")

    def get_tracking_directions(self, outputs, algo="det", draws=None):
        """Next directions for tracking.

        Parameters
        ----------
        outputs : torch.Tensor (N, output_size)
        algo : "det" or "prob"
            Most likely direction, or one drawn from the model.
        draws : KeyedDraws, torch.Generator or None
            Random source of "prob": the draws of each row by its key
            (:class:`~dwi_ml.models.direction_getters.random_draws.KeyedDraws`,
            as the tracker does), or a random stream on the outputs'
            device (None: torch's global one).

        Returns
        -------
        directions : torch.Tensor (N, 3)
            Unit vectors in voxel space; scale them by the step size in
            voxels.
        eos_probs : torch.Tensor (N,) or None
            Probability to stop here, with EOS.
        """
        check_choice("algo", algo, TRACKING_ALGOS)
        dir_outputs, eos_logits = self.split_eos(at_least_float32(outputs))
        if algo == "det":
            directions = self.get_det_directions(dir_outputs)
        else:
            directions = self.sample_directions(dir_outputs,
                                                as_draws(draws))
        eos_probs = None if eos_logits is None else torch.sigmoid(eos_logits)
        return directions, eos_probs
