"""The reference's other direction getters and options, against hand values."""
import math

import numpy as np
import pytest
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters import (
    CosinePlusL2RegressionDG,
    GaussianDG,
    GaussianMixtureDG,
    L2RegressionDG,
    SmoothSphereClassificationDG,
    make_direction_getter,
)
from dwi_ml.models.direction_getters.random_draws import KeyedDraws
from tests.tolerances import rounding_atol

# float64 throughout: these tests check formulas, not rounding.
TARGETS = torch.tensor([[2., 0., 0.], [0., 1., 0.], [0., 0., 0.5]],
                       dtype=torch.float64)


def losses(dg, outputs, targets=TARGETS):
    return dg.compute_direction_losses(
        torch.as_tensor(outputs, dtype=torch.float64), targets).numpy()


def test_cosine_plus_l2_is_the_sum_of_both_terms():
    outputs = np.array([[1., 0., 0.], [1., 1., 0.], [0., 0., -2.]])
    dg = CosinePlusL2RegressionDG(4)
    unit_targets = np.eye(3)
    cosines = [1., 1 / math.sqrt(2), -1.]
    expected = [1 - c + np.linalg.norm(o - t)
                for c, o, t in zip(cosines, outputs, unit_targets)]
    np.testing.assert_allclose(losses(dg, outputs), expected, rtol=1e-12)


def test_regression_normalisation_options():
    outputs = np.array([[3., 4., 0.]])
    target = torch.tensor([[0., 2., 0.]], dtype=torch.float64)
    # Default: unit targets, outputs as they are: |(3, 4, 0) - (0, 1, 0)|.
    assert losses(L2RegressionDG(4), outputs, target) == pytest.approx(
        math.sqrt(18))
    # Outputs to norm 1: (0.6, 0.8, 0) - (0, 1, 0).
    dg = L2RegressionDG(4, normalize_outputs=1.0)
    assert losses(dg, outputs, target) == pytest.approx(math.sqrt(0.4))
    # Targets kept at norm 2: (3, 4, 0) - (0, 2, 0).
    dg = L2RegressionDG(4, normalize_targets=None)
    assert losses(dg, outputs, target) == pytest.approx(math.sqrt(13))
    assert dg.params["normalize_targets"] is None


def test_gaussian_entropy_weight_adds_the_entropy():
    outputs = np.array([[1., 0., 0., math.log(0.5), 0., math.log(2.)]])
    target = torch.tensor([[3., 0., 0.]], dtype=torch.float64)
    nll = losses(GaussianDG(4), outputs, target)[0]
    # Entropy of N(mu, diag(s^2)) in 3-D: sum log s + 3/2 log(2 pi e).
    entropy = math.log(0.5) + math.log(2.) + 1.5 * math.log(2 * math.pi
                                                            * math.e)
    weighted = losses(GaussianDG(4, entropy_weight=0.3), outputs, target)[0]
    assert weighted == pytest.approx(nll + 0.3 * entropy, rel=1e-12)


def test_mixture_nll_against_hand_computed_value():
    dg = GaussianMixtureDG(4, nb_gaussians=2)
    assert dg.nb_dir_outputs == 14
    logits = [0., math.log(3.)]                      # weights 1/4, 3/4
    means = [[1., 0., 0.], [0., 1., 0.]]
    log_sigmas = [[0., 0., 0.], [math.log(0.5)] * 3]
    outputs = np.concatenate([logits, np.ravel(means),
                              np.ravel(log_sigmas)])[None]
    target = torch.tensor([[1., 0., 0.]], dtype=torch.float64)

    def density(x, mu, sigma):
        return np.prod(np.exp(-(x - mu) ** 2 / (2 * sigma ** 2))
                       / (sigma * math.sqrt(2 * math.pi)))
    x = np.array([1., 0., 0.])
    expected = -math.log(0.25 * density(x, np.array(means[0]), 1.)
                         + 0.75 * density(x, np.array(means[1]), 0.5))
    assert losses(dg, outputs, target)[0] == pytest.approx(expected,
                                                           rel=1e-12)
    # One component: the mixture is the Gaussian getter.
    single = GaussianMixtureDG(4, nb_gaussians=1)
    row = np.array([[5., 1., 0., 0., 0., 0., 0.]])
    np.testing.assert_allclose(
        losses(single, row, target), losses(GaussianDG(4), row[:, 1:], target),
        rtol=1e-12)


def test_mixture_samples_follow_the_weights():
    dg = GaussianMixtureDG(4, nb_gaussians=2)
    # 90 % on +x, 10 % on +y, both very narrow.
    row = np.concatenate([[math.log(9.), 0.], [1., 0., 0., 0., 1., 0.],
                          [-8.] * 6])
    outputs = torch.tensor(np.tile(row, (4000, 1)), dtype=torch.float32)
    draws = dg.sample_directions(outputs,
                                 KeyedDraws.for_keys(0, torch.arange(4000), 0))
    share_x = (draws[:, 0] > 0.99).double().mean().item()
    # Binomial(4000, 0.9): standard error 0.0047.
    assert abs(share_x - 0.9) < 4 * 0.0047
    assert ((draws[:, 0] > 0.99) | (draws[:, 1] > 0.99)).all()


