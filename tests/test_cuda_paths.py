"""The CUDA paths: training, mixed precision, checkpoints, tracking, draws.

bf16 mixed precision also runs on CPU, and is tested there.

CI has no GPU: the tests marked ``needs CUDA`` run the day one is present
(compare each CUDA result with the CPU one, within float64 rounding where
kernels differ). The others show on CPU a GPU bug's logic.
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.batching.dataloaders import make_dataloader
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.resume_training_from_checkpoint import main as resume_main
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.arg_checks import check_device
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import checkpoint_model_dir
from dwi_ml.io_utils.safe_load import load_torch_file
from dwi_ml.models.direction_getters.random_draws import GeneratorDraws
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.transformers import TransformerSrcOnlyModel
from dwi_ml.tracking.propagation import BatchedTracker
from dwi_ml.tracking.seeding import make_seeds
from dwi_ml.tracking.stopping import TrackingMask
from dwi_ml.training.experiment_builder import build_dataset
from dwi_ml.training.random_states import (
    get_global_random_states,
    set_deterministic,
    set_global_random_states,
)
from tests.tolerances import EPS64, adam_weights_atol, rounding_atol

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA")
LEARNING_RATE = 0.005
# Each gradient entry is a mean over < 1e4 points of terms < 10, computed
# by other kernels on each device (as tests/test_distributed.py).
GRADIENT_ATOL = rounding_atol(10, 1e4, EPS64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset({"hdf5_file": make_training_hdf5(
        str(tmp_path_factory.mktemp("cuda_data"))), "lazy": False})


def _logs(experiment_dir, name):
    return np.load(os.path.join(experiment_dir, "logs", f"{name}.npy"))


def _weights_atol(trainer, nb_epochs):
    nb_updates = nb_epochs * trainer.nb_batches(Split.TRAINING)
    return adam_weights_atol(LEARNING_RATE, nb_updates, GRADIENT_ATOL)


def _loss_atol(model, weights_atol):
    # The mean loss moves with the weights by at most its gradient's L1
    # norm (< sqrt(nb_weights) * 10) times their drift.
    nb_weights = sum(p.numel() for p in model.parameters())
    return math.sqrt(nb_weights) * 10 * weights_atol


def _assert_close_weights(model_a, model_b, atol):
    state_b = model_b.state_dict()
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(value.cpu(), state_b[key].cpu(), rtol=0,
                                   atol=atol, msg=key)


def test_an_fp16_overflow_skips_the_update_and_is_no_nan_stop(tmp_path,
                                                              dataset):
    # fp16 gradients scaled by 2**16 overflow now and then (the first
    # steps, often): the scaler skips that update and halves its scale.
    # The NaN check stopped such a run on its first overflow. The trainer
    # enables the scaler on CUDA only; the same scaler on CPU runs the
    # same logic, with the overflow an fp16 backward leaves: an inf.
    trainer = make_trainer(dataset, tmp_path, max_epochs=1)
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    batch = next(iter(make_dataloader(trainer.batch_sampler,
                                      trainer.batch_loader, "training")))
    loss, n_points = trainer.run_one_batch(batch)
    trainer.back_propagation(loss)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    next(trainer.model.parameters()).grad.view(-1)[0] = math.inf
    outputs = {"loss": loss.item(), "n_points": int(n_points),
               **trainer.optimizer_step()}
    trainer.callbacks.on_train_batch_end(trainer, batch, outputs)
    assert "grad_norm" not in outputs
    assert trainer.grad_scaler.get_scale() == 2.0 ** 15
    for before, after in zip(weights, trainer.model.parameters()):
        assert torch.equal(before, after)
    # The next, finite step updates the weights.
    loss, _ = trainer.run_one_batch(batch)
    trainer.back_propagation(loss)
    assert math.isfinite(trainer.optimizer_step()["grad_norm"])
    assert not torch.equal(weights[0], next(trainer.model.parameters()))


@needs_cuda
def test_cuda_training_equals_cpu_training(tmp_path, dataset):
    # float64 (the devices' kernels round differently; the claim is about
    # logic) and the loader's interpolation on the CPU for both, so that
    # both train on the same inputs; pinned memory and non-blocking copies
    # on CUDA.
    runs = {}
    for device in ("cpu", "cuda"):
        trainer = make_trainer(dataset, tmp_path, name=device, max_epochs=2,
                               dtype=torch.float64, device=device,
                               learning_rate=LEARNING_RATE)
        trainer.train_and_validate()
        runs[device] = trainer
    weights_atol = _weights_atol(runs["cpu"], 2)
    _assert_close_weights(runs["cpu"].model, runs["cuda"].model, weights_atol)
    loss_atol = _loss_atol(runs["cpu"].model, weights_atol)
    for name in ("train_loss", "valid_loss"):
        np.testing.assert_allclose(_logs(tmp_path / "cuda", name),
                                   _logs(tmp_path / "cpu", name), rtol=0,
                                   atol=loss_atol)


@needs_cuda
@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_resumes_on_the_other_device(tmp_path, dataset, first,
                                                then):
    # One epoch on `first`, the second resumed from its checkpoint on
    # `then`: the same as two epochs on `first`, within float64 rounding
    # of the other device's kernels.
    whole = make_trainer(dataset, tmp_path, name="whole", max_epochs=2,
                         dtype=torch.float64, device=first)
    whole.train_and_validate()
    make_trainer(dataset, tmp_path, name="split", max_epochs=1,
                 dtype=torch.float64, device=first).train_and_validate()
    resumed = make_trainer(dataset, tmp_path, name="split", max_epochs=2,
                           dtype=torch.float64, device=then)
    # As resume_training_from_checkpoint.py reads the weights (model_io),
    # without rebuilding the model in float32.
    resumed.model.load_state_dict(load_torch_file(
        os.path.join(checkpoint_model_dir(str(tmp_path / "split")),
                     "model_state.pt"), "model weights", map_location=then))
    resumed.load_checkpoint()
    resumed.train_and_validate()
    assert next(resumed.model.parameters()).device.type == then
    assert all(value.device.type == then
               for state in resumed.optimizer.state.values()
               for key, value in state.items() if key != "step")
    weights_atol = _weights_atol(whole, 1)
    _assert_close_weights(whole.model, resumed.model, weights_atol)
    np.testing.assert_allclose(
        _logs(tmp_path / "split", "train_loss"),
        _logs(tmp_path / "whole", "train_loss"), rtol=0,
        atol=_loss_atol(whole.model, weights_atol))


def _mixed_precision_models(nb_features):
    common = {"step_size": 1.5, "nb_previous_dirs": 1}
    return {
        # float32 features, half LSTM outputs (no layer norm).
        "l2t_no_norm": lambda: Learn2TrackModel(
            "mp", nb_features, rnn_layer_sizes=[16], use_layer_norm=False,
            **common),
        # half features, float32 layer norm outputs.
        "l2t_linear_embeddings": lambda: Learn2TrackModel(
            "mp", nb_features, rnn_layer_sizes=[16, 16],
            input_embedding_key="linear", input_embedding_size=8,
            prev_dirs_embedding_key="linear", prev_dirs_embedding_size=4,
            **common),
        "transformer_alibi": lambda: TransformerSrcOnlyModel(
            "mp", nb_features, d_model=16, nheads=2, n_layers_e=1,
            position_encoding="alibi", dg_key="sphere-classification",
            **common),
    }


@pytest.mark.parametrize("device, precision", [
    ("cpu", "bf16"),
    pytest.param("cuda", "bf16", marks=needs_cuda),
    pytest.param("cuda", "fp16", marks=needs_cuda)])
@pytest.mark.parametrize("model_name", ["l2t_no_norm", "l2t_linear_embeddings",
                                        "transformer_alibi"])
def test_mixed_precision_training(tmp_path, dataset, device, precision,
                                  model_name):
    make_model = _mixed_precision_models(dataset.nb_features[0])[model_name]
    torch.manual_seed(0)
    trainer = make_trainer(dataset, tmp_path, model=make_model(),
                           loader_device=device, max_epochs=2, device=device,
                           mixed_precision=precision)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    dtypes = set()
    hooks = [module.register_forward_hook(
        lambda module, inputs, output: dtypes.add(output.dtype))
        for module in trainer.model.modules()
        if isinstance(module, torch.nn.Linear)]
    trainer.train_and_validate()
    for hook in hooks:
        hook.remove()
    assert half in dtypes  # autocast was on
    losses = _logs(tmp_path / "exp", "train_loss")
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    assert np.all(np.isfinite(_logs(tmp_path / "exp", "valid_loss")))
    # The trained model, on a validation batch: mixed precision is a
    # rounding of the float32 loss. Half precision rounds each stored
    # value by up to 2**-8 (bf16) or 2**-11 (fp16) relatively; the loss
    # goes through fewer than 16 such roundings (embeddings, gates,
    # layers, direction getter).
    batch = next(iter(make_dataloader(trainer.batch_sampler,
                                      trainer.batch_loader, "validation")))
    trainer.model.eval()
    with torch.no_grad():
        exact, _ = trainer.run_one_batch(batch)
        with trainer.autocast():
            mixed, _ = trainer.run_one_batch(batch)
    half_eps = 2.0 ** -8 if precision == "bf16" else 2.0 ** -11
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - exact.item()) <= rounding_atol(
        abs(exact.item()), 16, half_eps)


@needs_cuda
@pytest.mark.parametrize("model_name", ["l2t_linear_embeddings",
                                        "transformer_alibi"])
def test_deterministic_cuda_training_repeats_bit_for_bit(tmp_path, dataset,
                                                         model_name):
    # --deterministic on CUDA: every kernel of a training step (cuDNN LSTM,
    # attention, the losses, index_put) has a deterministic version, so
    # that none raises, and two runs give the same weights.
    make_model = _mixed_precision_models(dataset.nb_features[0])[model_name]
    weights = []
    try:
        for run in ("a", "b"):
            torch.manual_seed(0)
            trainer = make_trainer(dataset, tmp_path, name=run,
                                   model=make_model(), loader_device="cuda",
                                   max_epochs=2, device="cuda",
                                   deterministic=True)
            trainer.train_and_validate()
            weights.append(trainer.model.state_dict())
    finally:
        set_deterministic(False)  # a process-wide setting
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def _tracker_inputs():
    rng = np.random.default_rng(0)
    volume = rng.random((12, 12, 12, 4), dtype=np.float32)
    mask = np.zeros((12, 12, 12), dtype=np.float32)
    mask[2:10, 2:10, 2:10] = 1
    return volume, mask, make_seeds(mask, np.random.default_rng(1), nt=50)


@needs_cuda
@pytest.mark.parametrize("algo, dg_key", [("det", "cosine-regression"),
                                          ("prob", "sphere-classification")])
def test_cuda_tracking_equals_cpu_tracking(algo, dg_key):
    # float64 (as test_tracking's batch-size test): kernels of the two
    # devices round differently, and 20 steps of an RNN grow that; the
    # draws of "prob" are keyed and equal on both devices.
    volume, mask, seeds = _tracker_inputs()
    torch.manual_seed(0)
    model = Learn2TrackModel("track", 4, step_size=0.5, nb_previous_dirs=2,
                             rnn_layer_sizes=[16], dg_key=dg_key).double()
    results = {}
    for device in ("cpu", "cuda"):
        tracker = BatchedTracker(
            model, volume, np.eye(4), TrackingMask(mask.shape, mask, device),
            0.5, max_angle_deg=60, max_length_mm=10, algo=algo, rng_seed=3,
            device=device)
        results[device] = tracker.track_in_batches(seeds, 20, True)
    cpu, cuda = results["cpu"], results["cuda"]
    np.testing.assert_array_equal(cpu.streamlines._lengths,
                                  cuda.streamlines._lengths)
    np.testing.assert_array_equal(cpu.forward_stops, cuda.forward_stops)
    np.testing.assert_array_equal(cpu.backward_stops, cuda.backward_stops)
    np.testing.assert_allclose(cpu.streamlines._data, cuda.streamlines._data,
                               rtol=0, atol=rounding_atol(12, 1e4, EPS64))


@needs_cuda
def test_cuda_random_states_of_a_node_with_more_gpus_restore():
    # A checkpoint saved with more GPUs than here: those of this machine
    # take their states, the others are left out.
    torch.cuda.manual_seed_all(5)
    states = get_global_random_states()
    expected = torch.rand(3, device="cuda")
    states["cuda"] = (list(states["cuda"])
                      + [states["cuda"][0]] * 2)
    set_global_random_states(states)
    assert torch.equal(torch.rand(3, device="cuda"), expected)


@needs_cuda
def test_a_cpu_generator_draws_for_cuda_rows():
    like = torch.zeros((5, 3), device="cuda")
    uniforms, normals = GeneratorDraws(
        torch.Generator().manual_seed(2)).draw(like, 1, 3)
    expected = GeneratorDraws(torch.Generator().manual_seed(2)).draw(
        like.cpu(), 1, 3)
    assert uniforms.device == normals.device == like.device
    assert torch.equal(uniforms.cpu(), expected[0])
    assert torch.equal(normals.cpu(), expected[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_gpu_experiment_resumes_on_a_cpu_machine_with_device_cpu(
        tmp_path, dataset, capsys):
    train_main([str(tmp_path), "gpu", dataset.hdf5_file, "input",
                "streamlines", "--max_epochs", "1", "--step_size", "1.5",
                "--rnn_layer_sizes", "8", "--batch_size_training", "60",
                "-v", "WARNING"])
    # As a run with --device cuda records it.
    parameters = tmp_path / "gpu" / "parameters.json"
    saved = json.loads(parameters.read_text())
    saved["trainer"]["device"] = "cuda"
    parameters.write_text(json.dumps(saved))
    resume = [str(tmp_path), "gpu", "--new_max_epochs", "2", "-v", "WARNING"]
    with pytest.raises(SystemExit) as exit_info:
        resume_main(resume)
    assert exit_info.value.code == 2
    # The user gave no --device: the message says where 'cuda' comes from.
    assert ("--device (default: 'cuda', saved in parameters.json)"
            in capsys.readouterr().err)
    resume_main([*resume, "--device", "cpu"])
    assert len(_logs(tmp_path / "gpu", "train_loss")) == 2


@needs_cuda
def test_a_missing_gpu_index_is_a_user_error():
    with pytest.raises(DwiMLUserError, match="GPU index below"):
        check_device(f"cuda:{torch.cuda.device_count()}", "--device")
    assert check_device("cuda", "--device") == torch.device("cuda")
