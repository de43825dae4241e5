"""Test-wide settings: torch threads from OMP_NUM_THREADS, 1 when unset.

The CI machine has 2 cores; with DataLoader workers and torchrun processes
beside the main one, torch's default of one thread per core oversubscribes
them and makes timings (not results) erratic, hence 1 by default.

The suite must pass in each of these four configurations (run them one
after the other on a shared machine), in one process or in two
(``-n 2 --dist loadfile``, the README's command: pytest-xdist, one file's
tests in one process, so module fixtures are built once):

    OMP_NUM_THREADS=1 python3 -m pytest -q tests
    OMP_NUM_THREADS=2 python3 -m pytest -q tests
    ATEN_CPU_CAPABILITY=avx2 python3 -m pytest -q tests
    ATEN_CPU_CAPABILITY=default python3 -m pytest -q tests

On an AVX-512 machine, cap oneDNN and MKL too, as on a CPU without
AVX-512 (oneDNN then has no bfloat16 LSTM, see ``models/stacked_rnn.py``):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
        MKL_ENABLE_INSTRUCTIONS=AVX2 python3 -m pytest -q tests

Different thread counts and CPU kernels round float32 results differently,
so float comparisons use tolerances derived in ``tests/tolerances.py``, or
float64, or bitwise equality only where the same shapes run the same
kernels.
"""
import multiprocessing
import os
import signal
import tempfile

import pytest
import torch

# Only guards against a child that never ends (a leaked worker waits
# forever; any child ends in seconds): a leak fails its test, not CI's
# time limit (see no_child_process_left).
CHILD_HANG_S = 120

# An empty, zero or non-numeric value (``OMP_NUM_THREADS= pytest``)
# counts as unset, as OpenMP itself ignores it.
_threads = os.environ.get("OMP_NUM_THREADS", "").strip()
if not (_threads.isdigit() and int(_threads) > 0):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A shell without job control starts background commands (``pytest ... &``)
# with Ctrl-C ignored, and children inherit that: the tests that send
# SIGINT to a script would see it finish. Python's own handler instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def child_temporary_files_in_pytest_folder(tmp_path_factory):
    """Child processes write their temporary files under pytest's own
    folder (which pytest prunes), not in the system's: a process the tests
    kill with SIGKILL cannot remove what it made there, such as
    multiprocessing's ``pymp-*`` folders."""
    folder = tmp_path_factory.mktemp("child_tmp")
    previous = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(folder)
    # Forked children (DataLoader workers) inherit this process's cached
    # folder, not the environment.
    tempfile.tempdir = str(folder)
    yield
    if previous[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous[0]
    tempfile.tempdir = previous[1]


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op torch thread for a module: tiny model steps run 10-60x
    slower with two threads when other processes share the two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def no_child_process_left(request):
    """No multiprocessing child (a DataLoader worker, a spawned writer)
    outlives its test: it would run on through later tests and disturb
    what they count and time. The test's end waits for those still
    running, however slow the machine; ``CHILD_HANG_S`` only turns a child
    that never ends (a real hang, not slowness) into a failure that names
    it. A child still running at the test's end that then ends on an error
    (an exception: code > 0, or a signal other than the SIGTERM of a
    DataLoader's shutdown) fails the test too; one that ended earlier is
    the test's own business (multiprocessing forgets it)."""
    yield
    children = multiprocessing.active_children()
    for child in children:
        child.join(timeout=CHILD_HANG_S)
    alive = [child for child in children if child.is_alive()]
    if alive:
        pytest.fail(f"{request.node.nodeid} left child processes running "
                    f"(not ended after {CHILD_HANG_S} s): "
                    + ", ".join(f"{c.name} (pid {c.pid})" for c in alive))
    failed = [child for child in children
              if child.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        pytest.fail(f"{request.node.nodeid} left child processes that "
                    "failed: " + ", ".join(
                        f"{c.name} (pid {c.pid}, exit code {c.exitcode})"
                        for c in failed))
