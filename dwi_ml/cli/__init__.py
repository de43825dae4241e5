"""The scripts, one module each; installed as the commands ``NAME.py``
through :mod:`dwi_ml.launcher`.

``python -m dwi_ml.cli.NAME`` (torchrun's form, docs/distributed.md)
imports this package before the script's slow imports: a training script
records stop signals from here, as the launcher does for the commands.
"""
import sys


def _run_with_dash_m():
    """NAME when this process runs ``python -m dwi_ml.cli.NAME``, else None.

    While ``-m`` looks the module up, ``sys.argv[0]`` is ``'-m'``;
    ``sys.orig_argv`` names the module.
    """
    if sys.argv[:1] != ["-m"]:
        return None
    module = _dash_m_module(sys.orig_argv[1:])
    prefix = f"{__name__}."
    if module is None or not module.startswith(prefix):
        return None
    return module[len(prefix):]


def _dash_m_module(options):
    """The module of ``-m`` in the interpreter's options (``-u -m X``,
    ``-um X``, ``-mX``), or None."""
    index = 0
    while index < len(options):
        arg = options[index]
        if arg == "--check-hash-based-pycs":
            index += 2
            continue
        if not arg.startswith("-") or arg in ("-", "--") or \
                arg.startswith("--"):
            return None
        for position, flag in enumerate(arg[1:], 2):
            rest = arg[position:]
            if flag == "m":
                return rest or (options[index + 1]
                                if index + 1 < len(options) else None)
            if flag == "c":
                return None
            if flag in "WX":  # their value: the rest, or the next option
                index += 0 if rest else 1
                break
        index += 1
    return None


_NAME = _run_with_dash_m()
if _NAME is not None:
    from dwi_ml.launcher import RECORDING_SCRIPTS, prepare_start
    if _NAME in RECORDING_SCRIPTS:
        prepare_start(_NAME)
