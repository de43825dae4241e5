"""Files the scoring and connectivity scripts read and write.

Tractograms are loaded with dipy on the grid of a NIfTI volume and turned
into voxel space with a corner origin, the space every scoring function
expects. Outputs (JSON, .npy) are written under a temporary name, then
renamed.
"""

import logging

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import load_tractogram

from dwi_ml.data.hdf5.connectivity import read_label_volume
from dwi_ml.data.hdf5.subjects import one_line
from dwi_ml.data.hdf5.tractograms import (
    grid_difference,
    reference_info,
    streamlines_with_flagged_points,
)
from dwi_ml.data.packed import compact
from dwi_ml.io_utils.arg_checks import check_extension
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.output_folders import check_output_free
from dwi_ml.io_utils.script_args import add_output_args
from dwi_ml.io_utils.tractogram_files import (
    check_tractogram_extension,
    refuse_upper_case_tractogram,
    tractogram_extension,
)
from dwi_ml.tracking.connectivity import endpoints_in_volume

logger = logging.getLogger(__name__)
# Share of a tractogram's points outside the grid above which it is
# probably in another space (warned, not refused).
MAX_SHARE_OUTSIDE_GRID = 0.5
# --bundle_key value that reads a .trx file's groups as its bundles.
TRX_GROUPS_KEY = "groups"


def _load_image(nifti_path):
    try:
        return nib.load(nifti_path)
    except Exception as error:  # nibabel raises many kinds on a bad file
        raise DwiMLUserError(
            f"volume '{nifti_path}': expected a NIfTI file, could not read "
            f"it ({error}).") from None


def load_grid(nifti_path):
    """Shape (3 int) and voxel-to-RAS mm affine of a NIfTI volume."""
    image = _load_image(nifti_path)
    if not 3 <= len(image.shape) <= 4:
        raise DwiMLUserError(
            f"volume '{nifti_path}': expected a 3-D or 4-D volume, found "
            f"shape {image.shape}.")
    return tuple(int(size) for size in image.shape[:3]), \
        np.asarray(image.affine, dtype=np.float64)


def load_label_volume(nifti_path):
    """Integer labels (X, Y, Z) of a NIfTI volume, and its affine (see
    :func:`~dwi_ml.data.hdf5.connectivity.read_label_volume`)."""
    return read_label_volume(nifti_path, f"labels '{nifti_path}'")


def load_tractogram_vox_corner(path, nifti_path, warn_outside=True):
    """Load a tractogram on the grid of a NIfTI, in voxel space, corner origin.

    Points outside the grid are kept (dipy's bounding-box check is off):
    a score counts them as outside. NaN or infinite coordinates are
    refused: no distance, voxel or length is defined for them.

    Parameters
    ----------
    path : str
        A .trk, .tck or .trx file.
    nifti_path : str
        The NIfTI whose grid (shape, affine) the tractogram is loaded on.
    warn_outside : bool
        Warn when most points lie outside the grid. False where the caller
        warns itself (the scoring script: score_tractogram counts them).

    Returns
    -------
    dipy StatefulTractogram
        In ``Space.VOX``, ``Origin.TRACKVIS``.
    """
    check_tractogram_extension(path, "tractogram")
    # dipy's load_tractogram would log an error and return False.
    refuse_upper_case_tractogram(path, "tractogram")
    _check_same_grid(path, nifti_path)
    # A .trk/.trx is read through its own header, checked above: dipy's
    # check would also compare the NIfTI's pixdim, which follows its qform.
    has_grid = tractogram_extension(path) != ".tck"
    try:
        sft = load_tractogram(path, "same" if has_grid else nifti_path,
                              bbox_valid_check=False)  # RAS mm, centre
        if has_grid:
            sft = StatefulTractogram(
                sft.streamlines, nifti_path, Space.RASMM,
                origin=Origin.NIFTI, data_per_point=sft.data_per_point,
                data_per_streamline=sft.data_per_streamline)
    except Exception as error:  # dipy and nibabel raise many kinds
        raise DwiMLUserError(
            f"tractogram '{path}': could not read it with the grid of "
            f"'{nifti_path}' ({error}).") from None
    sft.to_vox()
    sft.to_corner()
    _check_finite_points(sft.streamlines, path)
    if warn_outside:
        _warn_if_mostly_outside(sft, path, nifti_path)
    return sft


