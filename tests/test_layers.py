"""The package's stages import only earlier stages (docs/architecture.md)."""
import ast
import pathlib

import dwi_ml

STAGES = ["io_utils", "data", "batching", "models", "training", "tracking",
          "monitoring", "cli"]


def _imported_stages(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dwi_ml" and len(parts) > 1 and parts[1] in STAGES:
                yield parts[1], node.lineno


def test_no_import_runs_back_up_the_data_flow():
    root = pathlib.Path(dwi_ml.__file__).parent
    upward = []
    for stage in STAGES:
        for path in sorted((root / stage).rglob("*.py")):
            for imported, line in _imported_stages(path):
                if STAGES.index(imported) > STAGES.index(stage):
                    upward.append(f"{path.relative_to(root)}:{line} imports "
                                  f"dwi_ml.{imported}")
    assert upward == []
