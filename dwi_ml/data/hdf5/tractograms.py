"""Load, check, resample and convert the tractograms of a streamline group.

Every file is read once (see ``tractogram_reading``), straight into voxel
space with a corner origin (dipy ``Space.VOX``, ``Origin.TRACKVIS``) on the
reference grid, checked there (NaN, streamlines outside the volume), then
resampled or compressed by its ``StreamlineFormat`` (in mm, with the same
function as the batch loader) and measured in mm.
"""
import logging
from dataclasses import dataclass
from typing import Dict, Tuple

import nibabel as nib
import numpy as np

from dwi_ml.data.hdf5.subjects import describe, one_line
from dwi_ml.data.hdf5.tractogram_reading import (
    PackedTractogram,
    read_tractogram_vox,
)
from dwi_ml.data.packed import (
    compact,
    cut_by_budget,
    drop_repeated_points,
    gather,
    lengths_mm,
    make_array_sequence,
    offsets_from_lengths,
)
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.script_args import quiet_logger
from dwi_ml.io_utils.tractogram_files import tractogram_extension

# Input points per resampling run (see _apply_in_runs).
RESAMPLING_RUN_POINTS = 2 ** 15


@dataclass
class StreamlineGroupData:
    """A streamline group's streamlines, once its points are written.

    Attributes
    ----------
    offsets, lengths : np.ndarray, shape (N,), int64
        First row in the group's points and number of points of each
        streamline.
    euclidean_lengths : np.ndarray, shape (N,), float32
        Length of each streamline in mm, after resampling.
    data_per_streamline : dict of str to np.ndarray of shape (N, k)
    space_attributes : tuple
        dipy's (affine, dimensions, voxel_sizes, voxel_order) of the
        reference grid.
    nb_removed : int
        Streamlines dropped for leaving the volume.
    """
    offsets: np.ndarray
    lengths: np.ndarray
    euclidean_lengths: np.ndarray
    data_per_streamline: Dict[str, np.ndarray]
    space_attributes: Tuple
    nb_removed: int


# dipy's is_header_compatible tolerance (affine and voxel sizes).
HEADER_TOLERANCE = 1e-3


def _format_name(tractogram_file):
    """'TCK' for a nibabel ``TckFile``, and so on."""
    return type(tractogram_file).__name__.removesuffix("File").upper()


def reference_info(path):
    """dipy's ``get_reference_info`` of a file, without importing dipy.io.

    dipy.io imports pytest (~0.3 s, a tenth of creating a subject's
    file): NIfTI and .trk headers are read here with nibabel, as dipy
    reads them; other files (.trx) still go through dipy.

    Parameters
    ----------
    path : str
        NIfTI (.nii, .nii.gz), .trk or .trx file.

    Returns
    -------
    (affine, dimensions, voxel_sizes, voxel_order)
        float64 (4, 4) voxel-to-RAS mm affine, the header's (3,) dimensions
        and voxel sizes, and a str such as 'RAS'.
    """
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        header = nib.load(path).header
        affine = header.get_best_affine()
        if not affine[:3, :3].any():
            raise ValueError("Invalid affine, contains only zeros.")
        info = (affine, header["dim"][1:4], header["pixdim"][1:4],
                "".join(nib.aff2axcodes(affine)))
    elif tractogram_extension(name) == ".trk":
        loaded = nib.streamlines.load(path, lazy_load=True)
        if not isinstance(loaded, nib.streamlines.TrkFile):
            # nibabel reads by content: a .tck renamed .trk has no grid.
            raise DwiMLUserError(
                f"tractogram '{path}': expected TrackVis .trk content (its "
                f"extension), found {_format_name(loaded)} content; give "
                "it its format's extension.")
        header = loaded.header
        info = tuple(header[key] for key in ("voxel_to_rasmm", "dimensions",
                                             "voxel_sizes", "voxel_order"))
    else:
        from dipy.io.utils import get_reference_info
        with quiet_logger("dipy"):
            # dipy < 1.12 returns a float32 affine (float64 from 1.12 on).
            info = get_reference_info(path)
    affine, dimensions, voxel_sizes, voxel_order = info
    if isinstance(voxel_order, bytes):
        voxel_order = voxel_order.decode("utf-8")
    return affine.astype(np.float64), dimensions, voxel_sizes, voxel_order


