"""Every option of every script says what it does and its default."""
import argparse
import importlib
import os
import pkgutil
import re
import runpy

import pytest

import dwi_ml.cli
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import collect_params

SCRIPTS = sorted(module.name for module in pkgutil.iter_modules(
    dwi_ml.cli.__path__))


def build_parser(script):
    module = importlib.import_module(f"dwi_ml.cli.{script}")
    builder = getattr(module, "build_parser", None) or module._build_parser
    return builder()


def rendered_help(parser, action):
    """The option's help as --help prints it (defaults expanded)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def shown_default(default):
    """How argparse's %(default)s writes a default."""
    return str(default)


def test_every_script_module_is_listed():
    # The scripts' wrappers in scripts_python/ are these modules.
    wrappers = sorted(name[:-3] for name in os.listdir(os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "scripts_python"))
        if name.endswith(".py"))
    assert wrappers == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_has_help_and_its_default(script):
    parser = build_parser(script)
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = rendered_help(parser, action)
        if not text.strip() or text.strip().startswith("("):
            problems.append(f"{name}: no help text")
            continue
        default = action.default
        if not action.option_strings or default in (None, False):
            continue
        if shown_default(default) not in text or "default" not in text.lower():
            problems.append(f"{name}: default {default!r} not in {text!r}")
    assert not problems, f"{script}: " + "; ".join(problems)


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_help_gives_its_default_in_brackets(script):
    # "[1]" is not read as a default: --help then also printed
    # "(default: None)" (dwiml_track_from_model.py --npv did).
    parser = build_parser(script)
    bracketed = [f"{action.option_strings}: {action.help!r}"
                 for action in parser._actions
                 if re.search(r"\[-?\d[\d.]*\]", action.help or "")]
    assert not bracketed, f"{script}: say 'Default: X' in " + "; ".join(bracketed)


def test_a_help_that_states_its_default_is_not_given_a_second_one():
    parser = build_parser("dwiml_track_from_model")
    helps = {action.dest: rendered_help(parser, action)
             for action in parser._actions}
    assert helps["eos_stop"].lower().count("default") == 1
    assert helps["theta"].endswith("(default: 45.0)")


@pytest.mark.parametrize("model_type, options, learning_rate", [
    ("learn2track", [], 0.005),
    ("transformer_src_only", [], 0.001),
    ("learn2track", ["--learning_rate", "0.002"], 0.002),
])
def test_training_defaults_in_the_saved_parameters(model_type, options,
                                                   learning_rate):
    # The measured defaults of docs/training.md ("Default options").
    args = train_parser().parse_args(
        ["exps", "exp", "data.hdf5", "input", "streamlines", "--model_type",
         model_type, *options])
    params = collect_params(args)
    assert params["trainer"]["learning_rate"] == learning_rate
    assert params["model"]["nb_previous_dirs"] == 2
    assert params["loader"]["reverse_ratio"] == 0.5
    assert params["loader"]["split_ratio"] == 0.0


@pytest.mark.parametrize("script", SCRIPTS)
# The test process imported the modules already; a real `python -m` did not.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_every_script_runs_as_a_module(script, monkeypatch, capsys):
    """``python -m dwi_ml.cli.NAME`` ran nothing and exited 0."""
    monkeypatch.setattr("sys.argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as raised:
        runpy.run_module(f"dwi_ml.cli.{script}", run_name="__main__")
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script}.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_help_gives_two_defaults(script):
    # resume_training_from_checkpoint.py --max_time said '(default: no
    # limit) (default: as saved)': which one holds on resume?
    parser = build_parser(script)
    doubled = [f"{action.dest}: {rendered_help(parser, action)!r}"
               for action in parser._actions
               if rendered_help(parser, action).count("(default:") > 1]
    assert not doubled, f"{script}: " + "; ".join(doubled)
