"""Load, check, resample and convert the tractograms of a streamline group.

Every file is loaded in RAS mm (centre origin), checked against the
reference grid in voxel space (corner origin), resampled or compressed in
RAS mm with dipy, measured in mm, then converted to voxel space with a
corner origin (dipy ``Space.VOX``, ``Origin.TRACKVIS``) for the HDF5.
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import load_tractogram
from dipy.io.utils import get_reference_info, is_header_compatible
from dipy.tracking.streamlinespeed import (
    compress_streamlines,
    length,
    set_number_of_points,
)
from nibabel.streamlines import ArraySequence

from dwi_ml.data.hdf5.subjects import describe, one_line
from dwi_ml.data.packed import compact, make_array_sequence, ranges_to_indices
from dwi_ml.io_utils.errors import DwiMLUserError

TRACTOGRAM_EXTENSIONS = (".trk", ".tck", ".trx")
# dipy's default: a compressed segment never exceeds 10 mm.
COMPRESS_MAX_SEGMENT_MM = 10.0


@dataclass
class StreamlineGroupData:
    """A streamline group ready to be written.

    Attributes
    ----------
    data : np.ndarray, shape (P, 3), float32
        All points, in voxel space with a corner origin.
    offsets, lengths : np.ndarray, shape (N,), int64
        First row in ``data`` and number of points of each streamline.
    euclidean_lengths : np.ndarray, shape (N,), float32
        Length of each streamline in mm, after resampling.
    data_per_streamline : dict of str to np.ndarray of shape (N, k)
    space_attributes : tuple
        dipy's (affine, dimensions, voxel_sizes, voxel_order) of the
        reference grid.
    nb_removed : int
        Streamlines dropped for leaving the volume.
    """
    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    euclidean_lengths: np.ndarray
    data_per_streamline: Dict[str, np.ndarray]
    space_attributes: Tuple
    nb_removed: int


def tractogram_extension(path):
    """The lower-case extension of a tractogram path ('.trk', ...)."""
    return os.path.splitext(path)[1].lower()


def check_tractogram_header(path, reference, subject, group):
    """Refuse a .trk/.trx whose grid differs from the reference's.

    Parameters
    ----------
    path : str
        A .trk or .trx file (a .tck has no grid to check).
    reference : str
        NIfTI, .trk or .trx file defining the grid.
    """
    with _quiet_dipy():
        try:
            compatible = is_header_compatible(path, reference)
        except Exception as error:  # dipy/nibabel raise many types
            raise DwiMLUserError(
                f"{describe(subject, group, path)}: cannot read its header; "
                "the file is truncated or corrupt, or not a tractogram "
                f"({type(error).__name__}: {one_line(error)}).") from None
    if not compatible:
        found, expected = (_grid_text(get_reference_info(p))
                           for p in (path, reference))
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: the tractogram's grid "
            f"({found}) does not match the reference '{reference}' "
            f"({expected}).")


def load_streamline_group(group_config, files, reference, subject, *,
                          step_size=None, nb_points=None, compress=None,
                          remove_invalid=False):
    """Load a streamline group's files, processed and concatenated.

    Parameters
    ----------
    group_config : StreamlineGroupConfig
        The group's name and ``dps_keys``.
    files : list of str
        Full paths of .trk/.tck/.trx files, concatenated in this order.
    reference : str
        NIfTI, .trk or .trx file defining the voxel grid (and the space of
        .tck files).
    subject : str
        Named in error and log messages.
    step_size, nb_points, compress : float, int, float, optional
        At most one: step in mm, number of points per streamline, or
        compression tolerance in mm.
    remove_invalid : bool
        Drop streamlines with a point outside the volume instead of failing.

    Returns
    -------
    StreamlineGroupData
    """
    group = group_config.name
    parts = [load_tractogram_file(path, reference, group_config, subject,
                            remove_invalid) for path in files]
    nb_removed = sum(nb for _, nb in parts)
    sfts = [sft for sft, _ in parts if len(sft) > 0]
    if nb_removed:
        logging.warning("%s: removed %d streamlines with points outside the "
                        "volume.", describe(subject, group), nb_removed)
    if not sfts:
        raise DwiMLUserError(
            f"{describe(subject, group)}: no streamline left after removing "
            f"{nb_removed} streamlines outside the volume.")

    datas, all_lengths, euclidean = [], [], []
    for sft in sfts:
        # Resampling leaves data_per_streamline unchanged: sfts keep it.
        processed = StatefulTractogram.from_sft(
            resample_or_compress(sft.streamlines, step_size, nb_points,
                                 compress), sft)
        euclidean.append(length(processed.streamlines).astype(np.float32))
        processed.to_vox()
        processed.to_corner()
        data, _, lengths = compact(processed.streamlines)
        datas.append(data.astype(np.float32))
        all_lengths.append(lengths)
    lengths = np.concatenate(all_lengths)
    offsets = np.concatenate(([0], np.cumsum(lengths[:-1]))).astype(np.int64)
    dps = {key: _concatenate_dps(sfts, key, subject, group)
           for key in group_config.dps_keys}
    return StreamlineGroupData(
        data=np.concatenate(datas), offsets=offsets, lengths=lengths,
        euclidean_lengths=np.concatenate(euclidean),
        data_per_streamline=dps, space_attributes=sfts[0].space_attributes,
        nb_removed=nb_removed)


def check_processing_options(step_size=None, nb_points=None, compress=None):
    """Refuse more than one option, or a value out of range.

    Raises
    ------
    DwiMLUserError
        Two options given, a step_size or compress <= 0 mm, or nb_points < 2.
    """
    given = [name for name, value in (("step_size", step_size),
                                      ("nb_points", nb_points),
                                      ("compress", compress))
             if value is not None]
    if len(given) > 1:
        raise DwiMLUserError(
            f"options {given} are mutually exclusive; give at most one.")
    if step_size is not None and not step_size > 0:
        raise DwiMLUserError(
            f"step_size must be > 0 mm, found {step_size}.")
    if compress is not None and not compress > 0:
        raise DwiMLUserError(
            f"compress tolerance must be > 0 mm, found {compress}.")
    if nb_points is not None and (int(nb_points) != nb_points
                                  or nb_points < 2):
        raise DwiMLUserError(
            f"nb_points must be an integer >= 2, found {nb_points}.")


def resample_or_compress(streamlines, step_size=None, nb_points=None,
                         compress=None):
    """Resample or compress streamlines given in RAS mm.

    Parameters
    ----------
    streamlines : ArraySequence
        Streamlines in RAS mm (any origin).
    step_size : float, optional
        Step in mm. Each streamline gets ``ceil(length / step_size) + 1``
        equally spaced points (at least 2), so no step exceeds step_size.
    nb_points : int, optional
        Number of equally spaced points of every streamline.
    compress : float, optional
        dipy's compression tolerance in mm (segments up to 10 mm).

    Returns
    -------
    ArraySequence
        In RAS mm; the input itself when no option is given.
    """
    if nb_points is not None:
        return set_number_of_points(streamlines, int(nb_points))
    if compress is not None:
        return ArraySequence(compress_streamlines(
            streamlines, tol_error=compress,
            max_segment_length=COMPRESS_MAX_SEGMENT_MM))
    if step_size is None:
        return streamlines
    counts = np.maximum(
        np.ceil(length(streamlines) / step_size).astype(np.int64) + 1, 2)
    offsets = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.int64)
    data = np.empty((int(counts.sum()), 3), dtype=streamlines._data.dtype)
    # dipy takes one number of points per call: one call per distinct count.
    for count in np.unique(counts):
        ids = np.flatnonzero(counts == count)
        resampled = set_number_of_points(streamlines[ids], int(count))
        data[ranges_to_indices(offsets[ids], counts[ids])] = \
            resampled.get_data()
    return make_array_sequence(data, offsets, counts)


def find_invalid_streamlines(streamlines, dimensions):
    """Flag streamlines with a point outside the volume.

    Parameters
    ----------
    streamlines : ArraySequence
        In voxel space with a corner origin.
    dimensions : array-like of 3 int
        Volume shape; valid coordinates are in [0, dimensions).

    Returns
    -------
    np.ndarray of bool, shape (N,)
    """
    data, _, lengths = compact(streamlines)
    outside = np.any((data < 0) | (data >= np.asarray(dimensions)), axis=1)
    streamline_ids = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(streamline_ids, weights=outside,
                       minlength=len(lengths)) > 0


def load_tractogram_file(path, reference, group_config, subject, remove_invalid):
    """One file as an SFT on the reference grid (RAS mm, centre origin).

    Returns the SFT (possibly empty after removals) and the number removed.

    Raises
    ------
    DwiMLUserError
        An unreadable (e.g. truncated) or empty file, NaN or Inf
        coordinates, a missing dps key, or (without ``remove_invalid``)
        points outside the volume.
    """
    group = group_config.name
    where = describe(subject, group, path)
    loading_reference = reference if tractogram_extension(path) == ".tck" \
        else "same"
    with _quiet_dipy():
        try:
            loaded = load_tractogram(path, loading_reference,
                                     bbox_valid_check=False,
                                     trk_header_check=False)
        except Exception as error:  # dipy/nibabel raise many types
            raise DwiMLUserError(
                f"{where}: cannot read it as a tractogram; the file is "
                "truncated or corrupt "
                f"({type(error).__name__}: {one_line(error)}).") from None
    if len(loaded) == 0:
        raise DwiMLUserError(f"{where}: the tractogram is empty (0 "
                             "streamlines).")
    nb_bad = int(np.count_nonzero(~np.isfinite(loaded.streamlines.get_data())))
    if nb_bad:
        raise DwiMLUserError(
            f"{where}: found {nb_bad} NaN or Inf coordinate(s); expected "
            "finite points only.")
    missing = [k for k in group_config.dps_keys
               if k not in loaded.data_per_streamline]
    if missing:
        raise DwiMLUserError(
            f"{where}: data_per_streamline key '{missing[0]}' is missing; "
            f"found keys {sorted(loaded.data_per_streamline.keys())}.")
    loaded.to_rasmm()
    loaded.to_center()
    # Rebuilt on the reference so every file shares its space attributes.
    sft = StatefulTractogram(
        loaded.streamlines, reference, Space.RASMM, origin=Origin.NIFTI,
        data_per_streamline={k: loaded.data_per_streamline[k]
                             for k in group_config.dps_keys})
    sft.to_vox()
    sft.to_corner()
    invalid = find_invalid_streamlines(sft.streamlines, sft.dimensions)
    nb_invalid = int(invalid.sum())
    if nb_invalid and not remove_invalid:
        shape = tuple(int(n) for n in sft.dimensions)
        raise DwiMLUserError(
            f"{where}: {nb_invalid} of {len(sft)} streamlines have points "
            f"outside the volume of shape {shape}; use --remove_invalid to "
            "drop them.")
    if nb_invalid:
        sft = sft[np.flatnonzero(~invalid)]
    sft.to_rasmm()
    sft.to_center()
    return sft, nb_invalid


def _concatenate_dps(sfts, key, subject, group):
    values = [np.asarray(sft.data_per_streamline[key]).reshape(len(sft), -1)
              for sft in sfts]
    if len({v.shape[1:] for v in values}) > 1:
        raise DwiMLUserError(
            f"{describe(subject, group)}: data_per_streamline '{key}' has "
            f"shapes {[v.shape[1:] for v in values]} in different files; "
            "expected one shape.")
    return np.concatenate(values)


def _grid_text(info):
    affine, dimensions, voxel_sizes, voxel_order = info
    return (f"dimensions {[int(d) for d in dimensions]}, voxel sizes "
            f"{np.round(np.asarray(voxel_sizes, float), 4).tolist()}, "
            f"order {voxel_order}, affine "
            f"{np.round(np.asarray(affine, float), 4).tolist()}")


@contextlib.contextmanager
def _quiet_dipy():
    """Hide dipy's ERROR logs: our own one-line error says it better."""
    logger = logging.getLogger("dipy")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