def check_tractogram_header(path, reference, subject, group):
    """Refuse a .trk/.trx whose grid differs from the reference's.

    The comparison of dipy's ``is_header_compatible``: affines and voxel
    sizes within ``HEADER_TOLERANCE`` (relative and absolute), equal
    dimensions and voxel orders.

    Parameters
    ----------
    path : str
        A .trk or .trx file (a .tck has no grid to check).
    reference : str
        NIfTI, .trk or .trx file defining the grid.
    subject, group : str
        Subject ID and streamline group, named in the error message.

    Raises
    ------
    DwiMLUserError
        When the header cannot be read or its grid differs.
    """
    try:
        found = reference_info(path)
    except DwiMLUserError:
        raise
    except Exception as error:  # dipy/nibabel raise many types
        raise DwiMLUserError(
            f"{describe(subject, group, path)}: cannot read its header; "
            "the file is truncated or corrupt, or not a tractogram "
            f"({type(error).__name__}: {one_line(error)}).") from None
    difference = grid_difference(found, reference_info(reference), reference)
    if difference is not None:
        raise DwiMLUserError(f"{describe(subject, group, path)}: {difference}.")


def grid_difference(found, expected, reference):
    """How a tractogram's grid differs from its reference's, or None.

    The comparison of dipy's ``is_header_compatible`` (see
    :func:`check_tractogram_header`), but with the voxel sizes of the
    affines: a NIfTI's pixdim follows its qform, which may differ from the
    sform that nibabel and dipy take as its grid, and a .trk's header
    sizes only scale its own points.

    Parameters
    ----------
    found, expected : tuple
        :func:`reference_info` of the tractogram and of the reference.
    reference : str
        The reference's path, named in the text.
    """
    found, expected = _with_affine_voxel_sizes(found), \
        _with_affine_voxel_sizes(expected)
    alike = [np.allclose(found[0], expected[0], rtol=HEADER_TOLERANCE,
                         atol=HEADER_TOLERANCE),
             np.array_equal(found[1], expected[1]),
             np.allclose(found[2], expected[2], rtol=HEADER_TOLERANCE,
                         atol=HEADER_TOLERANCE),
             found[3] == expected[3]]
    if all(alike):
        return None
    # Only what differs: the order, say, rather than two whole grids.
    found_text, expected_text = _grid_texts(found), _grid_texts(expected)
    return (f"the tractogram's grid does not match the reference "
            f"'{reference}': " + "; ".join(
                f"{name} {found_text[i]} here, {expected_text[i]} there"
                for i, name in enumerate(_GRID_FIELDS) if not alike[i]))


