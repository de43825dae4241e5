"""bfloat16 autocast on a CPU without AVX-512: oneDNN has no bfloat16 LSTM
there, and ``nn.LSTM`` fails ("could not create a primitive descriptor").
The stack then runs its RNN layers in float32, with one warning.

``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN act as on such a CPU (it is read
when the process starts, hence the subprocess)."""
import os
import subprocess
import sys

SCRIPT = """
import logging
import torch
from torch.nn.utils.rnn import pack_sequence
from dwi_ml.models.stacked_rnn import StackedRNN, cpu_bf16_rnn_works

torch.manual_seed(0)
stack = StackedRNN("lstm", 5, [8, 6], True, True, 0.0)
inputs = pack_sequence([torch.randn(7, 5), torch.randn(4, 5)])
plain = stack(inputs)[0].data
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("dwi_ml").addHandler(handler)
for _ in range(2):  # one warning, however many calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = stack(inputs)[0].data
mixed.float().sum().backward()
print(cpu_bf16_rnn_works(torch.nn.LSTM))
# The LSTM layers in float32, the layer norms autocast to float32: the
# float32 values, to the bit.
print(mixed.dtype, torch.equal(mixed, plain))
print(sum("no bfloat16 LSTM" in m for m in messages))
print(all(p.grad is not None and torch.isfinite(p.grad).all()
          for p in stack.parameters()))
"""


def test_lstm_falls_back_to_float32_where_onednn_has_no_bf16():
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:4] == [
        "False", "torch.float32 True", "1", "True"], result.stdout


ASKED_IN = """
import torch
from dwi_ml.models.stacked_rnn import cpu_bf16_rnn_works
with {mode}:
    print(cpu_bf16_rnn_works(torch.nn.LSTM))
"""


def test_the_answer_does_not_depend_on_the_callers_grad_mode():
    """First asked under no_grad (a run resumed in its validation), the
    test's backward failed: False for the whole process, so the resumed run
    trained its LSTM in float32 where the straight run used bfloat16."""
    answers = {
        mode: subprocess.run(
            [sys.executable, "-c", ASKED_IN.format(mode=mode)],
            capture_output=True, text=True, check=True).stdout
        for mode in ("torch.enable_grad()", "torch.no_grad()",
                     "torch.inference_mode()")}
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values())).strip() in ("True", "False")
