"""Real torch.distributed (gloo, 2 CPU processes under torchrun)."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from training_data import make_training_hdf5

from tests.tolerances import EPS64, adam_weights_atol, rounding_atol

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("ddp_data")))


def _run(launcher, out_dir, mode, args, kill=(-1, -1), expect_ok=True,
         float64=False):
    os.makedirs(out_dir, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "DWIML_TEST_FLOAT64": "1" if float64 else "0"}
    process = subprocess.run(
        [*launcher, os.path.join(HERE, "ddp_train.py"), str(out_dir),
         str(kill[0]), str(kill[1]), mode, *args],
        capture_output=True, text=True, env=env, timeout=600)
    if expect_ok:
        assert process.returncode == 0, process.stderr[-3000:]
    return process


def _train_args(experiments, name, hdf5_file, max_epochs, extra=()):
    # Global batches of 40 streamlines: 20 per rank under torchrun. No
    # reversal: its draws are per rank, so a single process would reverse
    # other streamlines than two ranks do.
    return [str(experiments), name, hdf5_file, "input", "streamlines", *extra,
            "--reverse_ratio", "0",
            "--max_epochs", str(max_epochs), "--batch_size_training", "40",
            "--batch_size_validation", "60", "--step_size", "1.5",
            "--rnn_layer_sizes", "16", "--nb_previous_dirs", "1",
            "--learning_rate", "0.01", "--seed", "5", "-v", "WARNING"]


def _records(out_dir):
    # On the CPU: the ranks of a CUDA run saved from different GPUs.
    return [torch.load(os.path.join(out_dir, f"rank{rank}.pt"),
                       map_location="cpu", weights_only=True)
            for rank in range(2)]


def _assert_equal_weights(weights_a, weights_b, atol=0):
    """Bit for bit (same computations), or within ``atol``."""
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        if atol == 0:
            assert torch.equal(weights_a[key], weights_b[key]), key
        else:
            torch.testing.assert_close(weights_a[key], weights_b[key],
                                       rtol=0, atol=atol)


def _assert_same_updates(single, rank0, nb_updates):
    """One process's weights and losses equal rank 0's, up to rounding.

    Each gradient entry is a mean over < 1e4 points of terms < 10 (the
    grad norm is ~4), summed in another order: within gradient_atol, for
    each update.
    """
    gradient_atol = rounding_atol(10, 1e4, EPS64)
    weights_atol = adam_weights_atol(0.01, nb_updates, gradient_atol)
    _assert_equal_weights(single["weights"], rank0["weights"],
                          atol=weights_atol)
    # The mean loss moves with the weights by at most its gradient's L1
    # norm (< sqrt(nb_weights) * 10) times their drift.
    nb_weights = sum(w.numel() for w in rank0["weights"].values())
    np.testing.assert_allclose(
        single["train_loss"], rank0["train_loss"], rtol=0,
        atol=math.sqrt(nb_weights) * 10 * weights_atol)


def test_ddp_ranks_agree_rank0_writes_and_equals_one_process(tmp_path,
                                                             hdf5_file):
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    # float64: the single process below computes its batches of 40 with
    # other kernels than the ranks' halves of 20.
    _run(TORCHRUN, tmp_path / "ddp", "train",
         _train_args(experiments, "ddp", hdf5_file, 2), float64=True)
    rank0, rank1 = _records(tmp_path / "ddp")
    assert rank0["weights"]["direction_getter.layers.0.bias"].dtype == \
        torch.float64
    assert rank0["world_size"] == rank1["world_size"] == 2
    _assert_equal_weights(rank0["weights"], rank1["weights"])
    assert torch.equal(rank0["train_loss"], rank1["train_loss"])

    # Rank 0 alone wrote: one set of outputs, no leftover temporary folder,
    # and the logs are the (rank-averaged) values every rank computed.
    folder = experiments / "ddp"
    # Rank 0 alone took the lock (the others did not refuse): one .lock.
    assert sorted(os.listdir(folder)) == [".dwi_ml_output.json", ".lock",
                                          "best_model", "checkpoint", "logs",
                                          "parameters.json", "runs.json"]
    (segment,) = json.loads((folder / "runs.json").read_text())["segments"]
    assert (segment["nb_ranks"], segment["end"]) == (2, "completed")
    logged = np.load(folder / "logs" / "train_loss.npy")
    assert np.array_equal(logged, rank0["train_loss"].numpy())
    saved = torch.load(folder / "checkpoint" / "model" / "model_state.pt",
                       weights_only=True)
    _assert_equal_weights(saved, rank0["weights"])

    # One process with the same global batch makes the same updates.
    _run([sys.executable], tmp_path / "single", "train",
         _train_args(experiments, "single", hdf5_file, 2), float64=True)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    assert single["world_size"] == 1
    # 6 updates: 2 epochs of 3 batches.
    _assert_same_updates(single, rank0, 6)


def test_ddp_kill_and_resume_continues(tmp_path, hdf5_file):
    # Lazy data read by a DataLoader worker in each rank: every worker of
    # every rank opens its own HDF5 handle.
    # float64: the resume on one rank below computes its batches with other
    # kernels than the two ranks' halves.
    lazy = ("--lazy", "--nb_workers", "1")
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    _run(TORCHRUN, tmp_path / "straight", "train",
         _train_args(experiments, "straight", hdf5_file, 3, lazy),
         float64=True)
    killed = _run(TORCHRUN, tmp_path / "killed", "train",
                  _train_args(experiments, "killed", hdf5_file, 3, lazy),
                  kill=(1, 1), expect_ok=False, float64=True)
    assert killed.returncode != 0
    state = torch.load(experiments / "killed" / "checkpoint" /
                       "checkpoint_state.pt", weights_only=True)
    assert state["current_epoch"] == 1
    shutil.copytree(experiments / "killed", experiments / "killed_one_rank")

    # Same number of ranks: continues exactly.
    _run(TORCHRUN, tmp_path / "resumed", "resume",
         [str(experiments), "killed", "-v", "WARNING"], float64=True)
    straight, resumed = (_records(tmp_path / "straight")[0],
                         _records(tmp_path / "resumed")[0])
    _assert_equal_weights(straight["weights"], resumed["weights"])
    assert np.array_equal(np.load(experiments / "straight" / "logs" /
                                  "train_loss.npy"),
                          np.load(experiments / "killed" / "logs" /
                                  "train_loss.npy"))

    # Another number of ranks: resumes and finishes the planned epochs.
    _run([sys.executable], tmp_path / "one_rank", "resume",
         [str(experiments), "killed_one_rank", "-v", "WARNING"],
         float64=True)
    one_rank = torch.load(tmp_path / "one_rank" / "rank0.pt", weights_only=True)
    assert one_rank["world_size"] == 1 and len(one_rank["train_loss"]) == 3
    # As in the test above, over at most 9 updates (3 epochs of 3 batches).
    _assert_equal_weights(
        one_rank["weights"], straight["weights"],
        atol=adam_weights_atol(0.01, 9, rounding_atol(10, 1e4, EPS64)))


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA devices")
def test_ddp_on_two_gpus_with_nccl_equals_one_gpu(tmp_path, hdf5_file):
    # Each rank on GPU LOCAL_RANK under NCCL, interpolating there; losses
    # and stop requests all-reduced on the ranks' GPUs. float64, as above.
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    cuda = ("--device", "cuda")
    _run(TORCHRUN, tmp_path / "ddp", "train",
         _train_args(experiments, "ddp", hdf5_file, 2, cuda), float64=True)
    rank0, rank1 = _records(tmp_path / "ddp")
    assert (rank0["device"], rank1["device"]) == ("cuda:0", "cuda:1")
    _assert_equal_weights(rank0["weights"], rank1["weights"])
    assert torch.equal(rank0["train_loss"], rank1["train_loss"])
    _run([sys.executable], tmp_path / "single", "train",
         _train_args(experiments, "single", hdf5_file, 2, cuda), float64=True)
    single = torch.load(tmp_path / "single" / "rank0.pt", map_location="cpu",
                        weights_only=True)
    assert single["device"] == "cuda:0"
    _assert_same_updates(single, rank0, 6)
