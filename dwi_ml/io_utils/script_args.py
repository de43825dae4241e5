"""Arguments and checks shared by every script."""
import argparse
import contextlib
import logging
import os
import sys
from typing import NamedTuple

from dwi_ml.io_utils.arg_checks import check_device, check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import check_output_free  # noqa: F401 (for scripts)
from dwi_ml.io_utils.run_paths import record_arguments, record_input

VERBOSITY_LEVELS = ("DEBUG", "INFO", "WARNING")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to each option's help, unless the help
    already says its default in words (e.g. "Default: the model's")."""

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad argument in one line, like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help).\n")


def make_parser(description):
    """Return an ArgumentParser whose help keeps the description's layout.

    A bad argument (e.g. '2.5' for an integer option) is one line
    ``PROG: error: MESSAGE`` and exit status 2, without the usage.
    """
    return _OneLineErrorParser(description=description,
                               formatter_class=_HelpFormatter)


def add_overwrite_arg(parser):
    """Add ``-f/--overwrite``."""
    parser.add_argument("-f", "--overwrite", action="store_true",
                        help="Overwrite existing outputs.")


def add_verbose_arg(parser):
    """Add ``-v [LEVEL]``: no flag is WARNING, ``-v`` alone is INFO."""
    parser.add_argument(
        "-v", dest="verbose", nargs="?", const="INFO", default="WARNING",
        choices=VERBOSITY_LEVELS,
        help="Verbosity: -v alone gives INFO; progress bars are hidden "
             "under WARNING.")


def add_output_args(parser):
    """Add ``-f/--overwrite`` and ``-v``, the options of a script that
    writes outputs."""
    add_overwrite_arg(parser)
    add_verbose_arg(parser)


def add_model_run_args(group):
    """Add ``--use_latest_epoch``, ``--batch_size`` and ``--device``, the
    options of a script that runs an experiment's model over an HDF5."""
    group.add_argument("--use_latest_epoch", action="store_true",
                       help="Use the checkpoint's model, not best_model/.")
    group.add_argument("--batch_size", type=int, default=200,
                       help="Streamlines per forward pass. Default: 200.")
    group.add_argument("--device", default="cpu",
                       help="'cpu' or 'cuda[:N]'. Default: cpu.")


def add_experiment_subject_args(parser, experiment_help="The experiment folder."):
    """Add the positional ``EXPERIMENT HDF5 SUBJECT`` of a script that runs
    an experiment's model on one subject."""
    parser.add_argument("experiment_path", metavar="EXPERIMENT",
                        help=experiment_help)
    parser.add_argument("hdf5_file", metavar="HDF5", help="dwi_ml HDF5 file.")
    parser.add_argument("subject_id", metavar="SUBJECT",
                        help="Subject ID, in any split.")


def add_experiment_group_args(group, streamlines_use="to read"):
    """Add ``--input_group`` and ``--streamline_group``, which override the
    groups an experiment was trained on."""
    group.add_argument("--input_group", metavar="GROUP",
                       help="Volume group fed to the model. Default: the "
                            "experiment's.")
    group.add_argument("--streamline_group", metavar="GROUP",
                       help=f"Streamline group {streamlines_use}. Default: "
                            f"the experiment's.")


def check_model_run_args(args):
    """Check the experiment, the HDF5 file and :func:`add_model_run_args`'s
    options before any work."""
    check_inputs_exist(args.experiment_path, what="experiment")
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    check_device(args.device, "--device")
    check_int("--batch_size", args.batch_size, 1)


class SameAs(NamedTuple):
    """A reference dwi_ml option that is one of ours under another name,
    with the same meaning and default: it is accepted as ``option``."""
    option: str


def translate_reference_options(argv, table):
    """Answer, before any parsing, the reference dwi_ml's options that this
    script names differently.

    Parameters
    ----------
    argv : list of str
        The command line, without the program name.
    table : dict
        Reference option -> what it is here: a :class:`SameAs` (the option
        is replaced by ours), a str (no equivalent here: the option is
        refused with this hint, saying what to use instead) or a dict
        {value: hint} (only those values of the option are refused, as an
        invalid choice with the hint).

    Returns
    -------
    list of str
        ``argv`` with each alias replaced by our option (``--opt=value``
        forms included). Tokens after ``--`` are left alone.

    Raises
    ------
    DwiMLUserError
        For the first refused option or value.
    """
    translated = list(argv)
    for index, token in enumerate(argv):
        if token == "--":
            break
        option, equals, value = token.partition("=")
        meaning = table.get(option)
        if meaning is None:
            continue
        if isinstance(meaning, SameAs):
            translated[index] = meaning.option + equals + value
        elif isinstance(meaning, str):
            raise DwiMLUserError(
                f"option {option} of the reference dwi_ml is not supported "
                f"here: {meaning}.")
        else:
            if not equals and index + 1 < len(argv):
                value = argv[index + 1]
            if value in meaning:
                raise DwiMLUserError(
                    f"argument {option}: invalid choice: {value!r} (the "
                    f"reference dwi_ml's spelling): {meaning[value]}.")
    return translated


