"""Stopping a run cleanly: signals, a time limit and mid-epoch checkpoints.

Clusters pre-empt jobs with SIGTERM (or the signal chosen with SLURM's
``--signal``, often SIGUSR1) and kill them a grace period later; a user
stops a run with Ctrl-C (SIGINT). :class:`RunInterruptions` turns these
signals, a ``max_time`` and a checkpoint cadence into requests that the
trainer polls after each optimizer step and each validation batch. The
signal handler only records the signal: the step in progress finishes, the
trainer writes a checkpoint of its exact position inside the epoch, and the
script exits with :data:`EXIT_STATUS_INTERRUPTED`. A second signal during
that save is recorded and ignored, so the save completes; the checkpoint
is written atomically, so even a SIGKILL keeps the previous one valid.

The training scripts record these signals from their start
(:func:`early_stop_signals_recorded`): one that comes while the data load
and the model is built stops the run at its first step, with a checkpoint,
like any other.
"""
import contextlib
import logging
import signal
import threading
import time

from dwi_ml.io_utils.errors import DwiMLUserError

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_STATUS_INTERRUPTED = 3
# A time limit is reported as this code among the signal numbers.
MAX_TIME_CODE = 1000


def parse_duration(text, name="--max_time"):
    """Seconds in ``[DD:]HH:MM:SS`` (e.g. ``'01:30:00'``), as a float.

    Raises
    ------
    DwiMLUserError
        When ``text`` is not of that form or is not positive.
    """
    parts = str(text).split(":")
    valid = len(parts) in (3, 4) and all(part.isdigit() for part in parts)
    seconds = 0
    if valid:
        for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)):
            seconds += int(part) * unit
    if not valid or seconds <= 0:
        raise DwiMLUserError(
            f"argument {name}: expected a positive duration [DD:]HH:MM:SS, "
            f"got {text!r}.")
    return float(seconds)


# A stop signal received before RunInterruptions.start; whether a run's
# loop has ended (its handlers given back to the recorder).
_early = {"signal": None, "run_ended": False}


def _record_early(signum, frame):
    if _early["run_ended"]:
        logger.warning("%s received after the run's last step: its outputs "
                       "are written; nothing left to stop.",
                       signal.Signals(signum).name)
    elif _early["signal"] is None:
        _early["signal"] = signum
        logger.warning("%s received while the run starts: it stops with a "
                       "checkpoint before its first batch.",
                       signal.Signals(signum).name)
    elif signum == signal.SIGINT:
        # A second Ctrl-C while the data load: stop at once.
        raise KeyboardInterrupt


# script_entry_point may replace it as it replaces SIG_DFL (io_utils cannot
# import this module).
_record_early.replaceable_by_scripts = True


