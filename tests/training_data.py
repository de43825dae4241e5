"""A tiny synthetic HDF5 shared by the training tests (built once per module)."""
import os

from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset


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
