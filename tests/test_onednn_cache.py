"""oneDNN's kernel cache holds ``ONEDNN_CACHE_CAPACITY`` kernels once dwi_ml's
RNN module is imported, unless the environment sizes it.

oneDNN says whether each kernel it builds came from its cache
(``ONEDNN_VERBOSE=2``: ``create:cache_hit`` or ``create:cache_miss``). An LSTM
runs on 100 shapes, one kernel each, and reorders its weights with the same
few kernels at every call; then it runs on the first shape again: with
oneDNN's 1024 entries that kernel is still there, with dwi_ml's 32 it was
evicted (each kept kernel pins memory: bench/README.md, "Peak RSS of a CPU
epoch"), and the reorders stay cached either way. Both variables are
read when the process starts its first kernel, hence the subprocesses."""
import os
import subprocess
import sys

import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.models.stacked_rnn import ONEDNN_CACHE_CAPACITY
from dwi_ml.training.experiment_builder import build_dataset

# More shapes than ONEDNN_CACHE_CAPACITY holds, fewer than oneDNN's default
# (1024).
NB_SHAPES = 100

SCRIPT = """
import sys
import torch
if sys.argv[1] == "import":
    import dwi_ml.models.stacked_rnn  # noqa: F401
torch.set_num_threads(1)
lstm = torch.nn.LSTM(2, 3)
with torch.no_grad():
    for steps in range(1, int(sys.argv[2]) + 1):
        lstm(torch.zeros(steps, 1, 2))
    print("AGAIN", flush=True)
    lstm(torch.zeros(1, 1, 2))
"""


def _kernels(tmp_path, mode, **variables):
    """The kernels oneDNN built over NB_SHAPES shapes, and for the first
    shape again: lists of ('cache_hit' or 'cache_miss', kernel) by kind."""
    env = {name: value for name, value in os.environ.items()
           if not name.endswith("PRIMITIVE_CACHE_CAPACITY")}
    env.update(ONEDNN_VERBOSE="2", OMP_NUM_THREADS="1", **variables)
    script = tmp_path / "cache.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), mode,
                             str(NB_SHAPES)],
                            capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = result.stdout.split("AGAIN", 1)
    return {"reorders": _builds(result.stdout, "reorder"),
            "first_shape_again": _builds(after, "rnn"),
            "shapes": _builds(before, "rnn")}


def _builds(verbose_lines, kind):
    builds = []
    for line in verbose_lines.splitlines():
        if ",create:" in line and f",{kind}," in line:
            status, kernel = line.split(",create:", 1)[1].split(",", 1)
            # The last field is the time it took.
            builds.append((status, kernel.rsplit(",", 1)[0]))
    return builds


def test_capacity_is_below_the_shapes_and_onednns_default():
    assert ONEDNN_CACHE_CAPACITY < NB_SHAPES < 1024


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),
    reason="this torch's LSTM does not run on oneDNN")


@needs_onednn
@pytest.mark.parametrize("mode, variables, expected", [
    # oneDNN's default (1024) keeps every shape's kernel.
    ("plain", {}, "cache_hit"),
    ("import", {}, "cache_miss"),
    # A size the user chose (either name) is kept.
    ("import", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}, "cache_hit"),
    ("import", {"DNNL_PRIMITIVE_CACHE_CAPACITY": "1024"}, "cache_hit")])
def test_the_first_shape_is_kept_only_by_a_larger_cache(tmp_path, mode,
                                                       variables, expected):
    kernels = _kernels(tmp_path, mode, **variables)
    assert [status for status, _ in kernels["shapes"]] == (
        ["cache_miss"] * NB_SHAPES)
    assert [status for status, _ in kernels["first_shape_again"]] == [
        expected]


@needs_onednn
def test_the_weights_reorders_stay_cached_through_the_shapes(tmp_path):
    # Each reorder is built once, then found at every later call.
    reorders = _kernels(tmp_path, "import")["reorders"]
    built = [kernel for status, kernel in reorders if status == "cache_miss"]
    assert len(built) == len(set(built))
    assert len(reorders) == len(built) * (NB_SHAPES + 1)


@pytest.mark.parametrize("precision", [None, "bf16"])
def test_a_trainer_on_cpu_keeps_the_small_cache(tmp_path, monkeypatch,
                                                precision):
    """bf16 too: session 32 raised it to 16384 entries for a bf16 run,
    whose epoch then took longer and peaked 1.8 GiB higher than with 32."""
    # As this module's import left it (the test process may have set it).
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                       str(ONEDNN_CACHE_CAPACITY))
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY", raising=False)
    dataset = build_dataset({"hdf5_file": make_training_hdf5(
        str(tmp_path), nb_streamlines=10), "lazy": False})
    make_trainer(dataset, tmp_path, mixed_precision=precision, max_epochs=1)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(
        ONEDNN_CACHE_CAPACITY)