def test_smooth_sphere_targets_and_loss():
    dg = SmoothSphereClassificationDG(4, sphere="repulsion100",
                                      smoothing_sigma_deg=10.)
    vertices = dg.vertices.double()
    target = vertices[7:8] * 2
    smoothed = dg.smoothed_targets(target.float()).double()
    angles = torch.acos((vertices @ vertices[7]).clamp(-1, 1))
    sigma = math.radians(10.)
    weights = torch.exp(-angles ** 2 / (2 * sigma ** 2))
    # float32 smoothing: each cosine c is within dc = 11 * EPS32 / 2 of the
    # float64 one (normalising the target: ~4.5 roundings; a dot product of
    # 3: 5; the float32 vertices' norm: sqrt(3) / 2). The exponent
    # e = acos(c) ** 2 / (2 sigma ** 2) then moves by
    # (theta / sin(theta)) * dc / sigma ** 2, with theta / sin(theta) below
    # pi / 2 where a weight is above exp(-40); and a softmax moves by at
    # most 2 p (1 - p) <= 1 / 2 times the largest change of the exponents.
    # Plus its own roundings, relative, on probabilities <= 1: acos, square,
    # divide (4), exp (1), a sum of 100 (99), divide (1), float32 (1).
    dc = rounding_atol(1, 11) / 2
    atol = math.pi / 4 * dc / sigma ** 2 + rounding_atol(1, 4 + 102) / 2
    np.testing.assert_allclose(smoothed[0].numpy(),
                               (weights / weights.sum()).numpy(), rtol=0,
                               atol=atol)
    assert torch.argmax(smoothed[0]) == 7
    outputs = torch.randn(1, 100, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))
    log_probs = torch.log_softmax(outputs[0], 0)
    expected = -(smoothed[0] * log_probs).sum()
    loss = dg.compute_direction_losses(outputs.float(), target.float())
    # The loss has the same targets (smoothed again in float32) and float32
    # outputs: each log-probability is within EPS32 / 2 times (2 |o| for the
    # outputs' rounding, 99 for the sum of 100 exponentials, 3 |log p| for
    # exp, log and the subtraction), and the sum of the 100 products of
    # targets (summing to 1) by them, all of one sign, adds 100 roundings
    # of the loss.
    nb_roundings = (2 * float(outputs.abs().max()) + 99
                    + 3 * float(log_probs.abs().max()))
    loss_atol = (rounding_atol(1, nb_roundings)
                 + rounding_atol(abs(expected.item()), 100)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=0,
                                        abs=loss_atol)


def test_sphere_defaults_to_symmetric724():
    assert make_direction_getter("sphere-classification", 4).nb_dir_outputs \
        == 724
    assert make_direction_getter("smooth-sphere-classification",
                                 4).params["sphere"] == "symmetric724"


def test_dropout_is_used_in_training_only_and_saved():
    dg = make_direction_getter("cosine-regression", 8, {"dropout": 0.5})
    assert dg.params["dropout"] == 0.5
    hidden = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    dg.eval()
    assert torch.equal(dg(hidden), dg(hidden))
    dg.train()
    torch.manual_seed(0)
    assert not torch.equal(dg(hidden), dg(hidden))
    # The linear layers keep the keys of models saved before dropout.
    assert sorted(dg.state_dict()) == ["layers.0.bias", "layers.0.weight",
                                       "layers.2.bias", "layers.2.weight"]


@pytest.mark.parametrize("dg_key, dg_args, match", [
    ("gaussian", {"entropy_weight": -1.}, "entropy_weight"),
    ("gaussian-mixture", {"nb_gaussians": 0}, "nb_gaussians"),
    ("cosine-regression", {"dropout": 1.5}, "dropout"),
    ("l2-regression", {"normalize_targets": 0.}, "normalize_targets"),
    ("smooth-sphere-classification", {"smoothing_sigma_deg": 0},
     "smoothing_sigma_deg"),
    ("sphere-classification", {"entropy_weight": 1.}, "dg_args"),
])
def test_bad_new_arguments(dg_key, dg_args, match):
    with pytest.raises(DwiMLUserError, match=match):
        make_direction_getter(dg_key, 4, dg_args)


def test_getter_options_from_the_command_line(tmp_path, capsys):
    import json

    from training_data import make_training_hdf5

    from dwi_ml.cli.dwiml_train_model import main as train_main

    hdf5_file = make_training_hdf5(str(tmp_path), nb_streamlines=30)
    common = [str(tmp_path), "mixture", hdf5_file, "input", "streamlines",
              "--max_epochs", "1", "--rnn_layer_sizes", "8", "--step_size",
              "1.5", "-v", "WARNING"]
    train_main([*common, "--dg_key", "gaussian-mixture", "--nb_gaussians",
                "2", "--entropy_weight", "0.1", "--dg_dropout", "0.2",
                "--add_eos", "--no-normalize_prev_dirs"])
    with open(tmp_path / "mixture" / "parameters.json") as f:
        model = json.load(f)["model"]
    assert model["dg_key"] == "gaussian-mixture"
    assert model["normalize_prev_dirs"] is False
    assert model["dg_args"] == {"add_eos": True, "eos_weight": 1.0,
                                "dropout": 0.2, "entropy_weight": 0.1,
                                "nb_gaussians": 2,
                                "eos_only_at_fibre_ends": False}
    # An option of another getter: one line, before any work.
    common[1] = "refused"
    with pytest.raises(SystemExit) as error:
        train_main([*common, "--sphere", "repulsion100"])
    assert error.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.endswith("argument --sphere: not an option of direction "
                            "getter 'cosine-regression', found "
                            "'repulsion100'.")
    assert not (tmp_path / "refused").exists()
