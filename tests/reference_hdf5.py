"""Write small HDF5 files in the REFERENCE dwi_ml layout, for tests.

Written with h5py only, as the reference package scil-vital/dwi_ml does
(names in dwi_ml/data/hdf5/layout.py), quirks included: empty split
lists as empty float64 arrays, groups_config as a Python dict repr, space
attributes with the source's dtypes. Options reproduce the odd files a
reader must accept: gaps and shuffled storage in ``data``, no
``euclidean_lengths``, no ``data_per_streamline``, bytes attributes.

:func:`read_as_reference_reader` reads a file the way the reference's
reader does (same keys, same types and conversions), so that tests can
check that the reference would load our files.

Examples
--------
pytest puts tests/ on sys.path, so import this module by its bare name:

>>> from reference_hdf5 import make_example_subject, write_reference_hdf5
>>> rng = np.random.default_rng(0)
>>> subjects = {"s1": make_example_subject(rng), "s2": make_example_subject(rng)}
>>> write_reference_hdf5(path, subjects, training_subjs=["s1"],
...                      validation_subjs=["s2"])
"""
import datetime
import json
from dataclasses import dataclass, field
from typing import Optional

import h5py
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from nibabel.streamlines import ArraySequence

from dwi_ml.data.packed import ranges_to_indices

NOT_DEFINED = "Not defined by user"


@dataclass
class ReferenceVolume:
    """A volume group: data (X, Y, Z) or (X, Y, Z, F), and its affine."""

    data: np.ndarray
    affine: np.ndarray


@dataclass
class ReferenceStreamlines:
    """A streamline group.

    Attributes
    ----------
    streamlines : list of np.ndarray (n_i, 3)
        Points in VOX space, corner origin.
    affine, dimensions, voxel_sizes, voxel_order
        dipy's space attributes, stored with the dtypes given (the reference
        keeps the source file's dtypes).
    data_per_streamline : dict or None
        None writes no ``data_per_streamline`` sub-group (old files).
    gap_rows : int
        Unused rows of ``data`` written before every streamline and at the
        end, so that offsets are not the cumsum of lengths.
    shuffle_storage : bool
        Store the streamlines in ``data`` in a random order (offsets not
        increasing).
    write_euclidean_lengths : bool
        False leaves out the ``euclidean_lengths`` dataset.
    """

    streamlines: list
    affine: np.ndarray
    dimensions: np.ndarray
    voxel_sizes: np.ndarray
    voxel_order: object = "RAS"
    data_per_streamline: Optional[dict] = field(default_factory=dict)
    gap_rows: int = 0
    shuffle_storage: bool = False
    write_euclidean_lengths: bool = True


def lengths_mm(streamlines, affine):
    """Euclidean length in mm of each streamline (VOX points), loop version."""
    return np.array([np.linalg.norm(np.diff(s @ affine[:3, :3].T, axis=0),
                                    axis=1).sum() for s in streamlines],
                    dtype=np.float32)


def make_example_subject(rng, nb_streamlines=20, dims=(8, 9, 10),
                         nb_features=2, points_range=(3, 12),
                         voxel_size=2.0, **streamline_options):
    """One subject: a volume group 'input' and a streamline group 'streamlines'.

    Streamlines are random walks inside the volume, in VOX corner space.
    ``streamline_options`` go to :class:`ReferenceStreamlines`.
    """
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.])
    affine[:3, 3] = [-10., 5., 3.]
    lengths = rng.integers(points_range[0], points_range[1],
                           size=nb_streamlines)
    steps = rng.normal(scale=0.3, size=(int(lengths.sum()), 3))
    starts = rng.uniform(1, np.array(dims) - 1, size=(nb_streamlines, 3))
    first_rows = np.cumsum(lengths) - lengths
    walks = np.cumsum(steps, axis=0)
    # Restart the walk at every streamline's start point.
    walks += np.repeat(starts - walks[first_rows], lengths, axis=0)
    points = np.clip(walks, 0, np.array(dims) - 1e-3).astype(np.float32)
    streamlines = np.split(points, first_rows[1:])
    dps = {"seed_id": np.arange(nb_streamlines, dtype=np.float32)[:, None]}
    streamline_options.setdefault("data_per_streamline", dps)
    return {
        "input": ReferenceVolume(
            rng.random(tuple(dims) + (nb_features,), dtype=np.float32),
            affine),
        "streamlines": ReferenceStreamlines(
            streamlines, affine.astype(np.float32),
            np.array(dims, dtype=np.int16),
            np.full(3, voxel_size, dtype=np.float32), "RAS",
            **streamline_options),
    }


