"""What tracking reads (a trained model, a subject's volumes) and writes.

Volumes come from the HDF5 file: the input group and the masks share the
input group's grid, whose affine and shape are the reference of the output
tractogram.
"""
import logging
import os

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import save_tractogram

from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.space import (
    points_vox_corner_to_rasmm,
    streamlines_vox_corner_to_rasmm,
)
from dwi_ml.io_utils.atomic import atomic_output_file_with_extension
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.model_io import load_model_of_experiment

SEEDS_KEY = "seeds"

logger = logging.getLogger(__name__)


def load_experiment_model(experiment_path, use_latest_epoch=False,
                          device="cpu", with_provenance=False):
    """:func:`~dwi_ml.models.model_io.load_model_of_experiment`, for a
    model that tracks (a one-line error otherwise); with
    ``with_provenance``, (model, provenance)."""
    if not os.path.isdir(experiment_path):
        raise DwiMLUserError(
            f"experiment '{experiment_path}': expected an experiment folder, "
            f"found none.")
    loaded = load_model_of_experiment(experiment_path, use_latest_epoch,
                                      device, with_provenance)
    model = loaded[0] if with_provenance else loaded
    for method in ("forward_step", "select_hidden_states",
                   "get_tracking_directions"):
        if not hasattr(model, method):
            raise DwiMLUserError(
                f"model of '{experiment_path}': expected a model that "
                f"tracks (with {method}), found a {type(model).__name__}.")
    return loaded


def load_subject_volumes(hdf5_file, subject_id, groups):
    """Read some volume groups of one subject, whatever its split.

    Parameters
    ----------
    hdf5_file : str
    subject_id : str
    groups : list of str, or str
        Volume groups to read (duplicates allowed), or one.

    Returns
    -------
    dict of str to MRIData
        Every group, all on the grid of the first one.
    """
    names = list(dict.fromkeys([groups] if isinstance(groups, str)
                               else groups))
    if not names:
        raise DwiMLUserError("load_subject_volumes argument groups: expected "
                             "at least one volume group, got none.")
    dataset = MultiSubjectDataset(hdf5_file, lazy=False)
    dataset.load_data(subj_id=subject_id, volume_groups=names,
                      streamline_groups=[])
    subsets = (dataset.training_set, dataset.validation_set,
               dataset.testing_set)
    subset = next(s for s in subsets if s.nb_subjects > 0)
    volumes = dict(zip(names, subset.get_subject(0).mri_data_list))
    reference = volumes[names[0]]
    for name, volume in volumes.items():
        if volume.shape[:3] != reference.shape[:3] or not np.allclose(
                volume.affine, reference.affine):
            raise DwiMLUserError(
                f"HDF5 file {hdf5_file}, subject '{subject_id}': expected "
                f"group '{name}' on the grid of '{names[0]}' (shape "
                f"{reference.shape[:3]}), found shape {volume.shape[:3]} "
                f"or another affine.")
    return volumes


def make_reference_header(affine, shape):
    """A NIfTI header with ``affine`` and ``shape``: the output's reference.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(tuple(int(s) for s in shape[:3]))
    header.set_zooms(tuple(float(z) for z in
                           nib.affines.voxel_sizes(affine)))
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    return header


def save_tractogram_atomic(streamlines_vox_corner, affine, shape, out_path,
                           data_per_streamline=None, data_per_point=None,
                           bbox_valid_check=True):
    """Write streamlines in the subject's space (RAS mm), atomically.

    Parameters
    ----------
    streamlines_vox_corner : nibabel ArraySequence
        Voxel space, corner origin, on the grid (``affine``, ``shape``).
    affine : np.ndarray, shape (4, 4)
        Voxel (centre) to RAS mm: the reference of the output.
    shape : tuple of 3 int
    out_path : str
        .trk, .tck or .trx. A .tck file holds neither
        ``data_per_streamline`` nor ``data_per_point``: they are dropped
        there, with a warning.
    data_per_streamline : dict of str to np.ndarray (N, k), optional
    data_per_point : dict of str to nibabel ArraySequence, optional
        Each with the streamlines' lengths and (n_i, k) rows.
    bbox_valid_check : bool
        Refuse points outside the grid (dipy's check).
    """
    affine = np.asarray(affine, dtype=np.float64)
    streamlines_mm = streamlines_vox_corner_to_rasmm(streamlines_vox_corner,
                                                     affine)
    extension = os.path.splitext(out_path)[1].lower()
    if extension == ".tck" and (data_per_streamline or data_per_point):
        logger.warning("%s: .tck files hold no data per streamline or per "
                       "point; %s not saved.", out_path, ", ".join(
                           [*(data_per_streamline or {}),
                            *(data_per_point or {})]))
    sft = StatefulTractogram(
        streamlines_mm, make_reference_header(affine, shape), Space.RASMM,
        origin=Origin.NIFTI, data_per_streamline=data_per_streamline,
        data_per_point=data_per_point)
    with atomic_output_file_with_extension(out_path) as tmp_path:
        save_tractogram(sft, tmp_path, bbox_valid_check=bbox_valid_check)


def save_tractogram_with_seeds(streamlines_vox_corner, seeds_vox_corner,
                               affine, shape, out_path):
    """Write streamlines and their seeds, atomically.

    Parameters
    ----------
    streamlines_vox_corner : nibabel ArraySequence
        Voxel space, corner origin, on the grid (``affine``, ``shape``).
    seeds_vox_corner : np.ndarray, shape (N, 3)
        One seed per streamline, voxel space, corner origin.
    affine : np.ndarray, shape (4, 4)
    shape : tuple of 3 int
    out_path : str
        .trk, .tck or .trx. Seeds are saved as ``data_per_streamline``
        'seeds' in RAS mm (NIfTI centre origin): the space in which nibabel
        and dipy's ``load_tractogram`` return the streamlines. A .tck file
        cannot hold them: they are dropped there, with a warning.
    """
    seeds_mm = points_vox_corner_to_rasmm(seeds_vox_corner, affine)
    save_tractogram_atomic(
        streamlines_vox_corner, affine, shape, out_path,
        data_per_streamline={SEEDS_KEY: seeds_mm.astype(np.float32)})