def _install_recorder():
    """Record the stop signals; return the handlers replaced (none outside
    the main thread, where Python installs no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _early["run_ended"] = False
    return {signum: signal.signal(signum, _record_early)
            for signum in STOP_SIGNALS}


def record_early_stop_signals():
    """Record the stop signals for the rest of the process, until a run's
    :meth:`RunInterruptions.start` acts on one: for a training script's
    file, before its imports (torch's take seconds)."""
    _install_recorder()


@contextlib.contextmanager
def early_stop_signals_recorded():
    """Record the stop signals while a training script's ``main`` loads the
    data and builds the run (:meth:`RunInterruptions.start` then acts on a
    recorded one); give back the handlers they had at the end."""
    previous = _install_recorder()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # Ignored by ignore_stop_signals: kept so while the run exits.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, handler)
        # run_ended stays: the launcher's recorder, given back here, said a
        # signal after the run's end "stops the run before its first batch".
        _early["signal"] = None


def ignore_stop_signals(signals=STOP_SIGNALS):
    """Ignore ``signals`` for the rest of the process: a run that stopped
    (its checkpoint saved) or finished takes a second or more to exit
    (torch's teardown), and a late stop signal must not turn its exit
    status into a kill's (a SLURM requeue loop reads status 3). Only the
    main thread can; elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)
    # early_stop_signals_recorded and script_entry_point give the handlers
    # back when main ends: they keep an ignored one.


def _take_early_signal():
    signum, _early["signal"] = _early["signal"], None
    return signum


def describe_stop(code):
    """'SIGTERM', 'SIGINT', 'SIGUSR1' or 'max_time' for a stop code."""
    if code == MAX_TIME_CODE:
        return "max_time"
    return signal.Signals(code).name


class RunInterruptions:
    """Requests to stop or to checkpoint, polled between steps.

    Parameters
    ----------
    max_time_s : float or None
        Stop before this many seconds since :meth:`start`, keeping a margin
        of twice the longest step seen, plus the longest checkpoint write,
        plus the longest epoch end (tracking validation, the best model's
        save: no step is polled during it), seen or expected
        (:meth:`expect_epoch_end`), unless the margin would then reach
        ``max_time_s`` (a warning says so). A process's first poll, before
        its first step, never stops for the time.
    checkpoint_every_n_batches : int or None
        Ask for a mid-epoch checkpoint every N training batches.
    checkpoint_every_minutes : float or None
        Ask for a mid-epoch checkpoint when this long has passed since the
        last checkpoint.
    """

    def __init__(self, max_time_s=None, checkpoint_every_n_batches=None,
                 checkpoint_every_minutes=None):
        self.max_time_s = max_time_s
        self.checkpoint_every_n_batches = checkpoint_every_n_batches
        self.checkpoint_every_s = (None if checkpoint_every_minutes is None
                                   else 60.0 * checkpoint_every_minutes)
        self.received_signal = None
        self._previous_handlers = {}
        self._torch_sigchld_flag = None
        self._start_time = None
        self._last_poll = None
        self._last_checkpoint = None
        self._longest_step = 0.0
        self._longest_save = 0.0
        self._longest_epoch_end = 0.0
        self._warned_epoch_end = False
        self._nb_polls = 0
        self._batches_since_checkpoint = 0

    def start(self):
        """Catch the stop signals and start the clocks."""
        now = time.monotonic()
        self._start_time = self._last_poll = self._last_checkpoint = now
        self.received_signal = _take_early_signal()
        # Python only lets the main thread install handlers.
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training outside the main thread: signals stop "
                           "the run without a checkpoint.")
            return
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum,
                                                            self._on_signal)
        self._mute_worker_deaths()

    def stop(self):
        """Give the signals back to their previous handlers."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
        _early["run_ended"] = True
        if self._torch_sigchld_flag is not None:
            _torch_signal_handling()._SIGCHLD_handler_set = \
                self._torch_sigchld_flag
            self._torch_sigchld_flag = None

    def _mute_worker_deaths(self):
        """No SIGCHLD handler while training: SIGTERM to the process group
        also kills the DataLoader workers, and torch's handler, run between
        two bytecodes (even inside this class's SIGTERM handler, before it
        records the stop), raised "worker killed" out of the training step.
        A worker's death is then found by the DataLoader's own liveness
        check, at the next batch (see
        :mod:`dwi_ml.training.trainer_dataloading`)."""
        module = _torch_signal_handling()
        self._torch_sigchld_flag = module._SIGCHLD_handler_set
        module._SIGCHLD_handler_set = True  # torch installs none from now
        self._previous_handlers[signal.SIGCHLD] = signal.signal(
            signal.SIGCHLD, signal.SIG_DFL)

    def _on_signal(self, signum, frame):
        if self.received_signal is None:
            self.received_signal = signum
            logger.warning("%s received: stopping after the current step.",
                           signal.Signals(signum).name)

    def signal_within(self, timeout_s):
        """True when a stop signal was received or comes within timeout_s.

        Python runs the handler in the main thread between bytecodes: a
        process killed with its group can see its workers' deaths first.
        """
        end = time.monotonic() + timeout_s
        while self.received_signal is None and time.monotonic() < end:
            time.sleep(0.01)
        return self.received_signal is not None

    def poll(self, is_training_batch, nb_batches=1):
        """This process's requests after a step: ``(stop_code, checkpoint)``.

        A training step counts ``nb_batches`` batches towards
        ``checkpoint_every_n_batches`` (an accumulation group's batches).

        ``stop_code`` is 0, a signal number or :data:`MAX_TIME_CODE`;
        ``checkpoint`` is 1 when a mid-epoch checkpoint is due. Both are
        ints so that distributed ranks can agree on them with a max.
        """
        now = time.monotonic()
        self._longest_step = max(self._longest_step, now - self._last_poll)
        self._last_poll = now
        if is_training_batch:
            self._batches_since_checkpoint += nb_batches
        stop_code = self.received_signal or 0
        self._nb_polls += 1
        # A process's first poll comes before its first step: it never
        # stops for the time, so that each process makes progress.
        if not stop_code and self.max_time_s is not None \
                and self._nb_polls > 1:
            margin = 2 * self._longest_step + self._longest_save
            # Left room for when the limit can hold it: one it cannot would
            # stop every process before its epoch's end, forever.
            if margin + self._longest_epoch_end < self.max_time_s:
                margin += self._longest_epoch_end
            if 2 * self._longest_epoch_end >= self.max_time_s \
                    and not self._warned_epoch_end:
                self._warned_epoch_end = True
                logger.warning(
                    "--max_time %g s: an epoch's end (tracking validation, "
                    "the best model's save) takes %.0f s, half the limit "
                    "or more: each job spends much of its time leaving room "
                    "for it, or overruns it; raise --max_time or track less "
                    "often.", self.max_time_s, self._longest_epoch_end)
            if now - self._start_time + margin >= self.max_time_s:
                stop_code = MAX_TIME_CODE
        return stop_code, int(is_training_batch and self._checkpoint_due(now))

    def _checkpoint_due(self, now):
        every_n = self.checkpoint_every_n_batches
        if every_n is not None and self._batches_since_checkpoint >= every_n:
            return True
        return (self.checkpoint_every_s is not None
                and now - self._last_checkpoint >= self.checkpoint_every_s)

    def checkpoint_written(self, duration_s):
        """Restart the checkpoint cadence; remember how long a save takes,
        and the work since the last step before it (an epoch's end)."""
        now = time.monotonic()
        self._longest_save = max(self._longest_save, duration_s)
        if self._last_poll is not None:
            self._longest_epoch_end = max(
                self._longest_epoch_end, now - self._last_poll - duration_s)
            # The next step is timed from here, without the save.
            self._last_poll = now
        self._last_checkpoint = now
        self._batches_since_checkpoint = 0

    def expect_epoch_end(self, duration_s):
        """An epoch's end may take ``duration_s`` (the run's logged
        tracking validation, when this process has seen none yet)."""
        self._longest_epoch_end = max(self._longest_epoch_end,
                                      float(duration_s))


def _torch_signal_handling():
    """torch's module that installs its DataLoader SIGCHLD handler once per
    process, unless its ``_SIGCHLD_handler_set`` is already True."""
    from torch.utils.data._utils import signal_handling
    return signal_handling
