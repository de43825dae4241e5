"""A tiny trained experiment and its HDF5 files, for the error tests.

Built once per test module: a synthetic dataset, its HDF5 file, the same
subjects made into a second file with other options (``other.hdf5``) and a
file without training subjects, and a one-epoch experiment ``exp``. Tests
that change files copy them first (:func:`copy_experiment`).
"""
import os
import shutil

from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset

TRAIN_OPTIONS = ["--max_epochs", "1", "--step_size", "1.5",
                 "--rnn_layer_sizes", "8", "--batch_size_training", "30",
                 "--batch_size_validation", "40", "-v", "WARNING"]


def make_error_test_data(folder):
    """Write the data and experiment under ``folder``; return their paths."""
    folder = str(folder)
    paths = make_synthetic_dataset(os.path.join(folder, "synthetic"),
                                   nb_subjects=3, nb_streamlines=45, seed=0)
    ready = os.path.join(paths.out_folder, "dwi_ml_ready")
    splits = paths.splits
    files = {name: os.path.join(folder, f"{name}.hdf5")
             for name in ("data", "other", "no_training")}
    create_hdf5_dataset(ready, files["data"], paths.config,
                        splits["training"], splits["validation"],
                        splits["testing"])
    create_hdf5_dataset(ready, files["other"], paths.config,
                        splits["training"], splits["validation"],
                        splits["testing"], step_size=2.0)
    create_hdf5_dataset(ready, files["no_training"], paths.config, [],
                        splits["training"] + splits["validation"],
                        splits["testing"])
    experiments = os.path.join(folder, "experiments")
    os.makedirs(experiments)
    train_main([experiments, "exp", files["data"], "input", "streamlines",
                *TRAIN_OPTIONS])
    return {"folder": folder, "experiments": experiments,
            "experiment": os.path.join(experiments, "exp"),
            "subject": splits["validation"][0], **files}


def copy_experiment(data, destination):
    """A copy of the experiment in ``destination``/exp; return its path."""
    path = os.path.join(str(destination), "exp")
    shutil.copytree(data["experiment"], path)
    return path
