"""Scripts that read an HDF5 as an experiment's run read it (its model has
no streamline format of its own) resample its streamlines to the format of
the training file, as dwiml_evaluate_model.py does: on a file stored
otherwise they scored or showed other streamlines than the model's."""
import json
import os

import h5py
import pytest
from dipy.io.streamline import load_tractogram
from training_data import TINY_TRAINING

from dwi_ml.cli.dwiml_compute_loss_copy_previous import main as copy_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_noise_on_streamlines import main as noise_main
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An experiment trained on a file resampled to 1.5 mm at creation (its
    model has no format of its own), and the same subjects stored at
    0.5 mm."""
    folder = str(tmp_path_factory.mktemp("formats"))
    paths = make_synthetic_dataset(os.path.join(folder, "synthetic"),
                                   nb_subjects=3, nb_streamlines=30, seed=0)
    files = {}
    for name, step_size in (("trained", 1.5), ("dense", 0.5)):
        files[name] = os.path.join(folder, f"{name}.hdf5")
        create_hdf5_dataset(
            os.path.join(paths.out_folder, "dwi_ml_ready"), files[name],
            paths.config, paths.splits["training"],
            paths.splits["validation"], paths.splits["testing"],
            step_size=step_size)
    options = [option for option in TINY_TRAINING]
    at = options.index("--step_size")
    del options[at:at + 2]
    train_main([folder, "exp", files["trained"], "input", "streamlines",
                *options])
    return folder, files, os.path.join(folder, "exp")


def test_copy_previous_reads_the_training_files_format(data, tmp_path):
    _, files, experiment = data
    results = {}
    for name, hdf5_file in files.items():
        out = tmp_path / f"{name}.json"
        copy_main([hdf5_file, "--experiment", experiment, "--out", str(out)])
        saved = json.loads(out.read_text())
        results[name] = saved["results"]["all"]
        assert saved["streamline_format"]["step_size"] == (
            None if name == "trained" else 1.5)
    # Resampled from 0.5 mm to 1.5 mm, a streamline has the count of points
    # of its 1.5 mm version, give or take one (its length differs by the
    # 0.5 mm chords); as stored, about 3x as many.
    nb_streamlines = _nb_streamlines(files["trained"], "validation")
    assert abs(results["dense"]["n_points"]
               - results["trained"]["n_points"]) <= nb_streamlines
    out = tmp_path / "as_stored.json"
    copy_main([files["dense"], "--out", str(out)])
    as_stored = json.loads(out.read_text())["results"]["all"]["n_points"]
    assert as_stored > 2.5 * results["trained"]["n_points"]


def _nb_streamlines(hdf5_file, split):
    with h5py.File(hdf5_file, "r") as hdf:
        subjects = hdf.attrs[f"{split}_subjs"]
        return sum(len(hdf[subject]["streamlines"]["lengths"])
                   for subject in subjects)


def test_noise_preview_reads_the_training_files_format(data, tmp_path):
    _, files, experiment = data
    nb_points = {}
    for name, hdf5_file in files.items():
        out = str(tmp_path / f"{name}.trk")
        noise_main([hdf5_file, "subj-01", "streamlines", out, "--experiment",
                    experiment, "--subset", "training"])
        nb_points[name] = len(load_tractogram(out, "same").streamlines
                              .get_data())
    nb_streamlines = _nb_streamlines(files["trained"], "training")
    assert abs(nb_points["dense"] - nb_points["trained"]) <= nb_streamlines
    out = str(tmp_path / "as_stored.trk")
    noise_main([files["dense"], "subj-01", "streamlines", out, "--subset",
                "training"])
    as_stored = len(load_tractogram(out, "same").streamlines.get_data())
    assert as_stored > 2.5 * nb_points["trained"]
