"""Direction getters: losses against hand-computed values, tracking draws."""
import dipy.data
import numpy as np
import pytest
import scipy.stats
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.direction_getters import (
    DIRECTION_GETTERS,
    CosineRegressionDG,
    FisherVonMisesDG,
    GaussianDG,
    L2RegressionDG,
    SphereClassificationDG,
    make_direction_getter,
)
from dwi_ml.models.direction_getters.fisher_von_mises import fisher_von_mises_nll
from dwi_ml.models.direction_getters.random_draws import KeyedDraws
from tests.tolerances import EPS64, rounding_atol

TARGETS = np.array([[2., 0., 0.], [0., 1., 0.], [0., 0., 0.5]])


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def as_tensor(array):
    """float32, as in training: losses are compared with float64 formulas
    up to the float32 roundings of their steps (counted per test), in
    values of the size of the terms."""
    return torch.tensor(array, dtype=torch.float32)


def mean_loss(dg, outputs, targets=TARGETS, eos_targets=None):
    loss, n_points = dg.compute_loss(
        as_tensor(outputs), as_tensor(targets),
        None if eos_targets is None else as_tensor(eos_targets))
    assert n_points == len(outputs)
    return loss.item()


def test_cosine_loss_is_one_minus_cosine():
    outputs = np.array([[1., 0., 0.], [1., 1., 0.], [0., 0., -2.]])
    cosines = (unit(outputs) * unit(TARGETS)).sum(1)  # 1, 1/sqrt(2), -1
    expected = np.mean(1 - cosines)
    assert expected == pytest.approx((0 + (1 - 2 ** -0.5) + 2) / 3,
                                     abs=rounding_atol(2, 16, eps=EPS64))
    # Two unit vectors (~7 roundings each), a dot product (5), 1 - cos and
    # a mean (3): < 24 roundings of terms <= 2.
    assert mean_loss(CosineRegressionDG(4), outputs) == pytest.approx(
        expected, abs=rounding_atol(2, 24))


def test_l2_loss_is_distance_to_unit_target():
    outputs = np.array([[1., 0., 0.], [0.5, 0.5, 0.], [0., 0., 0.]])
    expected = np.mean([0., np.sqrt(0.5), 1.])
    # A unit vector (7), a difference, a norm (6) and a mean (3).
    assert mean_loss(L2RegressionDG(4), outputs) == pytest.approx(
        expected, abs=rounding_atol(1, 20))


def test_sphere_classification_targets_closest_vertex_and_cross_entropy():
    dg = SphereClassificationDG(4, sphere="repulsion100")
    vertices = dipy.data.get_sphere(name="repulsion100").vertices
    known = [17, 42, 99]
    # Scaled and slightly moved vertices: the closest stays the same.
    targets = 0.3 * vertices[known] + np.array([0.01, -0.01, 0.005])
    assert dg.directions_to_classes(as_tensor(targets)).tolist() == known
    logits = np.random.default_rng(0).normal(size=(3, 100))
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(3), known])
    # A log of a sum of 100 exponentials (~110 roundings relatively: as
    # many absolutely in the log), in logits < 4 plus log(100).
    assert mean_loss(dg, logits, targets) == pytest.approx(
        expected, abs=rounding_atol(4 + np.log(100), 110))


def test_gaussian_nll():
    outputs = np.array([[1., 0., 0., 0., -1., 0.5],
                        [0.2, 0.7, -0.1, -0.3, -0.3, -0.3],
                        [0., 0., 0., 0.2, 0.1, -2.]])
    means, sigmas = outputs[:, :3], np.exp(outputs[:, 3:])
    x = unit(TARGETS)
    nll = np.sum(np.log(sigmas) + 0.5 * np.log(2 * np.pi)
                 + (x - means) ** 2 / (2 * sigmas ** 2), axis=1)
    # ~10 roundings per axis, 3 axes and a mean, in terms < 20
    # ((x - mean)^2 / 2 sigma^2 with sigma >= exp(-2)).
    assert mean_loss(GaussianDG(4), outputs) == pytest.approx(
        nll.mean(), abs=rounding_atol(20, 40))


def test_gaussian_nll_gradient_stays_finite_for_tiny_sigma():
    # exp(2 log sigma) squared underflowed in the backward pass: an
    # infinite gradient from log sigma ~ -22 in float32.
    outputs = torch.tensor([[0.9, 0.1, 0.0, -30.0, -30.0, -30.0]],
                           requires_grad=True)
    loss = GaussianDG(4).compute_loss(outputs, torch.tensor([[1., 0., 0.]]))
    loss[0].sum().backward()
    assert torch.isfinite(loss[0]).all() and torch.isfinite(outputs.grad).all()