def parse_script_args(parser, argv=None, reference_options=None):
    """Parse ``argv`` and set the logging level that ``-v`` asked for.

    ``reference_options``, a table of :func:`translate_reference_options`,
    answers the reference dwi_ml's spellings first. ``args.argv`` keeps
    the arguments as typed (a training run records them).
    """
    argv = sys.argv[1:] if argv is None else argv
    typed = [str(arg) for arg in argv]
    if reference_options is not None:
        argv = translate_reference_options(argv, reference_options)
    args = parser.parse_args(argv)
    args.options_given = options_given(parser, argv)
    expand_home(args)
    args.argv = typed
    record_arguments(parser, args)
    set_verbosity(args.verbose)
    return args


_NOT_GIVEN = object()
_ACCUMULATING = (argparse._AppendAction, argparse._AppendConstAction,
                 argparse._CountAction)


def options_given(parser, argv):
    """The ``dest`` of each argument typed in ``argv``, even at its default.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    argv : list of str
        Arguments that ``parser`` parses without error.

    Returns
    -------
    frozenset of str
    """
    # argparse sets a default only where the namespace has no value yet;
    # actions that add to their value (append, count) start from None.
    preset = {action.dest: None if isinstance(action, _ACCUMULATING)
              else _NOT_GIVEN for action in parser._actions
              if action.dest is not argparse.SUPPRESS}
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**preset))
    return frozenset(dest for dest, value in vars(parsed).items()
                     if value is not preset[dest])


def option_given(args, name, default):
    """Whether option ``name`` was given: typed on the command line, even
    at its default, for ``args`` from :func:`parse_script_args`; set to
    another value than ``default`` for ``args`` built in code.

    The refusals of options that nothing would read use it: a typed option
    is one the user expects to act.
    """
    given = getattr(args, "options_given", None)
    if given is not None:
        return name in given
    return getattr(args, name) != default


def _expanded(value):
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if isinstance(value, list):
        return [_expanded(item) for item in value]
    return value


def expand_home(args):
    """Expand a leading ``~`` or ``~user`` in every string argument.

    The shell leaves ``--out_json=~/x`` and a quoted ``'~/x'`` alone; a path
    that starts with ``~`` then means the home folder, never a folder
    named ``~`` in the current one. An unknown ``~user`` stays as it is.
    """
    for name, value in vars(args).items():
        setattr(args, name, _expanded(value))


def set_verbosity(level):
    """Configure the root logger for a script at ``level``."""
    logging.basicConfig(format="%(levelname)s: %(message)s",
                        level=getattr(logging, level), force=True)


@contextlib.contextmanager
def quiet_logger(name):
    """Only critical messages of logger ``name`` get through in the block.

    For libraries (dipy, comet_ml) whose error logs would repeat our own
    one-line error.
    """
    quiet = logging.getLogger(name)
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(level)


def progress_bars_disabled():
    """True when tqdm bars should stay quiet (WARNING level or no tty).

    Returns None (tqdm's "auto": hide when not a terminal) when the logging
    level allows INFO messages.
    """
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        return True
    return None


def check_inputs_exist(*paths, what="input"):
    """Raise a clear error for the first path that does not exist, or that
    is also an output of the script (see :mod:`dwi_ml.io_utils.run_paths`)."""
    for path in paths:
        if path is not None and not os.path.exists(path):
            raise DwiMLUserError(f"{what} '{path}' does not exist.")
        record_input(path, what)


def refuse_wrong_path_kind(path, what, folder=False):
    """Refuse ``path`` when it exists as a folder where a file is expected
    (``folder`` False), or as a file where a folder is; a missing path is
    left to the caller, which says what it needed."""
    if folder and os.path.lexists(path) and not os.path.isdir(path):
        raise DwiMLUserError(f"{what} '{path}' is a file; expected a folder.")
    if not folder and os.path.isdir(path):
        raise DwiMLUserError(f"{what} '{path}' is a folder; expected a file.")
