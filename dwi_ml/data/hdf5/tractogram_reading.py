"""Read a tractogram file as packed float32 points in voxel space.

HDF5 creation stores points in voxel space with a corner origin on the
reference grid. Going there through dipy's ``StatefulTractogram`` costs
twice: nibabel's .trk reader loops in Python over streamlines (with a
read and an append each), and every change of space or origin rounds all
points to float32 again (six times from the file to the stored point).
Here a .trk body is parsed with a few numpy passes over its bytes, and the
points go from the file's coordinates to voxels through one composed
affine, computed in float64 and rounded to float32 once.

.tck files are read by nibabel (RAS mm); .trx files by dipy, imported only
when one is read.
"""
from dataclasses import dataclass
from typing import Dict

import nibabel as nib
import numpy as np
from nibabel.streamlines.header import Field
from nibabel.streamlines.trk import decode_value_from_name, get_affine_trackvis_to_rasmm

from dwi_ml.data.packed import compact, ranges_to_indices
from dwi_ml.data.processing.space import CORNER_TO_CENTER_SHIFT, check_affine
from dwi_ml.io_utils.script_args import quiet_logger
from dwi_ml.io_utils.tractogram_files import tractogram_extension

# Points converted per float64 run (768 KiB per buffer: in cache).
AFFINE_RUN_POINTS = 2 ** 15


class TractogramReadError(ValueError):
    """The file's bytes are not a complete tractogram of its format."""


@dataclass
class PackedTractogram:
    """One file's streamlines, packed.

    Attributes
    ----------
    points : np.ndarray, shape (P, 3), float32
        Voxel space of the reference grid, corner origin; compact (streamline
        i starts at row ``sum(lengths[:i])``).
    lengths : np.ndarray, shape (N,), int64
        Number of points of each streamline.
    data_per_streamline : dict of str to np.ndarray of shape (N, k)
        Every key of the file.
    """
    points: np.ndarray
    lengths: np.ndarray
    data_per_streamline: Dict[str, np.ndarray]


def read_tractogram_vox(path, reference_affine):
    """Read a .trk, .tck or .trx file into the reference grid's voxel space.

    Parameters
    ----------
    path : str
        The tractogram. A .trk or .trx must be on the reference grid (see
        ``tractograms.check_tractogram_header``); a .tck is in RAS mm.
    reference_affine : np.ndarray, shape (4, 4)
        nibabel voxel(centre)-to-RAS mm affine of the reference grid.

    Returns
    -------
    PackedTractogram

    Raises
    ------
    Exception
        Whatever nibabel or dipy raise on an unreadable file, or
        TractogramReadError for a truncated .trk body.
    """
    extension = tractogram_extension(path)
    if extension == ".trk":
        file_points, lengths, dps, file_to_rasmm = _read_trk(path)
    elif extension == ".tck":
        tractogram = nib.streamlines.load(path).tractogram
        file_points, _, lengths = compact(tractogram.streamlines)
        dps, file_to_rasmm = {}, np.eye(4)
    else:
        file_points, lengths, dps = _read_with_dipy(path)
        file_to_rasmm = np.eye(4)
    file_to_vox = np.linalg.inv(check_affine(reference_affine)) @ file_to_rasmm
    file_to_vox[:3, 3] += CORNER_TO_CENTER_SHIFT
    points = np.require(file_points, np.float32, ["C", "W"])
    _apply_affine_in_place(file_to_vox, points)
    return PackedTractogram(points, lengths, dps)


def _apply_affine_in_place(affine, points):
    """Apply ``affine`` to (P, 3) float32 points, in float64, run by run.

    Two float64 buffers serve every run: allocating the temporaries of
    ``run.astype(np.float64) @ A.T + t`` anew for each run cost 3 - 5x the
    arithmetic in page faults. The same operations, so the same values.
    """
    linear, translation = affine[:3, :3].T.copy(), affine[:3, 3]
    run_points = min(len(points), AFFINE_RUN_POINTS)
    source = np.empty((run_points, 3), dtype=np.float64)
    mapped = np.empty((run_points, 3), dtype=np.float64)
    for start in range(0, len(points), AFFINE_RUN_POINTS):
        run = points[start:start + AFFINE_RUN_POINTS]
        size = len(run)
        np.copyto(source[:size], run)
        np.matmul(source[:size], linear, out=mapped[:size])
        mapped[:size] += translation
        run[:] = mapped[:size]


