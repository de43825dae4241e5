"""Sphinx configuration of the dwi_ml documentation.

Build (from the repository root)::

    python -m sphinx -W -b html docs docs/_build/html

Autodoc imports the installed package (``pip install -e .``); nothing is
mocked. The ``program-help`` directive below prints a script's real
``--help`` text, so the command-line reference can never drift from the
code.
"""
import contextlib
import importlib
import io
import os
import sys

from docutils import nodes
from docutils.parsers.rst import Directive

import dwi_ml

project = "dwi_ml"
author = "dwi_ml developers"
copyright = "dwi_ml developers"
release = dwi_ml.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Numpy-style docstrings. Attributes sections become fields of the class,
# not separate entries, so they never clash with documented properties.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
# Signatures keep default values as written (e.g. DEFAULT_CACHE_SIZE_BYTES).
autodoc_preserve_defaults = True

# MyST: ``{directive}`` fences, "term / : definition" lists, and anchors
# for "page.md#section" links.
myst_enable_extensions = ["deflist"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"dwi_ml {release}"

# argparse wraps --help at the terminal width: fix it for the docs.
HELP_COLUMNS = "80"


def script_help(name):
    """The ``--help`` text of ``scripts_python/NAME.py`` (run in-process).

    Every script is a thin wrapper of ``dwi_ml.cli.NAME.main``.
    """
    main = importlib.import_module(f"dwi_ml.cli.{name}").main
    out = io.StringIO()
    saved_argv0, saved_columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0] = f"{name}.py"
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(out), \
                contextlib.suppress(SystemExit):
            main(["--help"])
    finally:
        sys.argv[0] = saved_argv0
        if saved_columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved_columns
    return out.getvalue()


class ProgramHelp(Directive):
    """``.. program-help:: NAME``: the script's --help, as a literal block."""

    required_arguments = 1
    has_content = False

    def run(self):
        text = script_help(self.arguments[0])
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def show_script_docstrings_verbatim(app, what, name, obj, options, lines):
    """Show the module docstring of ``dwi_ml.cli.NAME`` as it is.

    It is the script's ``--help`` description, written for a terminal
    (``logs/*.npy``, line breaks kept), not reStructuredText.
    """
    if what == "module" and name.startswith("dwi_ml.cli.") and lines:
        lines[:] = [".. code-block:: text", ""] + ["    " + line
                                                  for line in lines]


def setup(app):
    app.add_directive("program-help", ProgramHelp)
    app.connect("autodoc-process-docstring", show_script_docstrings_verbatim)
