"""User-facing errors: one clear line, no traceback."""
import atexit
import functools
import os
import signal
import sys
import threading

# What a shell reports for a command killed by SIGINT (128 + 2), SIGTERM.
EXIT_STATUS_CTRL_C = 130
EXIT_STATUS_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM (``scancel``, a time limit) raised in a script's main thread.

    Like Ctrl-C's KeyboardInterrupt, it unwinds the script, so that an
    output's temporary file is removed. A training run handles SIGTERM
    itself (a checkpoint, then exit status 3).
    """


def raise_terminated(signum, frame):
    """The SIGTERM handler of scripts: raise :class:`Terminated`."""
    raise Terminated()


def _stopped_after_the_end(signum, frame):
    """SIGTERM or SIGINT handler once a command-line script has finished:
    while the interpreter exits, every output is complete; say so, exit 143
    or 130."""
    name, status = (("terminated (SIGTERM)", EXIT_STATUS_SIGTERM)
                    if signum == signal.SIGTERM
                    else ("interrupted (Ctrl-C)", EXIT_STATUS_CTRL_C))
    sys.stdout.flush()
    print(f"{_prog()}: {name} after it finished: its outputs are complete.",
          file=sys.stderr, flush=True)
    os._exit(status)


class DwiMLUserError(Exception):
    """A mistake in the user's input (file, key or argument).

    The message must be a single line naming what was wrong, what was
    expected and what was found. Scripts print it without a traceback and
    exit with status 2.
    """


def one_line_message(error):
    """The message of a user error, on one line.

    A DataLoader worker's error reaches the main process re-raised with the
    worker's traceback as its message; its last line is the original one.
    """
    lines = str(error).strip().splitlines() or [""]
    if len(lines) == 1:
        return lines[0]
    return lines[-1].split(f"{DwiMLUserError.__name__}: ", 1)[-1]


def count_of(count, noun, plural=None):
    """``'1 epoch'``, ``'2 epochs'``: a count and its noun, in messages;
    ``plural`` where it is not ``noun + 's'`` (batches)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _print_error_line(line):
    """Print one error line on stderr. Under torchrun (several ranks), each
    rank's line is written whole, in one call (the ranks' lines were
    interleaved into one), and named by its rank beyond rank 0: an error
    may be one rank's alone."""
    rank = os.environ.get("RANK")
    if rank is None or os.environ.get("WORLD_SIZE", "1") == "1":
        print(line, file=sys.stderr)
        return
    if rank != "0":
        line = f"[rank {rank}] {line}"
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream
        print(line, file=sys.stderr)
        return
    sys.stderr.flush()
    os.write(fileno, (line + "\n").encode())


# What torch's allocators say when they cannot allocate (a RuntimeError,
# not a MemoryError): on the CPU, and torch.OutOfMemoryError on a GPU.
_TORCH_ALLOCATION_FAILURES = ("DefaultCPUAllocator: can't allocate memory",
                              "alloc_cpu.cpp")


def _is_out_of_memory(error):
    return isinstance(error, MemoryError) \
        or type(error).__name__ == "OutOfMemoryError" \
        or any(text in str(error) for text in _TORCH_ALLOCATION_FAILURES)


