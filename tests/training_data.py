"""A tiny synthetic HDF5 shared by the training tests (built once per module)."""
import os

import torch

from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.training.experiment_builder import (
    build_loader,
    build_sampler,
    build_trainer,
)


def make_training_hdf5(folder, nb_streamlines=120, seed=0,
                       with_validation=True):
    """Synthetic subjects (1 training, 1 validation, 1 testing) -> HDF5.

    Returns the HDF5 path; groups are 'input', 'wm_mask', 'streamlines'.
    Without validation, the validation subject is left out of the file.
    """
    paths = make_synthetic_dataset(os.path.join(folder, "synthetic"),
                                   nb_subjects=3, nb_streamlines=nb_streamlines,
                                   seed=seed)
    hdf5_file = os.path.join(folder, "data.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, paths.splits["training"],
                        paths.splits["validation"] if with_validation else [],
                        paths.splits["testing"])
    return hdf5_file


# Options of the smallest real experiment: 1 epoch of an 8-unit Learn2track.
TINY_TRAINING = ["--max_epochs", "1", "--batch_size_training", "20",
                 "--batch_size_validation", "20", "--rnn_layer_sizes", "8",
                 "--step_size", "1.5", "-v", "WARNING"]


def make_trained_experiment(folder, nb_streamlines=40):
    """A training HDF5 and the experiment 'trained' on it (TINY_TRAINING,
    by the training script), both in ``folder``.

    Returns a dict: 'folder', 'hdf5' (the file) and 'experiment' (its
    folder), as str except 'folder' (as given).
    """
    hdf5_file = make_training_hdf5(str(folder), nb_streamlines=nb_streamlines)
    train_main([str(folder), "trained", hdf5_file, "input", "streamlines",
                *TINY_TRAINING])
    return {"folder": folder, "hdf5": hdf5_file,
            "experiment": os.path.join(str(folder), "trained")}


def make_trainer(dataset, experiments, name="exp", callbacks=(),
                 model_params=None, batch_size=40, dtype=torch.float32,
                 model=None, loader_device="cpu", **trainer_params):
    """A small Learn2track trainer on ``dataset`` (seeded initial weights),
    computing in ``dtype`` (float64 to compare runs whose batches have
    different shapes up to logic rather than float32 rounding).

    ``model`` trains another model instead, as it is; ``loader_device`` is
    where the loader interpolates ('cpu': in the collate step, 'cuda': in
    the trainer's process, on the GPU)."""
    if model is None:
        torch.manual_seed(0)
        model_params = {"step_size": 1.5, "rnn_layer_sizes": [16],
                        **(model_params or {})}
        model = Learn2TrackModel(name, nb_features=dataset.nb_features[0],
                                 **model_params).to(dtype)
    sampler = build_sampler(dataset, {
        "streamline_group": "streamlines", "batch_size_training": batch_size,
        "batch_size_validation": 60, "batch_size_units": "nb_streamlines",
        "seed": 3})
    loader = build_loader(dataset, {"streamline_group": "streamlines",
                                    "input_group": "input", "seed": 3},
                          model, loader_device)
    params = {"max_epochs": 3, "learning_rate": 0.005, **trainer_params}
    return build_trainer(model, str(experiments), name, sampler, loader,
                         params, callbacks)
