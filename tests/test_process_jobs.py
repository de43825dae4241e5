"""Jobs in spawned processes: results in order, one-line errors, and a stop
that starts no new job and leaves no worker running."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.process_jobs import run_in_processes


def _square_pid(value):
    return value * value, os.getpid()


def _fail(kind):
    if kind == "user":
        raise DwiMLUserError("x: expected y, found z.")
    os._exit(3)  # as a process the kernel killed


def test_results_in_the_order_of_the_jobs():
    results = run_in_processes(_square_pid, [(v,) for v in range(5)], 2,
                               "a square")
    assert [value for value, _ in results] == [0, 1, 4, 9, 16]
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_an_error_in_a_job_is_raised_as_is():
    with pytest.raises(DwiMLUserError, match=r"^x: expected y, found z\.$"):
        run_in_processes(_fail, [("user",)], 1, "a thing")


def test_a_worker_that_dies_is_one_user_error():
    with pytest.raises(DwiMLUserError) as error:
        run_in_processes(_fail, [("killed",), ("killed",)], 2, "a subject",
                         "--nb_processes")
    assert str(error.value) == (
        "argument --nb_processes: the process making a subject ended "
        "without a result (killed, perhaps for lack of memory, with 2 "
        "processes at once): try fewer.")


SCRIPT = '''\
import os, sys, time
from dwi_ml.io_utils.errors import script_entry_point
from dwi_ml.io_utils.process_jobs import run_in_processes


def job(folder, index):
    with open(os.path.join(folder, f"started_{index}"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@script_entry_point
def main(argv=None):
    folder = sys.argv[1]
    run_in_processes(job, [(folder, i) for i in range(4)], 2, "a job")


if __name__ == "__main__":
    main()
'''


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143),
                                          (signal.SIGINT, 130)])
def test_a_stop_terminates_the_running_jobs_and_starts_no_other(
        tmp_path, stop, status):
    script = tmp_path / "jobs.py"
    script.write_text(textwrap.dedent(SCRIPT))
    # Its own process group: SIGINT goes to all of it, as a Ctrl-C does.
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE,
        text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    started = []
    while len(started) < 2 and process.poll() is None:
        time.sleep(0.1)
        started = sorted(p for p in os.listdir(tmp_path)
                         if p.startswith("started_"))
    assert process.poll() is None, process.stderr.read()
    time.sleep(0.2)  # both workers in their sleep, their files whole
    if stop == signal.SIGINT:
        os.killpg(process.pid, stop)
    else:
        process.send_signal(stop)
    _, stderr = process.communicate()
    assert process.returncode == status
    # One line, from the main process only (the workers ignore Ctrl-C).
    assert len(stderr.splitlines()) == 1, stderr
    assert sorted(p for p in os.listdir(tmp_path)
                  if p.startswith("started_")) == ["started_0", "started_1"]
    pids = [int((tmp_path / name).read_text()) for name in started]
    # Terminated, not waited for: the main process reaped them.
    assert not any(_alive(pid) for pid in pids)
