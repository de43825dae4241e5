"""HDF5 creation never loads torch (its import alone costs ~3 s and ~200 MB)
nor dipy.io (which imports pytest, ~0.2 s) for NIfTI and .trk files."""
import json
import subprocess
import sys

import h5py
from hdf5_test_data import CONFIG, write_dataset, write_subject_lists

# Runs the creation script's main in a fresh interpreter, then prints
# whether torch and dipy.io were loaded.
RUN_AND_LIST_MODULES = """
import sys
from dwi_ml.cli.dwiml_create_hdf5_dataset import main
main(sys.argv[1:])
print("torch" in sys.modules, "dipy.io" in sys.modules)
"""


def test_creation_imports_neither_torch_nor_dipy_io(tmp_path):
    root = str(tmp_path / "dwi_ml_ready")
    write_dataset(root, ["sub-01", "sub-02"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out.hdf5"
    process = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, root, str(out),
         str(config), *write_subject_lists(tmp_path, ["sub-01"], ["sub-02"]),
         "--step_size", "1"],
        capture_output=True, text=True, check=True)
    with h5py.File(out, "r") as hdf:
        assert hdf["sub-01/streamlines/lengths"].shape[0] > 0
    assert process.stdout.strip().splitlines()[-1] == "False False"
