"""Start a script of ``dwi_ml.cli`` so that a stop signal during its imports
ends it in one line.

Importing a script's module takes seconds (torch, dipy). A Ctrl-C then
printed a traceback, and a SIGTERM killed the process without a word: the
script's own handling (:func:`~dwi_ml.io_utils.errors.script_entry_point`)
starts with its ``main``. The training scripts instead record the signal
and act on it at their first step (a checkpoint, exit status 3).

Each installed command ``NAME.py`` runs ``dwi_ml.launcher:NAME`` (setup.py),
and each ``scripts_python/NAME.py`` calls :func:`launch`. This module
imports nothing heavy.
"""
import functools
import importlib
import importlib.util
import signal
import sys

from dwi_ml.io_utils.errors import (
    EXIT_STATUS_CTRL_C,
    EXIT_STATUS_SIGTERM,
    Terminated,
    _prog,
    _stop_in_chain,
)

# Scripts whose runs checkpoint on a stop signal, even one sent while they
# start (dwi_ml.training.interruptions).
RECORDING_SCRIPTS = ("dwiml_train_model", "resume_training_from_checkpoint")


def _terminated_while_starting(signum, frame):
    raise Terminated()


# The script's entry point replaces it with its own.
_terminated_while_starting.replaceable_by_scripts = True


def prepare_start(name):
    """Before importing the script ``dwi_ml.cli.NAME``: a training script
    records a stop signal (its run then checkpoints at its first step),
    another one turns SIGTERM into an exception that :func:`launch` says
    in one line."""
    if name in RECORDING_SCRIPTS:
        from dwi_ml.training.interruptions import record_early_stop_signals
        record_early_stop_signals()
    elif signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated_while_starting)


def launch(name):
    """Import ``dwi_ml.cli.NAME`` and run its ``main()``.

    A Ctrl-C or SIGTERM during the import exits with status 130 or 143 and
    one line saying that nothing was written.

    Parameters
    ----------
    name : str
        The script's module name in ``dwi_ml.cli``.

    Returns
    -------
    What the script's ``main()`` returns.
    """
    prepare_start(name)
    try:
        module = importlib.import_module(f"dwi_ml.cli.{name}")
    except BaseException as error:
        stop = _stop_in_chain(error)
        if stop is None:
            raise
        what, status = (("interrupted (Ctrl-C)", EXIT_STATUS_CTRL_C)
                        if isinstance(stop, KeyboardInterrupt) else
                        ("terminated (SIGTERM)", EXIT_STATUS_SIGTERM))
        print(f"{_prog()}: {what} while starting; nothing was written.",
              file=sys.stderr)
        sys.exit(status)
    return module.main()


def __getattr__(name):
    # dwi_ml.launcher:NAME, the installed commands' entry points: a name of
    # a script module only (found, not imported).
    if name.startswith("_") or importlib.util.find_spec(
            f"dwi_ml.cli.{name}") is None:
        raise AttributeError(f"module 'dwi_ml.launcher' has no attribute "
                             f"'{name}'")
    return functools.partial(launch, name)