def script_entry_point(main_fn):
    """Wrap a script's ``main(argv=None)`` so user errors exit cleanly.

    A :class:`DwiMLUserError` is printed as ``PROG: error: MESSAGE`` on
    stderr, followed by exit status 2, the same convention as argparse. A
    reader that stops reading the output (``| head``) ends the script
    quietly. Running out of memory (e.g. sizes far too large for the
    machine) is one line too, with exit status 1, and so is Ctrl-C outside
    a training run (which stops cleanly instead), with exit status 130;
    SIGTERM likewise, with exit status 143, while the script runs, and
    after it finished when run from the command line (``argv`` None, and
    the process runs the script's own file or command),
    saying then that its outputs are complete. Each call records its own
    inputs and outputs (see :mod:`dwi_ml.io_utils.run_paths`).
    """
    # Imported here: run_paths raises this module's DwiMLUserError.
    from dwi_ml.io_utils.run_paths import as_typed_options, script_run

    @functools.wraps(main_fn)
    def wrapper(argv=None):
        previous = None
        handler = signal.getsignal(signal.SIGTERM)
        if (threading.current_thread() is threading.main_thread()
                and (handler == signal.SIG_DFL or getattr(
                    handler, "replaceable_by_scripts", False))):
            previous = signal.signal(signal.SIGTERM, raise_terminated)
        finished = False
        run = None
        try:
            try:
                with script_run() as run:
                    result = main_fn(argv)
            except Exception as error:
                # A signal inside an import or a class body comes wrapped
                # (e.g. "Error calling __set_name__"): unwrap it.
                stop = _stop_in_chain(error)
                if stop is None:
                    raise
                raise stop from None
            finished = True
            return result
        except DwiMLUserError as error:
            error = as_typed_options(error, run)
            _print_error_line(f"{_prog()}: error: {one_line_message(error)}")
            sys.exit(2)
        except (MemoryError, RuntimeError) as error:
            if not _is_out_of_memory(error):
                raise
            print(f"{_prog()}: error: out of memory ({one_line_message(error)}):"
                  " the inputs or options ask for more memory than this "
                  "machine has; use smaller sizes or a larger machine.",
                  file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            # Every output is written under a temporary name and renamed
            # when complete, so the traceback would only hide this line.
            print(f"{_prog()}: interrupted (Ctrl-C){_outputs_state(run)}",
                  file=sys.stderr)
            sys.exit(EXIT_STATUS_CTRL_C)
        except Terminated:
            print(f"{_prog()}: terminated (SIGTERM){_outputs_state(run)}",
                  file=sys.stderr)
            sys.exit(EXIT_STATUS_SIGTERM)
        except BrokenPipeError:
            # Python would report the pipe again when flushing stdout at
            # exit: point stdout at /dev/null first.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        finally:
            if previous is not None:
                # Run from the command line (argv None), the process exits
                # next: a SIGTERM then must not look like a killed run.
                if finished and argv is None and _run_as_its_script(
                        main_fn):
                    _say_when_stopped_after_the_end()
                elif signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
                    # An ignored SIGTERM is a stopped training run's, while
                    # it exits with its status.
                    signal.signal(signal.SIGTERM, previous)
    return wrapper


def _run_as_its_script(main_fn):
    """Whether the process runs ``main_fn``'s own script (its command, its
    scripts_python/ file or ``python -m``), not a program that called it:
    only then does the process end with it."""
    return running_script() == _stem(main_fn.__code__.co_filename)


def running_script():
    """The name (no folder, no extension) of the script this process runs:
    a script's command, its scripts_python/ file and ``python -m`` give the
    same; ``''`` for ``python -c`` or an interactive interpreter."""
    return _stem(sys.argv[0] or "")


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _say_when_stopped_after_the_end():
    """SIGTERM, and SIGINT if Python's own handler (or the training
    scripts' recorder) has it, say that the outputs are complete while the
    interpreter exits. Its last steps give
    each its default action back (a kill, no word; a late Ctrl-C also
    raised inside atexit, exit 0 with a traceback): both are ignored from
    atexit on."""
    signals = [signal.SIGTERM]
    handler = signal.getsignal(signal.SIGINT)
    # Python's Ctrl-C handler, or a training script's recorder of stop
    # signals (a late Ctrl-C then killed the process without a word).
    if handler is signal.default_int_handler or getattr(
            handler, "replaceable_by_scripts", False):
        signals.append(signal.SIGINT)
    for signum in signals:
        signal.signal(signum, _stopped_after_the_end)
        atexit.register(signal.signal, signum, signal.SIG_IGN)


def _outputs_state(run):
    """The end of an interruption's message: whether the outputs of the
    run (a :class:`~dwi_ml.io_utils.run_paths` record) are complete."""
    if run is not None and run.outputs_complete():
        return " as it ended: its outputs are complete."
    return "; an output it had not finished is not written."


def _stop_in_chain(error):
    """The Ctrl-C or SIGTERM that ``error`` wraps (its causes and
    contexts), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (KeyboardInterrupt, Terminated)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _prog():
    return os.path.basename(sys.argv[0]) or "dwi_ml"
