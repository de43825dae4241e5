"""Describe the content of a dwi_ml HDF5 file, for humans."""
import h5py
import numpy as np

from dwi_ml.data.hdf5.file_check import check_dwiml_hdf5, hdf5_read_errors
from dwi_ml.data.hdf5.layout import (
    SPLIT_ATTRS,
    SPLITS,
    STREAMLINES_TYPE,
    VOLUME_TYPE,
    decode_str,
    read_subject_list,
)

INDENT = "  "


def describe_hdf5(path):
    """Return the lines describing a dwi_ml HDF5 file.

    Lists the root attrs, the three splits, then each subject's groups with
    their type, datasets (shape, dtype), nb_features or nb_streamlines and
    nb_points, and attrs. Only ``lengths`` is read; no data is loaded.

    Raises
    ------
    DwiMLUserError
        When ``path`` is not a readable dwi_ml HDF5 file (see
        :func:`~dwi_ml.data.hdf5.file_check.check_dwiml_hdf5`).
    """
    check_dwiml_hdf5(path)
    with h5py.File(path, "r") as hdf_file:
        lines = [f"HDF5 file: {path}", "Root attributes:"]
        lines += [f"{INDENT}{key}: {_format_value(value)}"
                  for key, value in hdf_file.attrs.items()
                  if key not in SPLIT_ATTRS.values()]
        lines.append("Splits:")
        for split in SPLITS:
            subjects = read_subject_list(hdf_file.attrs, split)
            lines.append(f"{INDENT}{split} ({len(subjects)}): "
                         f"{', '.join(subjects) if subjects else '-'}")
        listed = {s for split in SPLITS
                  for s in read_subject_list(hdf_file.attrs, split)}
        # Root groups that no split lists (e.g. a fork's 'bundle_dict').
        others = [k for k in hdf_file if k not in listed]
        subjects = [k for k in hdf_file if k in listed]
        if others:
            lines.append(f"Other root items (not subjects): "
                         f"{', '.join(others)}")
        lines.append(f"Subjects ({len(subjects)}):")
        for subject in subjects:
            lines.append(f"{INDENT}{subject}")
            for name, group in hdf_file[subject].items():
                with hdf5_read_errors(path, f"{subject}/{name}"):
                    lines += _describe_group(name, group, depth=2)
    return lines


def _describe_group(name, group, depth):
    pad = INDENT * depth
    if not isinstance(group, h5py.Group):
        return [f"{pad}{name}: dataset {_dataset_text(group)}"]
    group_type = decode_str(group.attrs.get("type", "unknown"))
    summary = f"{pad}{name}: type {group_type}"
    if group_type == VOLUME_TYPE and isinstance(group.get("data"),
                                                h5py.Dataset):
        shape = group["data"].shape
        # A 3-D volume (X, Y, Z) has one feature per voxel.
        summary += f", nb_features {int(shape[3]) if len(shape) == 4 else 1}"
    elif group_type == VOLUME_TYPE and "data" in group:
        summary += ", 'data' is a group (expected a dataset)"
    elif group_type == STREAMLINES_TYPE and "lengths" in group:
        lengths = group["lengths"][:]
        summary += (f", nb_streamlines {len(lengths)}, "
                    f"nb_points {int(lengths.sum())}")
    lines = [summary]
    lines += [f"{pad}{INDENT}attr {key}: {_format_value(value)}"
              for key, value in group.attrs.items() if key != "type"]

    def add_dataset(dataset_name, item):
        if isinstance(item, h5py.Dataset):
            lines.append(f"{pad}{INDENT}{dataset_name}: "
                         f"{_dataset_text(item)}")
        elif len(item) == 0:
            lines.append(f"{pad}{INDENT}{dataset_name}/: empty")

    group.visititems(add_dataset)
    return lines


def _dataset_text(dataset):
    return f"shape {dataset.shape}, dtype {dataset.dtype}"


def _format_value(value):
    """One line for an attr: lists for arrays, text for strings."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SUO":
            return str([decode_str(v) for v in value.ravel()])
        if value.dtype.kind == "f":
            value = np.round(value, 4)
        return str(value.tolist())
    if isinstance(value, (bytes, str)):
        return decode_str(value)
    return str(value)
