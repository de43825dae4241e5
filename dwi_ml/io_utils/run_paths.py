"""The inputs and outputs of one script run: no output may be an input.

``check_inputs_exist`` records each input of a run and the output checks
(``check_output_free``, ``check_output_folder``) each output; whichever
comes second compares them, so that an output path that is also an input
(the same path, a symbolic link to it or a hard link), or another output
of the run, is refused, with or without ``-f``. :func:`script_run`
starts a new record: each script's ``main`` (see
:func:`~dwi_ml.io_utils.errors.script_entry_point`) and each step of a
pipeline whose outputs are the next step's inputs. Outside a script run
nothing is recorded.
"""
import contextlib
import os
import re
from typing import NamedTuple

from dwi_ml.io_utils.errors import DwiMLUserError

_runs = []   # One _RunPaths per script run in progress, innermost last.


class _Path(NamedTuple):
    path: str
    what: str


class _RunPaths:
    def __init__(self):
        self.inputs = []
        self.outputs = []
        self.argument_names = {}   # path as given -> '--flag' or NAME
        self.option_names = {}     # dest -> '--flag'
        self.written = set()       # real paths of the complete outputs

    def outputs_complete(self):
        """Whether the run has outputs and wrote each of them whole."""
        return bool(self.outputs) and all(
            os.path.realpath(output.path) in self.written
            for output in self.outputs)


@contextlib.contextmanager
def script_run():
    """A new record of inputs and outputs, for the block's run; yields it."""
    run = _RunPaths()
    _runs.append(run)
    try:
        yield run
    finally:
        _runs.pop()


def record_written(path):
    """Record that the output ``path`` is complete (renamed into place)."""
    if _runs:
        _runs[-1].written.add(os.path.realpath(path))


def record_arguments(parser, args):
    """Remember which argument each path came from, for the messages.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser.
    args : argparse.Namespace
        What it parsed.
    """
    if not _runs:
        return
    names = _runs[-1].argument_names
    for action in parser._actions:
        if action.option_strings:
            _runs[-1].option_names.setdefault(
                action.dest, max(action.option_strings, key=len))
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if action.option_strings:
            name = max(action.option_strings, key=len)
        else:
            name = action.metavar if isinstance(action.metavar, str) \
                else action.dest
        for item in values:
            if isinstance(item, str):
                names.setdefault(item, name)


def record_input(path, what="input"):
    """Record an input of the run; refuse it when it is one of its outputs."""
    if not _runs or path is None:
        return
    run = _runs[-1]
    given = _Path(path, run.argument_names.get(path, what))
    for output in run.outputs:
        _refuse_if_same(output, given)
    run.inputs.append(given)


def record_output(path, what="output"):
    """Record an output of the run; refuse it when it is one of its inputs."""
    if not _runs:
        return
    run = _runs[-1]
    output = _Path(path, what)
    for given in run.inputs:
        _refuse_if_same(output, given)
    for other in run.outputs:
        # The same output checked twice is the same 'what'.
        if other.what != what and _same_path(other.path, path):
            raise DwiMLUserError(
                f"{what} '{path}' is also the {other.what} '{other.path}': "
                "one would replace the other; give each output its own "
                "path.")
    run.outputs.append(output)


def _same_path(first, second):
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:   # One of them does not exist (yet).
        return False


def _refuse_if_same(output, given):
    if _same_path(output.path, given.path):
        also = "" if output.path == given.path else f" '{given.path}'"
        raise DwiMLUserError(
            f"{output.what} '{output.path}' is also an input ({given.what}"
            f"{also}); give another path.")


def as_typed_options(error, run):
    """``error`` (a DwiMLUserError) with the ``argument 'name'`` of its
    head spelled as the run's option ``--name``: the library's checks name
    a constructor argument, the user typed an option."""
    head, colon, rest = str(error).partition(":")
    if run is None or not head.startswith("argument"):
        return error
    named = re.sub(r"'(\w+)'", lambda match: run.option_names.get(
        match.group(1), match.group(0)), head)
    return error if named == head else DwiMLUserError(named + colon + rest)
