"""A training run without tracking validation never loads scipy.spatial
(~28 MB of RSS for each training process): only the scoring of tracking
validation builds its k-d trees."""
import os
import subprocess
import sys

from training_data import TINY_TRAINING, make_training_hdf5

# Runs the training script's main in a fresh interpreter, then prints
# whether scipy.spatial was loaded.
RUN_AND_LIST_MODULES = """
import sys
from dwi_ml.cli.dwiml_train_model import main
main(sys.argv[1:])
print("scipy.spatial" in sys.modules)
"""


def test_training_does_not_import_scipy_spatial(tmp_path):
    hdf5_file = make_training_hdf5(str(tmp_path), nb_streamlines=40)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    process = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, str(experiments), "run",
         hdf5_file, "input", "streamlines", *TINY_TRAINING],
        capture_output=True, text=True, check=True)
    assert os.path.isfile(experiments / "run" / "logs" / "train_loss.npy")
    assert process.stdout.strip().splitlines()[-1] == "False"
