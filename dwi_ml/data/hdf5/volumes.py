"""Load, check, standardize and concatenate the NIfTI files of a volume group.

Standardization (the config's ``standardization``) maps values to zero mean
and unit standard deviation over the voxels of a mask, with the maths of the
reference dwi_ml (scil-vital/dwi_ml, ``standardize_data``):

- ``std_mask`` given: the union of its files (voxels > 0). Without it, the
  voxels where every feature of the standardized data is non-zero.
- ``all``: one mean and std over every feature of the concatenated group.
  ``independent``: one mean and std per feature. ``per_file``: each file
  with its own mean and std over all its features. ``none``: values kept.
- Every voxel, inside the mask or not, is mapped with the mask's mean and
  std: the mask chooses the statistics, not the voxels kept.
- A feature with a std of 0 in the mask is only centred.
"""
from dataclasses import dataclass
from typing import Tuple

import nibabel as nib
import numpy as np

from dwi_ml.data.finite import all_finite
from dwi_ml.data.hdf5.subjects import describe, one_line
from dwi_ml.io_utils.errors import DwiMLUserError

AFFINE_TOLERANCE_MM = 1e-3  # the tolerance of dipy's is_header_compatible


@dataclass(frozen=True)
class VolumeGrid:
    """The voxel grid of a NIfTI file.

    Attributes
    ----------
    shape : tuple of 3 int
        Number of voxels along each axis.
    affine : np.ndarray, shape (4, 4)
        Voxel (centre origin) to RAS mm.
    voxres : np.ndarray, shape (3,)
        Voxel sizes in mm, from the header.
    """
    shape: Tuple[int, int, int]
    affine: np.ndarray
    voxres: np.ndarray

    def matches(self, other):
        """True when both grids have the same shape and affine."""
        return self.shape == other.shape and np.allclose(
            self.affine, other.affine, rtol=0, atol=AFFINE_TOLERANCE_MM)

    def __str__(self):
        return (f"shape {self.shape} and affine "
                f"{np.round(self.affine, 4).tolist()}")


def read_volume_grid(path, subject, group):
    """Read a NIfTI header (no data) and check it holds a 3-D or 4-D volume.

    Returns
    -------
    grid : VolumeGrid
    nb_features : int
        1 for a 3-D file, else the size of the 4th axis.
    """
    image = _load_image(path, subject, group)
    if image.ndim not in (3, 4):
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: expected a 3-D or 4-D volume, "
            f"found shape {image.shape}.")
    if 0 in image.shape:
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: expected at least one voxel "
            f"and one feature, found shape {image.shape}.")
    if image.get_data_dtype().kind == "c":
        # nibabel keeps the real part only, with a warning.
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: expected real values, found "
            f"{image.get_data_dtype()}; save the magnitude (or the parts) "
            "as real volumes.")
    grid = VolumeGrid(tuple(int(n) for n in image.shape[:3]),
                      image.affine.astype(np.float64),
                      np.asarray(image.header.get_zooms()[:3], np.float32))
    nb_features = 1 if image.ndim == 3 else int(image.shape[3])
    return grid, nb_features


def load_volume_group(group_config, files, mask_files, subject):
    """Load a volume group's files, standardized and concatenated.

    Parameters
    ----------
    group_config : VolumeGroupConfig
        The group's ``standardization`` and name.
    files, mask_files : list of str
        Full paths of the data files (in feature order) and of the masks.
        Their grids were already checked to match.
    subject : str
        Named in error messages.

    Returns
    -------
    np.ndarray, shape (X, Y, Z, F), float32
        Features of the files in order; a 3-D file gives one feature.

    Raises
    ------
    DwiMLUserError
        NaN or Inf in a file, a ``std_mask`` with no voxel > 0, or no voxel
        to standardize over (see :func:`standardize`).
    """
    group = group_config.name
    mode = group_config.standardization
    mask = load_std_mask(mask_files, subject, group) if (
        mask_files and mode != "none") else None
    volumes = []
    for path in files:
        data = load_volume(path, subject, group)
        if mode == "per_file":
            data = standardize(data, mask, independent=False,
                               where=describe(subject, group, path))
        volumes.append(data)
    data = volumes[0] if len(volumes) == 1 else np.concatenate(volumes,
                                                               axis=-1)
    if mode in ("all", "independent"):
        data = standardize(data, mask, independent=(mode == "independent"),
                           where=describe(subject, group))
    return data


