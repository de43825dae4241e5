"""Run independent jobs in spawned processes, stopping them all on an error
or a signal.

At most ``nb_processes`` jobs are given out at once (none waits in a
queue), so that a stop starts no new job; the running ones are terminated,
not waited for. The workers ignore Ctrl-C (SIGINT is blocked while they are
started, and stays blocked in them): the main process alone answers it, in
one line. A worker that dies without a result (killed, for instance, by the
kernel for lack of memory) ends the run with a one-line user error.
"""
import contextlib
import multiprocessing
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from dwi_ml.io_utils.errors import DwiMLUserError


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT held back in this thread; processes started meanwhile keep it
    blocked for good (a signal mask survives fork and exec)."""
    if (not hasattr(signal, "pthread_sigmask")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        # A Ctrl-C that came meanwhile is delivered here, to this process.
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminate_workers(pool):
    # ProcessPoolExecutor has no public way to stop running jobs.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


def run_in_processes(function, jobs, nb_processes, what,
                     argument="'nb_processes'"):
    """``[function(*job) for job in jobs]``, computed in up to
    ``nb_processes`` spawned processes.

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled by name).
    jobs : list of tuple
        Each job's arguments (picklable).
    nb_processes : int
        At least 1.
    what : str
        What a job makes, for the message of a worker that died (e.g.
        "a subject").
    argument : str
        The argument that set ``nb_processes``, as that message names it.

    Returns
    -------
    list
        The results, in the order of ``jobs``.
    """
    results = [None] * len(jobs)
    # spawn: no fork of a process that may hold torch's threads.
    pool = ProcessPoolExecutor(nb_processes,
                               mp_context=multiprocessing.get_context("spawn"))
    running, next_job = {}, 0
    try:
        while next_job < len(jobs) or running:
            while next_job < len(jobs) and len(running) < nb_processes:
                with _sigint_blocked():
                    future = pool.submit(function, *jobs[next_job])
                running[future] = next_job
                next_job += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    except BrokenProcessPool:
        raise DwiMLUserError(
            f"argument {argument}: the process making {what} ended "
            f"without a result (killed, perhaps for lack of memory, with "
            f"{nb_processes} processes at once): try fewer.") from None
    finally:
        if running:
            _terminate_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
    return results