def write_reference_hdf5(path, subjects, training_subjs=(),
                         validation_subjs=(), testing_subjs=(),
                         step_size=None, nb_points=None, compress=None,
                         config_as_json=False, bytes_attrs=False):
    """Write ``subjects`` to ``path`` in the reference layout.

    Parameters
    ----------
    subjects : dict of str to dict of str to ReferenceVolume or
        ReferenceStreamlines
        subject id -> group name -> group.
    training_subjs, validation_subjs, testing_subjs : sequence of str
        An empty one is stored as the reference does: empty float64 array.
    step_size, nb_points, compress : number or None
        None stores 'Not defined by user'.
    config_as_json : bool
        Store groups_config as JSON instead of the reference's dict repr.
    bytes_attrs : bool
        Store string attrs as fixed-length bytes instead of str.
    """
    def text(value):
        return np.bytes_(value.encode()) if bytes_attrs else value

    first = next(iter(subjects.values()), {})
    config = {name: {"type": "volume" if isinstance(group, ReferenceVolume)
                     else "streamlines", "files": [f"{name}.nii.gz"]}
              for name, group in first.items()}
    with h5py.File(path, "w") as hdf:
        for key, subjs in (("training_subjs", training_subjs),
                           ("validation_subjs", validation_subjs),
                           ("testing_subjs", testing_subjs)):
            hdf.attrs[key] = list(subjs)
        hdf.attrs["chosen_subjs"] = (list(training_subjs)
                                     + list(validation_subjs)
                                     + list(testing_subjs))
        for key, value in (("step_size", step_size), ("nb_points", nb_points),
                           ("compress", compress)):
            hdf.attrs[key] = NOT_DEFINED if value is None else value
        hdf.attrs["groups_config"] = text(
            json.dumps(config) if config_as_json else str(config))
        hdf.attrs["data_and_time"] = text(
            datetime.datetime.now().strftime("%d %B %Y %X"))
        for subject_id, groups in subjects.items():
            subject_group = hdf.create_group(subject_id)
            for name, group in groups.items():
                if isinstance(group, ReferenceVolume):
                    _write_volume(subject_group.create_group(name), group,
                                  text)
                else:
                    _write_streamlines(subject_group.create_group(name),
                                       group, text)