def load_streamline_group(group_config, files, reference, subject,
                          streamline_format=None, *, write_points,
                          remove_invalid=False):
    """Load a streamline group's files, processed, passing on their points.

    Each file is read once and checked as it is read (see
    :func:`load_tractogram_file`).

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
    streamline_format : StreamlineFormat, optional
        Resampling or compression, applied (in mm) as the loader would.
        None: streamlines are kept as they are.
    write_points : callable
        Called with each run of processed points (np.ndarray, shape (n, 3),
        float32, voxel space with a corner origin), in the order of the
        files and streamlines; the group's points are their concatenation.
        Nothing keeps them after the call.
    remove_invalid : bool
        Drop streamlines with a point outside the volume instead of failing.

    Returns
    -------
    StreamlineGroupData

    Raises
    ------
    DwiMLUserError
        As :func:`load_tractogram_file`.
    """
    group = group_config.name
    streamline_format = streamline_format or StreamlineFormat()
    space_attributes = reference_info(reference)
    affine = np.asarray(space_attributes[0], dtype=np.float64)
    # One file at a time, dropped once its points are processed; each run's
    # points go to write_points, so none accumulate here.
    all_lengths, euclidean, dps_parts = [], [], []
    nb_removed = 0
    for path in files:
        tractogram, nb_invalid = load_tractogram_file(
            path, space_attributes, group_config, subject, remove_invalid)
        nb_removed += nb_invalid
        if len(tractogram.lengths) == 0:
            continue
        keep_parts, nb_repeated = [], 0
        for data, offsets, lengths in _apply_in_runs(
                streamline_format, tractogram.points, tractogram.lengths,
                affine):
            points = data.astype(np.float32, copy=False)
            # Resampled, a streamline that comes back on itself can repeat
            # a point (a loop at --nb_points 2): as in the file, counted once.
            distinct, distinct_lengths, nb_run = drop_repeated_points(
                points, lengths)
            keep = distinct_lengths >= 2
            if nb_run or not keep.all():
                if not keep.all() and not remove_invalid:
                    raise DwiMLUserError(
                        f"{describe(subject, group, path)}: "
                        f"{int(np.count_nonzero(~keep))} streamlines have "
                        "fewer than 2 distinct points once resampled (they "
                        "come back to their start); use --remove_invalid to "
                        "drop them.")
                data, offsets, lengths = gather(
                    distinct, offsets_from_lengths(distinct_lengths)[keep],
                    distinct_lengths[keep])
                points, nb_repeated = data, nb_repeated + nb_run
            euclidean.append(lengths_mm(data, offsets, lengths, affine))
            write_points(points)
            all_lengths.append(lengths)
            keep_parts.append(keep)
        keep = np.concatenate(keep_parts)
        nb_removed += int(np.count_nonzero(~keep))
        dps_parts.append({key: values[keep] for key, values
                          in tractogram.data_per_streamline.items()})
        if nb_repeated:
            logging.warning("%s: removed %d repeated consecutive points once "
                            "resampled.", describe(subject, group, path),
                            nb_repeated)
        del tractogram, data, points
    if nb_removed:
        logging.warning("%s: removed %d streamlines with points outside the "
                        "volume or fewer than 2 distinct points.",
                        describe(subject, group), nb_removed)
    if not all_lengths or not sum(len(part) for part in all_lengths):
        raise DwiMLUserError(
            f"{describe(subject, group)}: no streamline left after removing "
            f"{nb_removed} streamlines outside the volume or with fewer than "
            "2 distinct points, and skipping empty files.")
    lengths = np.concatenate(all_lengths)
    offsets = offsets_from_lengths(lengths)
    dps = {key: _concatenate_dps([part[key] for part in dps_parts], key,
                                 subject, group)
           for key in group_config.dps_keys}
    return StreamlineGroupData(
        offsets=offsets, lengths=lengths,
        euclidean_lengths=np.concatenate(euclidean),
        data_per_streamline=dps, space_attributes=space_attributes,
        nb_removed=nb_removed)


def _apply_in_runs(streamline_format, points, lengths, affine):
    """Yield ``compact(streamline_format.apply(run))`` for runs of streamlines.

    ``points`` are compact, in voxel space with a corner origin. Resampling
    works on all the points it is given at once, with a dozen float64
    temporaries the size of its output; runs of about
    ``RESAMPLING_RUN_POINTS`` points keep them to a few MB whatever the
    file's size (2 ** 20 points peaked 360 MB higher for 1.4x the system
    time, in page faults, at the same user time), and the arc lengths
    searched by each new point in the CPU's caches (2 ** 15: 15 - 20 %
    less CPU time than 2 ** 17). Streamlines are resampled independently:
    the runs change nothing but float rounding in the arc lengths (summed
    from the run's first point), one float32 ulp on ~1 stored coordinate
    in a million.
    """
    offsets = offsets_from_lengths(lengths)
    if not streamline_format.is_set:
        yield points, offsets, lengths
        return
    bounds = cut_by_budget(lengths, RESAMPLING_RUN_POINTS)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        # A slice of the compact points: a view, not a gather.
        first, end = offsets[start], offsets[stop - 1] + lengths[stop - 1]
        yield compact(streamline_format.apply(make_array_sequence(
            points[first:end], offsets[start:stop] - first,
            lengths[start:stop]), affine))


