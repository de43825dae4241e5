"""The Sphinx documentation builds without warnings and covers every module.

Skipped when Sphinx or MyST (the "docs" extra) is not installed.
"""
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import dwi_ml

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    # -W: any warning (bad docstring, broken reference, missing module) fails.
    # -E and a fresh output: nothing is reused from an earlier build.
    process = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), DOCS, str(out)],
        capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert (out / "index.html").is_file()
    # The scripts page embeds each script's real --help.
    scripts = (out / "scripts.html").read_text()
    assert "usage: dwiml_train_model.py" in scripts
    assert "--batch_size_training" in scripts


def test_every_module_has_an_api_page():
    documented = set()
    api_dir = os.path.join(DOCS, "api")
    for name in os.listdir(api_dir):
        with open(os.path.join(api_dir, name)) as f:
            documented.update(re.findall(r"^\.\. automodule:: (\S+)$",
                                         f.read(), re.MULTILINE))
    modules = {info.name for info in
               pkgutil.walk_packages(dwi_ml.__path__, "dwi_ml.")}
    missing = sorted(modules - documented)
    assert not missing, f"add these modules to docs/api/*.rst: {missing}"