def load_tractogram_for_connectivity(path, nifti_path):
    """Load a tractogram to count its streamlines between the nodes of a
    NIfTI's grid (:func:`load_tractogram_vox_corner`).

    Endpoints outside the grid are kept (tracking may stop just past its
    border), but a tractogram whose endpoints all lie outside is refused,
    naming both files: its matrix would only count where the volume's
    border or background catches them. Warns, in one line, when most of its
    points lie outside the grid, or when it holds no streamline (an empty
    tracking result: its matrix is all zeros).

    Returns
    -------
    dipy StatefulTractogram
        In ``Space.VOX``, ``Origin.TRACKVIS``.
    """
    sft = load_tractogram_vox_corner(path, nifti_path, warn_outside=False)
    endpoints_in_volume(sft.streamlines,
                        tuple(int(size) for size in sft.dimensions),
                        f"tractogram '{path}'", f"'{nifti_path}'")
    _warn_if_mostly_outside(sft, path, nifti_path)
    if len(sft) == 0:
        logger.warning("tractogram '%s' holds no streamline: the matrix is "
                       "all zeros.", path)
    return sft


def _warn_if_mostly_outside(sft, path, nifti_path):
    """Warn when most points lie outside the grid: a .tck (no header) in
    another space than the NIfTI's would otherwise score near 0 silently.
    Tracked streamlines may end just outside the grid: a few are normal."""
    points = np.reshape(compact(sft.streamlines)[0], (-1, 3))
    if not len(points):
        return
    dims = np.asarray(sft.dimensions, dtype=np.float64)
    outside = np.count_nonzero(np.any((points < 0) | (points > dims), axis=1))
    if outside > MAX_SHARE_OUTSIDE_GRID * len(points):
        logger.warning(
            "tractogram '%s': %d of its %d points (%.0f %%) lie outside the "
            "grid of '%s'; is it in that volume's space?", path, outside,
            len(points), 100 * outside / len(points), nifti_path)


def _check_finite_points(streamlines, path):
    data, _, lengths = compact(streamlines)
    bad_points = ~np.all(np.isfinite(np.reshape(data, (-1, 3))), axis=1)
    if not bad_points.any():
        return
    nb_streamlines = int(np.count_nonzero(
        streamlines_with_flagged_points(bad_points, lengths)))
    raise DwiMLUserError(
        f"tractogram '{path}': found {np.count_nonzero(bad_points)} "
        f"point(s) with NaN or Inf coordinates in {nb_streamlines} "
        "streamline(s); expected finite points only.")


def _check_same_grid(path, nifti_path):
    """Refuse a .trk/.trx made on another grid than the NIfTI's.

    dipy's load_tractogram would log errors and return False instead of a
    tractogram. A .tck has no grid: it is read in the NIfTI's space.
    """
    if tractogram_extension(path) == ".tck":
        return
    try:
        found = reference_info(path)
    except DwiMLUserError:
        raise
    except Exception as error:  # dipy and nibabel raise many kinds
        raise DwiMLUserError(
            f"tractogram '{path}': cannot read its header; the file is "
            f"truncated or corrupt ({type(error).__name__}: "
            f"{one_line(error)}).") from None
    difference = grid_difference(found, reference_info(nifti_path),
                                 nifti_path)
    if difference is not None:
        raise DwiMLUserError(
            f"tractogram '{path}': {difference}; expected a tractogram of "
            "the same subject and space as the volume.")


def bundle_labels_of(sft, key, path):
    """Bundle labels of a tractogram, and the bundles' names if it has some.

    ``data_per_streamline[key]``; for a .trx file without that key, ``key``
    ``'groups'`` reads its groups instead (:func:`trx_group_labels`).

    Returns
    -------
    labels : np.ndarray (N,) or (N, 1)
    names : dict of int to str, or None
    """
    if key in sft.data_per_streamline:
        return np.asarray(sft.data_per_streamline[key]), None
    is_trx = tractogram_extension(path) == ".trx"
    if key == TRX_GROUPS_KEY and is_trx:
        return trx_group_labels(path, len(sft))
    found = sorted(sft.data_per_streamline.keys())
    raise DwiMLUserError(
        f"reference '{path}': expected data_per_streamline '{key}' "
        f"holding bundle labels{' (or groups)' if is_trx else ''}, found "
        f"keys {found}.")