def points_outside_volume(points, dimensions):
    """Flag points outside the volume, NaN and Inf included.

    Parameters
    ----------
    points : np.ndarray, shape (P, 3)
        Points in voxel space with a corner origin.
    dimensions : array-like of 3 int
        Volume shape; valid coordinates are in [0, dimensions], the far
        faces included, as dipy's bounding-box check (interpolation there
        replicates the border voxels).

    Returns
    -------
    np.ndarray of bool, shape (P,)
    """
    # NaN fails both comparisons: it is flagged with the points outside.
    inside = points >= 0
    inside &= points <= np.asarray(dimensions)
    # Column by column: numpy's reduction over rows of 3 is much slower.
    outside = ~inside[:, 0]
    outside |= ~inside[:, 1]
    outside |= ~inside[:, 2]
    return outside


def streamlines_with_flagged_points(flags, lengths):
    """True for each streamline with a flagged point.

    Parameters
    ----------
    flags : np.ndarray of bool, shape (P,)
        One flag per point of compact streamlines.
    lengths : np.ndarray, shape (N,)
        Number of points of each streamline.

    Returns
    -------
    np.ndarray of bool, shape (N,)
    """
    first_rows = offsets_from_lengths(lengths)
    # Flagged points per streamline (reduceat needs non-empty ranges).
    nb_flagged = np.zeros(len(lengths), dtype=np.int64)
    filled = lengths > 0
    nb_flagged[filled] = np.add.reduceat(flags, first_rows[filled])
    return nb_flagged > 0