def _read_trk(path):
    """Points (TrackVis voxmm), lengths, dps and the voxmm-to-RAS mm affine."""
    header = nib.streamlines.TrkFile.load(path, lazy_load=True).header
    with open(path, "rb") as file:
        file.seek(header["_offset_data"])
        body = file.read()
    words = np.frombuffer(body, np.dtype(header[Field.ENDIANNESS] + "i4"),
                          len(body) // 4)
    if not words.dtype.isnative:
        words = words.byteswap().view(words.dtype.newbyteorder())
    floats = words.view(np.float32)
    nb_scalars = int(header[Field.NB_SCALARS_PER_POINT])
    nb_properties = int(header[Field.NB_PROPERTIES_PER_STREAMLINE])
    first_words, lengths = _trk_records(words, 3 + nb_scalars, nb_properties,
                                        int(header[Field.NB_STREAMLINES]))
    point_words = ranges_to_indices(first_words, lengths,
                                    np.full(len(lengths), 3 + nb_scalars))
    # One gather per coordinate: ~6x faster than np.take over row views.
    points = np.empty((len(point_words), 3), dtype=np.float32)
    for axis in range(3):
        points[:, axis] = floats[axis:][point_words]
    property_words = (first_words + lengths * (3 + nb_scalars))[:, None] \
        + np.arange(nb_properties)
    properties = floats[property_words]
    dps = {name: properties[:, columns]
           for name, columns in _trk_property_columns(header).items()}
    return points, lengths, dps, get_affine_trackvis_to_rasmm(header)


def _trk_records(words, words_per_point, nb_properties, nb_streamlines):
    """First point word and number of points of each .trk record.

    A record is one int32 count n, n points of ``words_per_point`` float32
    and ``nb_properties`` float32. Each record's place depends on the counts
    before it, so this walks the counts (one step per streamline, reading
    one int each); the points are gathered afterwards in one pass.
    """
    counts = memoryview(words)
    nb_words = len(words)
    limit = nb_streamlines or nb_words  # 0: not given, read to the end
    # The loop only records where each count is (one append a step); the
    # counts are gathered afterwards in one pass.
    count_words = []
    append = count_words.append
    position = 0
    while position < nb_words and len(count_words) < limit:
        nb_points = counts[position]
        if nb_points < 0:
            raise TractogramReadError(
                f"streamline {len(count_words)} has {nb_points} points")
        append(position)
        position += 1 + nb_points * words_per_point + nb_properties
    if position > nb_words:
        raise TractogramReadError(
            f"the data ends inside streamline {len(count_words) - 1}")
    if len(count_words) < nb_streamlines:
        raise TractogramReadError(
            f"the header announces {nb_streamlines} streamlines, found "
            f"{len(count_words)}")
    count_words = np.asarray(count_words, dtype=np.int64)
    return count_words + 1, words[count_words].astype(np.int64)


def _trk_property_columns(header):
    """dps name to its columns, named as nibabel's TrkFile.load names them."""
    nb_properties = int(header[Field.NB_PROPERTIES_PER_STREAMLINE])
    columns, start = {}, 0
    for encoded in header["property_name"] if nb_properties else ():
        name, size = decode_value_from_name(encoded)
        if size:
            columns[name] = slice(start, start + size)
            start += size
    if start < nb_properties:
        columns["properties"] = slice(start, nb_properties)
    return columns


def _read_with_dipy(path):
    """A .trx file's RAS mm points (centre origin), lengths and dps."""
    from dipy.io.streamline import load_tractogram

    with quiet_logger("dipy"):
        sft = load_tractogram(path, "same", bbox_valid_check=False)
    sft.to_rasmm()
    sft.to_center()
    points, _, lengths = compact(sft.streamlines)
    return points, lengths, {key: np.asarray(values) for key, values
                             in sft.data_per_streamline.items()}