def test_fisher_von_mises_nll_exact_formula():
    raw_means = np.array([[1., 0.2, 0.], [1., 1., 1.], [0., -0.3, 2.]])
    kappas = np.array([0.5, 3., 10.])
    outputs = np.column_stack([raw_means, np.log(kappas)])
    mu, x = unit(raw_means), unit(TARGETS)
    log_density = (np.log(kappas / (4 * np.pi * np.sinh(kappas)))
                   + kappas * (mu * x).sum(1))
    scipy_log_density = [scipy.stats.vonmises_fisher(m, k).logpdf(v)
                         for m, k, v in zip(mu, kappas, x)]
    # float64 both, ~16 roundings in terms < 2 kappa.
    np.testing.assert_allclose(log_density, scipy_log_density, rtol=0,
                               atol=rounding_atol(2 * kappas.max(), 16,
                                                  eps=EPS64))
    # float32: unit vectors, a dot product, log sinh, a mean: < 30
    # roundings in terms < 2 kappa.
    assert mean_loss(FisherVonMisesDG(4), outputs) == pytest.approx(
        -log_density.mean(), abs=rounding_atol(2 * kappas.max(), 30))


def test_fisher_von_mises_nll_is_stable_for_large_kappa():
    angle = 1e-3
    mu = torch.tensor([[0., 0., 1.]], dtype=torch.float64)
    x = torch.tensor([[np.sin(angle), 0., np.cos(angle)]],
                     dtype=torch.float64)
    log_kappa = torch.tensor([15.], dtype=torch.float64, requires_grad=True)
    nll = fisher_von_mises_nll(mu, log_kappa, x)
    kappa = np.exp(15.)
    # sinh(kappa) overflows: the exact value with log sinh k = k - log 2.
    expected = -(np.log(kappa) - np.log(2 * np.pi) - kappa
                 + kappa * np.cos(angle))
    # float64 sums of terms of size kappa (3e6) that cancel to ~10.
    assert nll.item() == pytest.approx(expected,
                                       abs=rounding_atol(kappa, 8, eps=EPS64))
    nll.backward()
    assert torch.isfinite(log_kappa.grad).all()
    huge = FisherVonMisesDG(4).compute_direction_losses(
        torch.tensor([[0., 0., 1., 500.]]), torch.tensor([[0., 0., 1.]]))
    assert torch.isfinite(huge).all()


def test_eos_term_is_weighted_bce_and_masks_direction_loss():
    dg = CosineRegressionDG(4, add_eos=True, eos_weight=2.5)
    directions = np.array([[1., 1., 0.], [0., 1., 0.], [5., 5., 5.]])
    eos_logits = np.array([0.3, -1.2, 2.0])
    eos_targets = np.array([0., 0., 1.])
    outputs = np.column_stack([directions, eos_logits])
    probs = 1 / (1 + np.exp(-eos_logits))
    bce = -(eos_targets * np.log(probs)
            + (1 - eos_targets) * np.log(1 - probs))
    dir_losses = 1 - (unit(directions) * unit(TARGETS)).sum(1)
    expected = np.mean((1 - eos_targets) * dir_losses + 2.5 * bce)
    # Cosine terms as above, a BCE (~6 roundings), weights and a mean, in
    # terms < 2.5 * 2.2.
    assert mean_loss(dg, outputs, TARGETS, eos_targets) == pytest.approx(
        expected, abs=rounding_atol(6, 40))
    _, eos_probs = dg.get_tracking_directions(as_tensor(outputs))
    # A float32 logit (|x| <= 2, moving p by <= |dx|) and exp, add, divide.
    np.testing.assert_allclose(eos_probs.numpy(), probs, rtol=0,
                               atol=rounding_atol(2, 1) + rounding_atol(1, 3))


# Getters whose first 3 direction outputs are the direction itself.
VECTOR_OUTPUT_GETTERS = ("cosine-regression", "l2-regression",
                         "cosine-plus-l2-regression", "gaussian",
                         "fisher-von-mises")


@pytest.mark.parametrize("dg_key", sorted(DIRECTION_GETTERS))
def test_det_direction_is_the_expected_unit_vector(dg_key):
    dg = make_direction_getter(dg_key, 4)
    outputs = np.zeros((2, dg.nb_dir_outputs))
    if dg_key.endswith("sphere-classification"):
        outputs[[0, 1], [5, 60]] = 3.
        expected = dg.vertices[[5, 60]].numpy()
    elif dg_key == "gaussian-mixture":
        # Component 1 of 3 has the highest weight; its mean is the answer.
        outputs[:, 1] = 2.
        outputs[:, 3 + 3:3 + 6] = [[0., 3., 4.], [-2., 0., 0.]]
        expected = [[0., 0.6, 0.8], [-1., 0., 0.]]
    else:
        assert dg_key in VECTOR_OUTPUT_GETTERS
        outputs[:, :3] = [[0., 3., 4.], [-2., 0., 0.]]
        expected = [[0., 0.6, 0.8], [-1., 0., 0.]]
    directions, eos_probs = dg.get_tracking_directions(as_tensor(outputs),
                                                       algo="det")
    assert eos_probs is None
    # A float32 unit vector (or vertex): a norm and a division.
    np.testing.assert_allclose(directions.numpy(), expected, rtol=0,
                               atol=rounding_atol(1, 8))