def _write_volume(group, volume, text):
    group.attrs["type"] = text("volume")
    group.attrs["affine"] = volume.affine
    group.attrs["voxres"] = np.sqrt(
        (volume.affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)
    data = volume.data if volume.data.ndim == 4 else volume.data[..., None]
    group.attrs["nb_features"] = data.shape[-1]
    group.create_dataset("data", data=volume.data.astype(np.float32))


def _write_streamlines(group, sft, text):
    group.attrs["type"] = text("streamlines")
    group.attrs["space"] = text("Space.VOX")
    group.attrs["origin"] = text("Origin.TRACKVIS")
    group.attrs["affine"] = sft.affine
    group.attrs["dimensions"] = sft.dimensions
    group.attrs["voxel_sizes"] = sft.voxel_sizes
    group.attrs["voxel_order"] = (text(sft.voxel_order)
                                  if isinstance(sft.voxel_order, str)
                                  else sft.voxel_order)
    lengths = np.array([len(s) for s in sft.streamlines], dtype=np.int64)
    order = np.arange(len(lengths))
    if sft.shuffle_storage:
        order = np.random.default_rng(len(lengths)).permutation(len(lengths))
    stored_lengths = lengths[order] + sft.gap_rows
    stored_ends = np.cumsum(stored_lengths)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    offsets[order] = stored_ends - lengths[order]
    data = np.full((int(stored_ends[-1]) + sft.gap_rows if len(lengths)
                    else sft.gap_rows, 3), -1000., dtype=np.float32)
    if len(lengths):
        data[ranges_to_indices(offsets, lengths)] = np.concatenate(
            sft.streamlines)
    group.create_dataset("data", data=data)
    group.create_dataset("offsets", data=offsets)
    group.create_dataset("lengths", data=lengths)
    if sft.write_euclidean_lengths:
        group.create_dataset("euclidean_lengths",
                             data=lengths_mm(sft.streamlines, sft.affine)
                             .astype(np.float64))
    if sft.data_per_streamline is not None:
        dps_group = group.create_group("data_per_streamline")
        for key, values in sft.data_per_streamline.items():
            dps_group.create_dataset(key, data=values)


# Reference versions that wrote a root 'version' wrote 2 and warned below.
REFERENCE_MIN_VERSION = 2


def read_as_reference_reader(path):
    """Read ``path`` with the accesses of the reference dwi_ml's reader.

    The same keys, indexing and conversions as its MultiSubjectDataset
    (multi_subject_containers.py, checks_for_groups.py,
    mri_data_containers.py, streamline_containers.py): ``str()`` of the
    string attrs, comparisons with ``'Not defined by user'``, the first
    training subject's groups, a StatefulTractogram built from the space
    attributes. An AssertionError or an exception means the reference would
    fail (or warn) on the file.

    Returns
    -------
    dict
        'splits' (sorted lists), 'step_size', 'compress' (None when not
        defined), 'volume_groups', 'nb_features', 'streamline_groups',
        'subjects': {subject: {streamline group: {'sft', 'lengths_mm',
        'connectivity_matrix', 'connectivity_nb_blocs'}}}.
    """
    read = {}
    with h5py.File(path, "r") as hdf:
        if "version" in hdf.attrs:
            assert hdf.attrs["version"] >= REFERENCE_MIN_VERSION, (
                f"version {hdf.attrs['version']} < {REFERENCE_MIN_VERSION}")
        for key in ("step_size", "compress"):
            value = hdf.attrs[key]
            read[key] = None if value == NOT_DEFINED else float(value)
        splits = {split: sorted(hdf.attrs[split + "_subjs"])
                  for split in ("training", "validation", "testing")}
        for subjects in splits.values():
            assert all(isinstance(s, str) for s in subjects), subjects
        read["splits"] = splits
        first = hdf.attrs["training_subjs"][0]
        groups = _reference_groups(hdf, first)
        read["volume_groups"], read["nb_features"], \
            read["streamline_groups"] = groups
        read["subjects"] = {}
        for subject in dict.fromkeys(s for subjects in splits.values()
                                     for s in subjects):
            assert _reference_groups(hdf, subject) == groups, subject
            for name in groups[0]:
                _read_volume_as_reference(hdf[subject][name])
            read["subjects"][subject] = {
                name: _read_streamlines_as_reference(hdf[subject][name])
                for name in groups[2]}
    return read


def _reference_groups(hdf, subject):
    volumes, nb_features, streamlines = [], [], []
    for name in hdf[subject]:
        group_type = hdf[subject][name].attrs["type"]
        if group_type == "volume":
            volumes.append(name)
            nb_features.append(int(hdf[subject][name].attrs["nb_features"]))
        else:
            assert group_type == "streamlines", (name, group_type)
            streamlines.append(name)
    return volumes, nb_features, streamlines


def _read_volume_as_reference(group):
    data = np.array(group["data"], dtype=np.float32)
    assert data.ndim == 4 and data.shape[-1] == group.attrs["nb_features"]
    assert np.array(group.attrs["voxres"], dtype=np.float32).shape == (3,)
    assert np.array(group.attrs["affine"], dtype=np.float32).shape == (4, 4)


def _read_streamlines_as_reference(group):
    space_attributes = (np.array(group.attrs["affine"]),
                        np.array(group.attrs["dimensions"]),
                        np.array(group.attrs["voxel_sizes"]),
                        str(group.attrs["voxel_order"]))
    space = str(group.attrs["space"]).lower()
    space = Space(space[6:] if space.startswith("space.") else space)
    origin = str(group.attrs["origin"]).lower()
    origin = origin[7:] if origin.startswith("origin.") else origin
    origin = {"trackvis": Origin.TRACKVIS, "nifti": Origin.NIFTI}.get(
        origin) or Origin(origin)
    streamlines = ArraySequence()
    streamlines._data = np.array(group["data"])
    streamlines._offsets = np.array(group["offsets"])
    streamlines._lengths = np.array(group["lengths"])
    assert np.array_equal(np.array(group["lengths"], dtype=np.int16),
                          streamlines._lengths)
    dps = {key: values[:]
           for key, values in group["data_per_streamline"].items()}
    for key, values in dps.items():
        assert len(values) == len(streamlines), key
    # The lazy reader reads one streamline by slicing.
    for i in (0, len(streamlines) - 1):
        offset, length = group["offsets"][i], group["lengths"][i]
        assert np.array_equal(group["data"][offset:offset + length],
                              streamlines[i])
    sft = StatefulTractogram(streamlines, space_attributes, space,
                             origin=origin, data_per_streamline=dps)
    lengths_mm = np.array(group["euclidean_lengths"])
    assert len(lengths_mm) == len(streamlines)
    read = {"sft": sft, "lengths_mm": lengths_mm,
            "connectivity_matrix": None, "connectivity_nb_blocs": None}
    if "connectivity_matrix" in group:
        read["connectivity_matrix"] = np.asarray(group["connectivity_matrix"],
                                                 dtype=int)
        if "connectivity_nb_blocs" in group.attrs:
            read["connectivity_nb_blocs"] = [
                int(n) for n in group.attrs["connectivity_nb_blocs"]]
        else:
            labels = np.asarray(group["connectivity_label_volume"], dtype=int)
            assert labels.shape == tuple(space_attributes[1])
    return read
