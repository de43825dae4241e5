"""Synthetic HDF5 with bundle labels and connectivity, for tracking validation.

The generator writes one .trk per bundle without labels; here each bundle
file gets ``data_per_streamline['bundle']`` (1, 2, ...), each subject a
connectivity matrix of its streamlines between 2 x 2 x 2 blocs, and the
HDF5 config keeps both. Also used by ``bench/bench_tracking_validation.py``.
"""
import json
import os

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from nibabel.streamlines import ArraySequence

from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.tracking.connectivity import connectivity_from_blocs

BUNDLE_KEY = "bundle"
NB_BLOCS = 2
CONNECTIVITY_FILE = "connectivity.npy"


def label_bundles(subject_paths):
    """Add the bundle labels to a subject's .trk files; return the subject's
    streamlines (voxel space, corner origin) and labels, all bundles."""
    streamlines, labels = [], []
    for label, path in enumerate(subject_paths.bundles, start=1):
        sft = load_tractogram(path, subject_paths.dwi, bbox_valid_check=False)
        labelled = StatefulTractogram.from_sft(
            sft.streamlines, sft, data_per_streamline={
                BUNDLE_KEY: np.full((len(sft), 1), label, np.float32)})
        save_tractogram(labelled, path, bbox_valid_check=False)
        sft.to_vox()
        sft.to_corner()
        streamlines.extend(sft.streamlines)
        labels.extend([label] * len(sft))
    return ArraySequence(streamlines), np.asarray(labels)


def make_labelled_hdf5(folder, nb_streamlines=120, seed=0, step_size=None,
                       **synthetic):
    """Synthetic subjects (1 training, 1 validation, 1 testing by default)
    -> HDF5 whose 'streamlines' group has bundle labels and a blocs
    connectivity, streamlines resampled to ``step_size`` mm if given.

    Returns ``(hdf5 path, SyntheticDatasetPaths)``.
    """
    paths = make_synthetic_dataset(os.path.join(folder, "synthetic"),
                                   nb_streamlines=nb_streamlines, seed=seed,
                                   **synthetic)
    for subject_paths in paths.subjects.values():
        streamlines, _ = label_bundles(subject_paths)
        shape = nib.load(subject_paths.dwi).shape[:3]
        np.save(os.path.join(subject_paths.folder, CONNECTIVITY_FILE),
                connectivity_from_blocs(streamlines, shape, NB_BLOCS))
    with open(paths.config) as f:
        config = json.load(f)
    config["streamlines"].update(
        dps_keys=[BUNDLE_KEY], connectivity_matrix=CONNECTIVITY_FILE,
        connectivity_nb_blocs=NB_BLOCS)
    hdf5_file = os.path.join(folder, "labelled.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, config, paths.splits["training"],
                        paths.splits["validation"], paths.splits["testing"],
                        step_size=step_size)
    return hdf5_file, paths

