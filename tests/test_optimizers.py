"""create_optimizer: Adam and AdamW fused, old optimizer states still load."""
import copy

import pytest
import torch

from dwi_ml.training.optimizers import create_optimizer, load_optimizer_state
from tests.tolerances import EPS64, rounding_atol

NB_STEPS = 30
LEARNING_RATE = 0.01


def _train(parameter, optimizer, nb_steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(nb_steps):
        parameter.grad = torch.randn(parameter.shape, generator=generator,
                                     dtype=parameter.dtype)
        optimizer.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_fused_adam_equals_torch_default(name):
    start = torch.randn(7, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    ours = torch.nn.Parameter(start.clone())
    reference = torch.nn.Parameter(start.clone())
    optimizer = create_optimizer([ours], name, LEARNING_RATE, 0.01)
    assert optimizer.param_groups[0]["fused"] is True
    _train(ours, optimizer, NB_STEPS, seed=1)
    _train(reference, getattr(torch.optim, name)(
        [reference], lr=LEARNING_RATE, weight_decay=0.01), NB_STEPS, seed=1)
    # Each step moves a weight by at most lr (Adam's normalised step) in
    # ~10 float64 roundings of values of size <= 1 + NB_STEPS * lr.
    atol = rounding_atol(1 + float(start.abs().max()) + NB_STEPS
                         * LEARNING_RATE, 10 * NB_STEPS, eps=EPS64)
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=0,
                               atol=atol)


def test_state_of_unfused_adam_loads_and_continues_unfused():
    # A checkpoint of a run before Adam was fused: its param group says
    # fused=None, so the resumed run keeps stepping as it did, bitwise.
    start = torch.randn(7, generator=torch.Generator().manual_seed(0))
    old = torch.nn.Parameter(start.clone())
    old_optimizer = torch.optim.Adam([old], lr=LEARNING_RATE)
    _train(old, old_optimizer, 5, seed=1)
    resumed = torch.nn.Parameter(old.detach().clone())
    optimizer = create_optimizer([resumed], "Adam", LEARNING_RATE)
    # A copy, as from a checkpoint file: load_state_dict keeps the tensors.
    optimizer.load_state_dict(copy.deepcopy(old_optimizer.state_dict()))
    assert optimizer.param_groups[0]["fused"] is None
    _train(old, old_optimizer, 5, seed=2)
    _train(resumed, optimizer, 5, seed=2)
    assert torch.equal(resumed, old)


def test_fused_state_resumes_fused_and_bitwise():
    start = torch.randn(7, generator=torch.Generator().manual_seed(0))
    straight = torch.nn.Parameter(start.clone())
    straight_optimizer = create_optimizer([straight], "Adam", LEARNING_RATE)
    _train(straight, straight_optimizer, 5, seed=1)
    saved = copy.deepcopy(straight_optimizer.state_dict())
    resumed = torch.nn.Parameter(straight.detach().clone())
    optimizer = create_optimizer([resumed], "Adam", LEARNING_RATE)
    load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0]["fused"] is True
    _train(straight, straight_optimizer, 5, seed=2)
    _train(resumed, optimizer, 5, seed=2)
    assert torch.equal(resumed, straight)


def test_fused_state_into_unfused_optimizer_steps_unfused(caplog):
    # Where torch has no fused kernel, create_optimizer builds Adam
    # unfused; a checkpoint saved with the kernel elsewhere then resumes
    # without it, with a warning, instead of failing its first step.
    start = torch.randn(7, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    straight = torch.nn.Parameter(start.clone())
    straight_optimizer = create_optimizer([straight], "Adam", LEARNING_RATE)
    _train(straight, straight_optimizer, 5, seed=1)
    resumed = torch.nn.Parameter(straight.detach().clone())
    optimizer = torch.optim.Adam([resumed], lr=LEARNING_RATE)
    load_optimizer_state(optimizer,
                         copy.deepcopy(straight_optimizer.state_dict()))
    assert optimizer.param_groups[0]["fused"] is None
    assert "resuming without it" in caplog.text
    _train(straight, straight_optimizer, 5, seed=2)
    _train(resumed, optimizer, 5, seed=2)
    # The same formula; ~10 float64 roundings a step of values <= 1 + lr.
    atol = rounding_atol(1 + float(start.abs().max()) + 10 * LEARNING_RATE,
                         10 * 5, eps=EPS64)
    torch.testing.assert_close(resumed.detach(), straight.detach(), rtol=0,
                               atol=atol)
