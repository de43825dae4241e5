"""The process setup of a training: torchrun's variables, workers, threads."""
import logging

import pytest
import torch

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.training.cpu_threads import available_cores, cap_workers, set_cpu_threads
from dwi_ml.training.distributed import init_distributed

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                      "MASTER_PORT")


@pytest.fixture
def clean_environment(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variables, message", [
    # A WORLD_SIZE left in a job's environment: KeyError 'RANK' before.
    ({"WORLD_SIZE": "2"}, "environment variable RANK: expected an integer "
     "from 0 to 1 (torchrun sets it) with WORLD_SIZE=2, found none; launch "
     "with torchrun, or unset WORLD_SIZE."),
    # 0 was taken for a distributed run (then torch's ValueError).
    ({"WORLD_SIZE": "0", "RANK": "0"}, "environment variable WORLD_SIZE: "
     "expected an integer >= 1 (torchrun sets it), found '0'."),
    ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE: expected an "
     "integer >= 1 (torchrun sets it), found 'two'."),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "environment variable RANK: expected "
     "an integer from 0 to 1 (torchrun sets it), found '2'."),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "environment "
     "variable LOCAL_RANK: expected an integer >= 0 (torchrun sets it), "
     "found '-1'."),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost"},
     "environment variable MASTER_PORT: expected the address of rank 0 "
     "(torchrun sets it) with WORLD_SIZE=2, found none; launch with "
     "torchrun, or unset WORLD_SIZE."),
])
def test_bad_torchrun_variables_are_one_line(clean_environment, variables,
                                             message):
    for name, value in variables.items():
        clean_environment.setenv(name, value)
    with pytest.raises(DwiMLUserError) as error:
        init_distributed("cpu")
    assert str(error.value) == message


def test_without_torchrun_one_process(clean_environment):
    context, device = init_distributed("cpu")
    assert (context.rank, context.world_size, device) == (0, 1, "cpu")
    clean_environment.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu")[0].world_size == 1


def test_more_workers_than_cores_are_cut_down(caplog):
    # --nb_workers 100000 forked workers of ~280 MB until memory ran out.
    cores = available_cores()
    with caplog.at_level(logging.WARNING):
        assert cap_workers(cores + 7) == cores
    assert caplog.messages == [
        f"--nb_workers {cores + 7}: more than the {cores} core(s) this "
        f"process may run on; using {cores} worker(s) (the batches are the "
        "same)."]
    caplog.clear()
    assert cap_workers(cores) == cores and cap_workers(0) == 0
    assert caplog.messages == []


@pytest.fixture
def threads_restored(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(previous)


def test_a_resume_keeps_the_thread_count_of_its_run(threads_restored, caplog):
    cores = available_cores()
    with caplog.at_level(logging.WARNING):
        # The run's count, not the cores left by the workers.
        assert set_cpu_threads(None, nb_workers=0, resumed_from=1) == 1
        assert torch.get_num_threads() == 1 and caplog.messages == []
        # More than the cores left: kept, with a warning.
        assert set_cpu_threads(None, nb_workers=cores,
                               resumed_from=2) == 2
        assert caplog.messages == [
            f"Keeping the run's 2 CPU thread(s) for torch (its float "
            f"rounding): with {cores} worker(s) they are more than the 0 "
            "core(s) left, which can slow training a lot; --nb_cpu_threads "
            "1 is faster, but its numbers differ from an uninterrupted "
            "run's."]
        caplog.clear()
        # Given otherwise: used, with a warning.
        assert set_cpu_threads(1, nb_workers=0, resumed_from=2) == 1
        assert caplog.messages == [
            "--nb_cpu_threads 1: the run trained with 2 CPU thread(s) for "
            "torch; float rounding differs, so the resumed run's numbers "
            "differ from an uninterrupted run's."]
    # Not a resume: the cores left.
    assert set_cpu_threads(None, nb_workers=0) == max(1, cores)


def test_a_resume_keeps_its_count_over_omp_num_threads(threads_restored,
                                                       monkeypatch, caplog):
    """torchrun sets OMP_NUM_THREADS to 1: a run given --nb_cpu_threads 2
    there resumed with 1 thread, and other numbers."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with caplog.at_level(logging.WARNING):
        assert set_cpu_threads(None, nb_workers=0, resumed_from=2) == 2
        assert torch.get_num_threads() == 2
        assert not any("float rounding differs" in message
                       for message in caplog.messages)
        # Not a resume: the variable.
        assert set_cpu_threads(None, nb_workers=0) == 1
