"""oneDNN's kernel cache holds ``ONEDNN_CACHE_CAPACITY`` kernels once dwi_ml's
RNN module is imported, unless the environment sizes it.

oneDNN says whether each kernel it builds came from its cache
(``ONEDNN_VERBOSE=2``: ``create:cache_hit`` or ``create:cache_miss``). An LSTM
runs on 1100 shapes, one kernel each (the weights' reorders are shared),
then on the first shape again: with 1024 entries it was evicted, with 4096
it is still there. Both variables are read when the process starts its
first kernel, hence the subprocesses."""
import os
import subprocess
import sys

import pytest
import torch
from training_data import make_trainer, make_training_hdf5

from dwi_ml.models import stacked_rnn
from dwi_ml.models.stacked_rnn import (
    ONEDNN_BF16_CACHE_CAPACITY,
    ONEDNN_CACHE_CAPACITY,
)
from dwi_ml.training.experiment_builder import build_dataset

NB_SHAPES = 1100
# More shapes than ONEDNN_CACHE_CAPACITY holds, fewer than the bf16 size.
NB_BF16_SHAPES = 4200

SCRIPT = """
import sys
import torch
if sys.argv[1] in ("import", "bf16"):
    import dwi_ml.models.stacked_rnn as stacked_rnn
if sys.argv[1] == "bf16":
    # As a bf16 training run on the CPU does before its first step.
    stacked_rnn.raise_onednn_cache_capacity(
        stacked_rnn.ONEDNN_BF16_CACHE_CAPACITY)
torch.set_num_threads(1)
lstm = torch.nn.LSTM(2, 3)
with torch.no_grad():
    for steps in range(1, int(sys.argv[2]) + 1):
        lstm(torch.zeros(steps, 1, 2))
    print("AGAIN", flush=True)
    lstm(torch.zeros(1, 1, 2))
"""


def _first_shape_again(tmp_path, mode, nb_shapes=NB_SHAPES, **variables):
    env = {name: value for name, value in os.environ.items()
           if not name.endswith("PRIMITIVE_CACHE_CAPACITY")}
    env.update(ONEDNN_VERBOSE="2", OMP_NUM_THREADS="1", **variables)
    script = tmp_path / "cache.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), mode,
                             str(nb_shapes)],
                            capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    after = result.stdout.split("AGAIN", 1)[1]
    rnn_kernels = [line for line in after.splitlines()
                   if ",create:" in line and ",rnn," in line]
    assert len(rnn_kernels) == 1, after[-2000:]
    return rnn_kernels[0].split(",create:", 1)[1].split(",", 1)[0]


def test_capacity_keeps_more_than_onednns_default():
    assert ONEDNN_CACHE_CAPACITY > NB_SHAPES > 1024
    assert ONEDNN_BF16_CACHE_CAPACITY > NB_BF16_SHAPES > ONEDNN_CACHE_CAPACITY


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                    reason="this torch's LSTM does not run on oneDNN")
@pytest.mark.parametrize("mode, variables, expected", [
    # oneDNN's default (1024): the first shape was evicted.
    ("plain", {}, "cache_miss"),
    ("import", {}, "cache_hit"),
    # A size the user chose (either name) is kept.
    ("import", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}, "cache_miss"),
    ("import", {"DNNL_PRIMITIVE_CACHE_CAPACITY": "1024"}, "cache_miss")])
def test_the_first_shape_is_still_cached_after_many(tmp_path, mode,
                                                    variables, expected):
    assert _first_shape_again(tmp_path, mode, **variables) == expected


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                    reason="this torch's LSTM does not run on oneDNN")
@pytest.mark.parametrize("mode, variables, expected", [
    ("import", {}, "cache_miss"),
    # Raised after the import, before the first kernel: it holds them.
    ("bf16", {}, "cache_hit"),
    # Never above a size the user chose.
    ("bf16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "4096"}, "cache_miss")])
def test_a_bf16_run_raises_the_capacity_before_its_first_kernel(
        tmp_path, mode, variables, expected):
    assert _first_shape_again(tmp_path, mode, NB_BF16_SHAPES,
                              **variables) == expected


@pytest.mark.parametrize("precision, expected", [
    (None, str(ONEDNN_CACHE_CAPACITY)),
    ("bf16", str(ONEDNN_BF16_CACHE_CAPACITY))])
def test_a_bf16_trainer_on_cpu_raises_the_capacity(tmp_path, monkeypatch,
                                                   precision, expected):
    # As this module's import left it (the test process may have set it).
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                       str(ONEDNN_CACHE_CAPACITY))
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setattr(stacked_rnn, "_capacity_set_here",
                        str(ONEDNN_CACHE_CAPACITY))
    dataset = build_dataset({"hdf5_file": make_training_hdf5(
        str(tmp_path), nb_streamlines=10), "lazy": False})
    make_trainer(dataset, tmp_path, mixed_precision=precision, max_epochs=1)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == expected