def load_tractogram_file(path, space_attributes, group_config, subject,
                         remove_invalid):
    """Read and check one file, in voxel space with a corner origin.

    Parameters
    ----------
    path : str
    space_attributes : tuple
        dipy's (affine, dimensions, voxel_sizes, voxel_order) of the
        reference grid.
    group_config : StreamlineGroupConfig
    subject : str
    remove_invalid : bool

    Returns
    -------
    (PackedTractogram, int)
        The file's streamlines and its ``dps_keys`` only, without the
        removed ones (possibly none left), and the number removed.

    Raises
    ------
    DwiMLUserError
        An unreadable (e.g. truncated) file, an empty one (without
        ``remove_invalid``, which skips it), NaN or Inf
        coordinates, a missing dps key, or (without ``remove_invalid``)
        points outside the volume or single-point streamlines (points
        repeated in a row count once).
    """
    where = describe(subject, group_config.name, path)
    try:
        tractogram = read_tractogram_vox(path, space_attributes[0])
    except Exception as error:  # nibabel, dipy and ours raise many types
        raise DwiMLUserError(
            f"{where}: cannot read it as a tractogram; the file is "
            "truncated or corrupt "
            f"({type(error).__name__}: {one_line(error)}).") from None
    points, lengths = tractogram.points, tractogram.lengths
    if len(lengths) == 0:
        if not remove_invalid:
            raise DwiMLUserError(
                f"{where}: the tractogram is empty (0 streamlines); use "
                "--remove_invalid to skip it.")
        # E.g. a bundle that segmentation found empty in this subject.
        logging.warning("%s: the tractogram is empty (0 streamlines); "
                        "skipped.", where)
        return PackedTractogram(points, lengths, {}), 0
    dimensions = space_attributes[1]
    outside = points_outside_volume(points, dimensions)
    # NaN or Inf in the file stays non-finite through the affine, and is
    # among the points flagged outside: only those need a second look.
    nb_bad = int(np.count_nonzero(~np.isfinite(points[outside])))
    if nb_bad:
        raise DwiMLUserError(
            f"{where}: found {nb_bad} NaN or Inf coordinate(s); expected "
            "finite points only.")
    found = tractogram.data_per_streamline
    missing = [key for key in group_config.dps_keys if key not in found]
    if missing:
        raise DwiMLUserError(
            f"{where}: data_per_streamline key '{missing[0]}' is missing; "
            f"found keys {sorted(found)}.")
    dps = {key: np.asarray(found[key]).reshape(len(lengths), -1)
           for key in group_config.dps_keys}
    invalid = streamlines_with_flagged_points(outside, lengths)
    nb_outside = int(invalid.sum())
    points, lengths, nb_repeated = drop_repeated_points(points, lengths)
    if nb_repeated:
        logging.warning("%s: removed %d repeated consecutive points "
                        "(zero-length segments have no direction).", where,
                        nb_repeated)
    # A single point has no direction: nothing to learn, nor to resample.
    single = lengths < 2
    invalid |= single
    nb_invalid = int(invalid.sum())
    # Most streamlines off the volume: the file is in another space (a .tck
    # has no header to check), not a few strays to drop.
    elsewhere = ("is the file in the space of the subject's reference "
                 "volume (a .tck has no header: its points must be in that "
                 "volume's RAS mm)?")
    mostly_outside = 2 * nb_outside > len(lengths)
    if nb_invalid and remove_invalid and mostly_outside:
        logging.warning("%s: dropping %d of its %d streamlines, outside the "
                        "volume; %s", where, nb_outside, len(lengths),
                        elsewhere)
    if nb_invalid and not remove_invalid:
        if nb_outside:
            shape = tuple(int(n) for n in dimensions)
            if mostly_outside:
                raise DwiMLUserError(
                    f"{where}: {nb_outside} of {len(lengths)} streamlines "
                    f"have points outside the volume of shape {shape}; "
                    f"{elsewhere}")
            count, problem = (nb_outside, "have points outside the volume "
                                          f"of shape {shape}")
        else:
            count, problem = (nb_invalid, "have a single point, or all "
                                          "their points equal (expected at "
                                          "least 2 distinct)")
        raise DwiMLUserError(
            f"{where}: {count} of {len(lengths)} streamlines {problem}; use "
            "--remove_invalid to drop them.")
    if nb_invalid:
        keep = np.flatnonzero(~invalid)
        points, _, lengths = gather(points, offsets_from_lengths(lengths)[keep],
                                    lengths[keep])
        dps = {key: values[keep] for key, values in dps.items()}
    return PackedTractogram(points, lengths, dps), nb_invalid


def _concatenate_dps(values, key, subject, group):
    """One (N, k) array from the files' (N_i, k_i) values of ``key``."""
    if len({v.shape[1:] for v in values}) > 1:
        raise DwiMLUserError(
            f"{describe(subject, group)}: data_per_streamline '{key}' has "
            f"shapes {[v.shape[1:] for v in values]} in different files; "
            "expected one shape.")
    return np.concatenate(values)


# The fields of dipy's reference info, in its order.
_GRID_FIELDS = ("affine", "dimensions", "voxel sizes", "order")


def _with_affine_voxel_sizes(info):
    """:func:`reference_info` with the voxel sizes of its affine."""
    affine, dimensions, _, voxel_order = info
    return (affine, dimensions, nib.affines.voxel_sizes(affine), voxel_order)


def _grid_texts(info):
    affine, dimensions, voxel_sizes, voxel_order = info
    return (str(np.round(np.asarray(affine, float), 4).tolist()),
            str([int(d) for d in dimensions]),
            str(np.round(np.asarray(voxel_sizes, float), 4).tolist()),
            str(voxel_order))
