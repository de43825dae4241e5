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

from dwi_ml.models.stacked_rnn import ONEDNN_CACHE_CAPACITY

NB_SHAPES = 1100

SCRIPT = f"""
import sys
import torch
if sys.argv[1] == "import":
    import dwi_ml.models.stacked_rnn  # noqa: F401
torch.set_num_threads(1)
lstm = torch.nn.LSTM(2, 3)
with torch.no_grad():
    for steps in range(1, {NB_SHAPES} + 1):
        lstm(torch.zeros(steps, 1, 2))
    print("AGAIN", flush=True)
    lstm(torch.zeros(1, 1, 2))
"""


def _first_shape_again(tmp_path, mode, **variables):
    env = {name: value for name, value in os.environ.items()
           if not name.endswith("PRIMITIVE_CACHE_CAPACITY")}
    env.update(ONEDNN_VERBOSE="2", OMP_NUM_THREADS="1", **variables)
    script = tmp_path / "cache.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), mode],
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