def trx_group_labels(path, nb_streamlines):
    """Bundle labels from a .trx file's groups, one group per streamline.

    Group ``i`` in the sorted order of the group names is label ``i``.

    Returns
    -------
    labels : np.ndarray of int64, shape (N,)
    names : dict of int to str
        The group name of each label.

    Raises
    ------
    DwiMLUserError
        When the file has no groups, a streamline is in two groups or in
        none, or a group names a streamline the file does not have.
    """
    from trx.trx_file_memmap import load as load_trx
    trx = load_trx(path)
    try:
        groups = {name: np.asarray(ids, dtype=np.int64)
                  for name, ids in trx.groups.items()}
    finally:
        trx.close()
    if not groups:
        raise DwiMLUserError(
            f"reference '{path}': expected groups holding the bundles "
            "(--bundle_key groups), found none.")
    labels = np.full(nb_streamlines, -1, dtype=np.int64)
    names = dict(enumerate(sorted(groups)))
    for label, name in names.items():
        ids = groups[name]
        if ids.size and (ids.min() < 0 or ids.max() >= nb_streamlines):
            raise DwiMLUserError(
                f"reference '{path}': group '{name}': expected streamline "
                f"indices in [0, {nb_streamlines}), found {ids.max()}.")
        taken = ids[labels[ids] >= 0]
        if taken.size:
            raise DwiMLUserError(
                f"reference '{path}': expected each streamline in one group, "
                f"found streamline {taken[0]} in groups "
                f"'{names[labels[taken[0]]]}' and '{name}'.")
        labels[ids] = label
    missing = np.flatnonzero(labels < 0)
    if missing.size:
        raise DwiMLUserError(
            f"reference '{path}': expected each streamline in one group, "
            f"found {missing.size} in none (streamline {missing[0]} first).")
    return labels, names


def check_npy_extension(path, what="output"):
    """Refuse a matrix path that np.save/np.load would not treat as .npy."""
    check_extension(path, (".npy",), what)


def add_matrix_output_args(parser):
    """Add OUT_MATRIX, ``--binary``, ``-f`` and ``-v`` (connectivity
    matrix scripts)."""
    parser.add_argument("out_matrix", help="Output .npy matrix.")
    parser.add_argument("--binary", action="store_true",
                        help="Save whether each pair is connected (bool) "
                             "instead of streamline counts.")
    add_output_args(parser)


def check_matrix_output(args):
    """Refuse an OUT_MATRIX that is not .npy, or exists without ``-f``."""
    check_npy_extension(args.out_matrix)
    check_output_free(args.out_matrix, args.overwrite)


def available_memory_bytes():
    """MemAvailable of /proc/meminfo (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_matrix_fits(nb_nodes, where):
    """Refuse, in one line, an nb_nodes x nb_nodes count matrix (int64, and
    a bool copy with --binary) larger than the memory available: the
    system would otherwise kill the script with no message."""
    needed = 9 * nb_nodes ** 2
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise DwiMLUserError(
            f"{where}: expected a connectivity matrix that fits in memory, "
            f"found {nb_nodes} nodes: {nb_nodes} x {nb_nodes} counts need "
            f"{needed / 2 ** 30:.1f} GiB, {available / 2 ** 30:.1f} GiB are "
            "available.")


def is_count(name):
    """Whether the score ``name`` is a count (``nb_*``, ``*_nb_*``, VB,
    IB), not a share or a length."""
    return name.startswith("nb_") or "_nb_" in name or name in ("VB", "IB")


def _whole_count(name, value):
    return (value is not None and is_count(name)
            and float(value).is_integer())


def format_scores(scores):
    """One line per score, name then value: counts as integers, shares (and
    counts that are not whole, e.g. sums of weights) to 4 decimals, and
    undefined scores (None, e.g. a share of 0 / 0) as n/a."""
    width = max((len(name) for name in scores), default=0)
    lines = []
    for name, value in scores.items():
        if value is None:
            shown = "n/a"
        elif _whole_count(name, value):
            shown = f"{value:.0f}"
        else:
            shown = f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def scores_for_json(scores):
    """``scores`` with their whole counts as ints (the scoring functions
    return floats, for the monitors' logs): ``"nb_tracked": 1524``, not
    ``1524.0``; undefined scores (None) stay None (JSON null)."""
    return {name: int(value) if _whole_count(name, value) else value
            for name, value in scores.items()}
