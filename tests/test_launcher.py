"""A stop signal while a script imports its modules, or as it ends.

Before dwi_ml.launcher, a Ctrl-C during the seconds a script spends
importing torch printed a traceback, and a SIGTERM killed it without a
word (status -15). A signal after the outputs were renamed into place said
that an output it had not finished was not written.
"""
import os
import subprocess
import sys

import pytest

from dwi_ml import launcher
from dwi_ml.io_utils.atomic import atomic_output_file
from dwi_ml.io_utils.errors import Terminated, script_entry_point
from dwi_ml.io_utils.output_folders import check_output_free

HERE = os.path.dirname(os.path.abspath(__file__))

# The signal comes while the script's module imports numpy: after the
# launcher's setup, in the middle of the script's imports.
SIGNAL_DURING_IMPORT = """\
import os, signal, sys
from dwi_ml.launcher import launch


class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{signal_name})
        return None


assert "numpy" not in sys.modules
sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["{module}.py", "--help"]
launch("{module}")
"""


@pytest.mark.parametrize("signal_name, status, what", [
    ("SIGINT", 130, "interrupted (Ctrl-C)"),
    ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_a_signal_while_a_script_imports_is_one_line(signal_name, status,
                                                     what):
    code = SIGNAL_DURING_IMPORT.format(signal_name=signal_name,
                                       module="dwiml_score_tractogram")
    process = subprocess.run([sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == status
    assert process.stderr == (f"dwiml_score_tractogram.py: {what} while "
                              "starting; nothing was written.\n")
    assert process.stdout == ""


def test_every_installed_command_runs_its_module_through_the_launcher():
    scripts = sorted(name[:-3] for name in os.listdir(
        os.path.join(HERE, "..", "scripts_python")) if name.endswith(".py"))
    for name in scripts:
        entry = getattr(launcher, name)
        assert entry.func is launcher.launch and entry.args == (name,)
        with open(os.path.join(HERE, "..", "scripts_python",
                               f"{name}.py")) as f:
            assert f'launch("{name}")' in f.read()
    for name in ("__wrapped__", "_private", "no_such_script"):
        with pytest.raises(AttributeError):
            getattr(launcher, name)


@script_entry_point
def _write_then_stop(argv):
    out, stop = argv
    check_output_free(out, overwrite=False)
    if stop == "before":
        raise Terminated()
    with atomic_output_file(out) as tmp_path:
        with open(tmp_path, "w") as f:
            f.write("whole")
    raise {"terminated": Terminated(), "ctrl_c": KeyboardInterrupt()}[stop]


@pytest.mark.parametrize("stop, status, expected", [
    ("before", 143, "terminated (SIGTERM); an output it had not finished is "
                    "not written."),
    ("terminated", 143, "terminated (SIGTERM) as it ended: its outputs are "
                        "complete."),
    ("ctrl_c", 130, "interrupted (Ctrl-C) as it ended: its outputs are "
                    "complete.")])
def test_a_signal_after_the_outputs_are_written_says_so(tmp_path, capsys,
                                                        stop, status,
                                                        expected):
    out = str(tmp_path / "out.json")
    with pytest.raises(SystemExit) as exit_info:
        _write_then_stop([out, stop])
    assert exit_info.value.code == status
    assert capsys.readouterr().err.split(": ", 1)[1] == expected + "\n"
    # The output whole, or none; no temporary file left beside it.
    if stop == "before":
        assert os.listdir(tmp_path) == []
    else:
        assert os.listdir(tmp_path) == ["out.json"]
        with open(out) as f:
            assert f.read() == "whole"


@pytest.mark.parametrize("name, status, said", [
    ("SIGTERM", 143, "terminated (SIGTERM)"),
    ("SIGINT", 130, "interrupted (Ctrl-C)")])
def test_a_stop_is_ignored_once_a_finished_script_exits(tmp_path, name,
                                                        status, said):
    """After main, SIGTERM or Ctrl-C says the outputs are complete; in the
    interpreter's last steps they had their default action back (SIGTERM a
    kill, status -15, no word; Ctrl-C exit 0 with a KeyboardInterrupt
    traceback, or a kill, -2): ignored from atexit on."""
    script = tmp_path / "my_script.py"
    main = ("from dwi_ml.io_utils.errors import script_entry_point\n"
            "main = script_entry_point(lambda argv: None)\n")
    # atexit runs the last registered first: the signal comes after the
    # script's own atexit step.
    script.write_text(main + "import atexit, os, signal\n"
                      f"atexit.register(os.kill, os.getpid(), signal.{name})\n"
                      "main()\n")
    process = subprocess.run([sys.executable, str(script)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stderr == ""
    # Before that step: the line, and the signal's status.
    script.write_text(main + "main()\nimport os, signal, time\n"
                      f"os.kill(os.getpid(), signal.{name})\n"
                      "time.sleep(60)\n")
    process = subprocess.run([sys.executable, str(script)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == status
    assert process.stderr.endswith(f"{said} after it finished: its outputs "
                                   "are complete.\n")
    # A program that calls a script's main() keeps its own handlers (it
    # ended the caller at its next Ctrl-C).
    (tmp_path / "my_script_lib.py").write_text(main)
    (tmp_path / "caller.py").write_text(
        "import signal\n"
        "from my_script_lib import main\n"
        "main()\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
        " signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    process = subprocess.run([sys.executable, str(tmp_path / "caller.py")],
                             capture_output=True, text=True, timeout=300)
    assert process.stdout == "True True\n", process.stderr


def test_a_late_ctrl_c_to_a_training_script_says_its_outputs_are_complete(
        tmp_path):
    """A training script runs with the stop-signal recorder as its SIGINT
    handler: a Ctrl-C once main had returned said "while the run starts:
    it stops with a checkpoint" (exit 0), or, in the interpreter's last
    steps, killed it without a word (-2)."""
    script = tmp_path / "my_train.py"
    script.write_text(
        "import os, signal, time\n"
        "from dwi_ml.io_utils.errors import script_entry_point\n"
        "from dwi_ml.training.interruptions import (\n"
        "    RunInterruptions, early_stop_signals_recorded,\n"
        "    record_early_stop_signals)\n"
        "record_early_stop_signals()  # as the launcher does\n"
        "def train(argv):\n"
        "    with early_stop_signals_recorded():\n"
        "        run = RunInterruptions()\n"
        "        run.start()\n"
        "        run.stop()\n"
        "main = script_entry_point(train)\n"
        "main()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(60)\n")
    process = subprocess.run([sys.executable, str(script)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 130, process.stderr
    assert process.stderr == ("my_train.py: interrupted (Ctrl-C) after it "
                              "finished: its outputs are complete.\n")


@pytest.mark.parametrize("rank, world_size, prefix", [
    (None, None, ""), ("0", "3", ""), ("2", "3", "[rank 2] "),
    ("1", "1", "")])
def test_a_user_error_under_torchrun_is_one_whole_line_per_rank(
        rank, world_size, prefix):
    # Three ranks refusing the same resume wrote their lines into one
    # line; an error of one rank alone was not told from the others'.
    code = (
        "from dwi_ml.io_utils.errors import DwiMLUserError, "
        "script_entry_point\n"
        "@script_entry_point\n"
        "def main(argv=None):\n"
        "    raise DwiMLUserError('argument x: expected 1, found 2.')\n"
        "main([])\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE")}
    env.update({key: value for key, value in (("RANK", rank),
                                               ("WORLD_SIZE", world_size))
                if value is not None})
    process = subprocess.run([sys.executable, "-c", code], env=env,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr == (f"{prefix}-c: error: argument x: expected 1, "
                              "found 2.\n")


@pytest.mark.parametrize("options, module", [
    (["-m", "dwi_ml.cli.x", "a"], "dwi_ml.cli.x"),
    # Flags joined to -m: the documented form missed them.
    (["-um", "dwi_ml.cli.x"], "dwi_ml.cli.x"),
    (["-u", "-m", "y"], "y"),
    (["-mz"], "z"),
    (["-W", "ignore", "-m", "q"], "q"),
    (["-Wignore", "-m", "q"], "q"),
    (["-X", "dev", "-bm", "r"], "r"),
    (["--check-hash-based-pycs", "always", "-m", "k"], "k"),
    (["-c", "import x", "-m", "no"], None),
    (["script.py", "-m", "x"], None),
])
def test_the_module_of_dash_m_is_found_among_the_interpreters_options(
        options, module):
    from dwi_ml.cli import _dash_m_module
    assert _dash_m_module(options) == module
