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
    ``sys.orig_argv`` (Python >= 3.10) names the module.
    """
    if sys.argv[:1] != ["-m"]:
        return None
    argv = list(getattr(sys, "orig_argv", ()))
    for index, arg in enumerate(argv[1:], 1):
        module = (argv[index + 1] if arg == "-m" and index + 1 < len(argv)
                  else arg[2:] if arg.startswith("-m") else None)
        if module is not None:
            prefix = f"{__name__}."
            return module[len(prefix):] if module.startswith(prefix) \
                else None
    return None


_NAME = _run_with_dash_m()
if _NAME is not None:
    from dwi_ml.launcher import RECORDING_SCRIPTS, prepare_start
    if _NAME in RECORDING_SCRIPTS:
        prepare_start(_NAME)