@pytest.mark.parametrize("dg_key", ["sphere-classification",
                                    "smooth-sphere-classification", "gaussian",
                                    "gaussian-mixture", "fisher-von-mises"])
@pytest.mark.parametrize("source", ["keys", "generator"])
def test_prob_samples_are_unit_and_reproducible(dg_key, source):
    dg = make_direction_getter(dg_key, 4)
    outputs = torch.randn(50, dg.nb_dir_outputs,
                          generator=torch.Generator().manual_seed(1))

    def random_source(seed):
        if source == "keys":
            return KeyedDraws.for_keys(seed, torch.arange(50), 0)
        return torch.Generator().manual_seed(seed)

    draws = [dg.get_tracking_directions(outputs, "prob",
                                        random_source(seed))[0]
             for seed in (7, 7, 8)]
    # float32 unit draws (a sampler's few steps, then a norm).
    np.testing.assert_allclose(draws[0].norm(dim=1).numpy(), 1., rtol=0,
                               atol=rounding_atol(1, 16))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def keyed_draws(nb_rows, seed=3):
    """The tracker's draws for rows of keys 0..nb_rows - 1."""
    return KeyedDraws.for_keys(seed, torch.arange(nb_rows), 0)


def test_fisher_von_mises_samples_follow_kappa():
    mean = unit(np.array([[1., 2., -2.]]))
    cosines = {}
    for seed, kappa in enumerate((2., 1000.)):
        outputs = as_tensor(np.tile(np.append(mean, np.log(kappa)),
                                    (4000, 1)))
        draws = FisherVonMisesDG(4).sample_directions(
            outputs, keyed_draws(4000, seed))
        cosines[kappa] = (draws.numpy() @ mean[0]).astype(np.float64)
    # E[mu.x] = coth(kappa) - 1 / kappa for the 3-D Fisher-von Mises.
    expected = 1 / np.tanh(2.) - 1 / 2.
    standard_error = cosines[2.].std() / np.sqrt(4000)
    assert abs(cosines[2.].mean() - expected) < 4 * standard_error
    assert cosines[1000.].min() > 0.98
    standard_error = cosines[1000.].std() / np.sqrt(4000)
    assert cosines[1000.].mean() == pytest.approx(
        1 - 1 / 1000., abs=4 * standard_error + rounding_atol(1, 8))


def test_sphere_classification_draws_follow_the_softmax():
    dg = SphereClassificationDG(4, sphere="repulsion100")
    expected = np.zeros(100)
    expected[[3, 40, 41, 99]] = [0.5, 0.3, 0.15, 0.05]
    with np.errstate(divide="ignore"):
        logits = np.log(expected)     # -inf: probability 0
    nb_draws = 20000
    outputs = as_tensor(np.tile(logits, (nb_draws, 1)))
    draws = dg.sample_directions(outputs, keyed_draws(nb_draws))
    classes = dg.directions_to_classes(draws).numpy()
    frequencies = np.bincount(classes, minlength=100) / nb_draws
    standard_errors = np.sqrt(expected * (1 - expected) / nb_draws)
    assert np.all(np.abs(frequencies - expected) <= 4 * standard_errors)


def test_gaussian_samples_concentrate_for_small_sigma():
    outputs = as_tensor(np.tile([0., 0., 1., -6., -6., -6.], (500, 1)))
    draws = GaussianDG(4).sample_directions(outputs, keyed_draws(500))
    assert draws[:, 2].min() > 0.99


def test_regression_refuses_prob_tracking_and_bad_algo():
    dg = CosineRegressionDG(4)
    with pytest.raises(DwiMLUserError, match="cosine-regression"):
        dg.get_tracking_directions(torch.ones(2, 3), algo="prob")
    with pytest.raises(DwiMLUserError, match="algo"):
        dg.get_tracking_directions(torch.ones(2, 3), algo="sample")


@pytest.mark.parametrize("dg_key, dg_args, match", [
    ("nope", {}, "dg_key"),
    ("sphere-classification", {"sphere": "nope"}, "sphere"),
    ("gaussian", {"sphere": "repulsion100"}, "dg_args"),
    ("cosine-regression", {"eos_weight": -1.}, "eos_weight"),
])
def test_bad_direction_getter_args(dg_key, dg_args, match):
    with pytest.raises(DwiMLUserError, match=match):
        make_direction_getter(dg_key, 4, dg_args)