def load_volume(path, subject, group):
    """Load one NIfTI file as (X, Y, Z, F) float32, refusing NaN and Inf."""
    image = _load_image(path, subject, group)
    # Values beyond float32's range become Inf: told apart below.
    with np.errstate(over="ignore"):
        data = _read_data(image, path, subject, group,
                          lambda img: img.get_fdata(dtype=np.float32))
    if data.ndim == 3:
        data = data[..., None]
    if not all_finite(data):
        nb_bad = int(np.count_nonzero(~np.isfinite(data)))
        nb_nonfinite = int(np.count_nonzero(~np.isfinite(
            np.asanyarray(image.dataobj))))
        problem = (f"{nb_bad} NaN or Inf value(s)" if nb_nonfinite else
                   f"{nb_bad} value(s) beyond float32's range (|value| > "
                   f"{np.finfo(np.float32).max:.3g})")
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: found {problem}; expected "
            "finite values only.")
    return data


def load_std_mask(paths, subject, group):
    """Union of the masks' voxels > 0, as a (X, Y, Z) bool array.

    The masks were checked to be single-feature files on the group's grid.
    """
    mask = None
    for path in paths:
        image = _load_image(path, subject, group)
        data = _read_data(image, path, subject, group,
                          lambda img: np.asanyarray(img.dataobj))
        file_mask = data.reshape(data.shape[:3]) > 0
        mask = file_mask if mask is None else mask | file_mask
    if not mask.any():
        raise DwiMLUserError(
            f"{describe(subject, group, paths[0])}: the std_mask has no voxel "
            "> 0; standardization needs at least one voxel.")
    return mask


def standardize(data, mask=None, independent=False, where="volume"):
    """Zero mean, unit std over the mask's voxels, applied to every voxel.

    Parameters
    ----------
    data : np.ndarray, shape (X, Y, Z, F), float32
        Changed in place and returned.
    mask : np.ndarray of bool, shape (X, Y, Z), optional
        Voxels defining the statistics. Default: voxels where every feature
        is non-zero (the reference's default).
    independent : bool
        One mean and std per feature (True) or for all features (False).
    where : str
        Names the data in errors.

    Returns
    -------
    np.ndarray, shape (X, Y, Z, F), float32

    Raises
    ------
    DwiMLUserError
        Without a mask, non-zero data but no voxel where every feature is
        non-zero: there is nothing to take statistics over (the reference
        writes NaN everywhere).
    """
    if mask is None:
        mask = np.all(data != 0, axis=-1)
        if not mask.any():
            if data.any():
                raise DwiMLUserError(
                    f"{where}: no voxel has every feature non-zero, so "
                    "standardization without a std_mask has no voxel to "
                    "take its mean and std over; add a 'std_mask' to the "
                    "group.")
            return data  # all zeros: already standardized
    # Statistics in float64: float32 sums drift on large volumes.
    values = data[mask].astype(np.float64)
    axis = 0 if independent else None
    mean = values.mean(axis=axis)
    std = values.std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    data -= mean.astype(np.float32)
    data /= std.astype(np.float32)
    return data


def _load_image(path, subject, group):
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises many types for bad files
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: cannot read it as NIfTI; "
            "the file is truncated or corrupt, or not NIfTI "
            f"({type(error).__name__}: {one_line(error)}).") from None


def _read_data(image, path, subject, group, read):
    """``read(image)``, its data; a truncated file is a user error."""
    try:
        return read(image)
    except Exception as error:  # EOFError, OSError, zlib.error...
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: its header reads but its data "
            f"does not: the file is truncated or corrupt (expected shape "
            f"{image.shape}; {type(error).__name__}: {one_line(error)})."
        ) from None
