"""Connectivity matrices of tractograms, and how well one matches another.

A connectivity matrix counts streamlines per pair of nodes (labels of a
parcellation, or blocs of the volume) reached by their two endpoints. As in
the reference dwi_ml (its HDF5 ``connectivity_matrix``), the matrix is
upper-triangular: a streamline from node ``i`` to node ``j`` adds one at
``[min(i, j), max(i, j)]``, so its sum is the number of streamlines.

Every function takes streamlines in voxel space with a corner origin (dipy
``Space.VOX``, ``Origin.TRACKVIS``): an endpoint ``p`` lies in voxel
``floor(p)``. A plain list of ``(n, 3)`` arrays is read as an
ArraySequence.
"""
import numpy as np
from nibabel.streamlines import ArraySequence

from dwi_ml.data.hdf5.connectivity import (  # noqa: F401 (re-exported)
    check_nb_blocs_fit,
    label_nodes,
)
from dwi_ml.data.packed import packed_arrays
from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.voxel_masks import (
    OUTSIDE,
    point_voxel_indices,
    streamline_endpoints,
)

BACKGROUND = 0


def parse_nb_blocs(nb_blocs):
    """Return the number of blocs per axis (3 ints) from 1 or 3 values."""
    nb_blocs = [int(n) for n in np.atleast_1d(nb_blocs)]
    if len(nb_blocs) == 1:
        nb_blocs = nb_blocs * 3
    if len(nb_blocs) != 3 or min(nb_blocs) < 1:
        raise DwiMLUserError(
            f"nb_blocs: expected 1 or 3 integers >= 1, found {nb_blocs}.")
    return tuple(nb_blocs)


def connectivity_matrix(start_nodes, end_nodes, nb_nodes, binary=False):
    """Upper-triangular count of streamlines per pair of nodes.

    Parameters
    ----------
    start_nodes, end_nodes : np.ndarray, shape (N,), int
        Node of each streamline's first and last point, in
        ``[0, nb_nodes)``; other nodes are refused.
    nb_nodes : int
    binary : bool
        Return whether each pair is connected (bool) instead of counts.

    Returns
    -------
    np.ndarray, shape (nb_nodes, nb_nodes), int64 (or bool)
    """
    nb_nodes = check_int("nb_nodes", nb_nodes, 0, "connectivity_matrix")
    start_nodes = np.asarray(start_nodes, dtype=np.int64)
    end_nodes = np.asarray(end_nodes, dtype=np.int64)
    if start_nodes.ndim != 1 or start_nodes.shape != end_nodes.shape:
        raise DwiMLUserError(
            f"connectivity_matrix arguments start_nodes, end_nodes: expected "
            f"two (N,) arrays of the same length, found shapes "
            f"{start_nodes.shape} and {end_nodes.shape}.")
    for name, nodes in (("start_nodes", start_nodes),
                        ("end_nodes", end_nodes)):
        # np.bincount would put a node >= nb_nodes in another cell.
        bad = np.flatnonzero((nodes < 0) | (nodes >= nb_nodes))
        if len(bad):
            raise DwiMLUserError(
                f"connectivity_matrix argument {name}: expected nodes in "
                f"[0, {nb_nodes}), found {nodes[bad[0]]} (streamline "
                f"{bad[0]}, {len(bad)} out of range in all).")
    low = np.minimum(start_nodes, end_nodes)
    high = np.maximum(start_nodes, end_nodes)
    counts = np.bincount(low * nb_nodes + high, minlength=nb_nodes * nb_nodes)
    matrix = counts.reshape(nb_nodes, nb_nodes)
    return matrix > 0 if binary else matrix


def endpoint_labels(streamlines_vox, label_volume):
    """Label of the voxel of each streamline's first and last point.

    Endpoints outside the volume get ``BACKGROUND`` (0), like those in
    unlabelled voxels; a tractogram whose endpoints are all outside (another
    grid, see :func:`endpoints_in_volume`), or one with a NaN endpoint, is
    refused.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin.
    label_volume : np.ndarray, shape (X, Y, Z), int >= 0

    Returns
    -------
    start_labels, end_labels : np.ndarray, shape (N,), int64
    """
    label_volume = check_label_volume(label_volume)
    return _labels_of_voxels(
        label_volume, endpoints_in_volume(streamlines_vox,
                                          label_volume.shape)[2])


def endpoints_in_volume(streamlines_vox, shape,
                        tractogram_name="streamlines_vox", volume_name=None):
    """First and last points of each streamline, and their voxels, refusing
    a tractogram whose endpoints all lie outside the volume.

    Some endpoints outside are normal (tracking may stop just past the
    border), so they are kept; all of them outside means that the
    streamlines are not on this grid. Empty streamlines are not counted.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence or list of (n, 3) arrays
        Voxel space, corner origin.
    shape : tuple of 3 int
        The volume's size, voxels.
    tractogram_name : str
        Names the streamlines in the error (e.g. ``"tractogram 'a.trk'"``).
    volume_name : str or None
        Names the volume in the error (e.g. ``"'labels.nii.gz'"``).

    Returns
    -------
    heads, tails : np.ndarray, shape (N, 3), float64
        See :func:`checked_endpoints`.
    voxels : tuple of 2 np.ndarray, shape (N,), int64
        Flat voxel index of the heads and of the tails, or ``OUTSIDE``.
    """
    heads, tails, kept = checked_endpoints(streamlines_vox)
    voxels = tuple(point_voxel_indices(points, shape)
                   for points in (heads, tails))
    nb_endpoints = 2 * int(kept.sum())
    nb_outside = sum(int(np.count_nonzero(flat[kept] == OUTSIDE))
                     for flat in voxels)
    if nb_endpoints and nb_outside == nb_endpoints:
        volume = (f"of shape {tuple(shape)} (voxel space, corner origin)"
                  if volume_name is None
                  else f"of {volume_name} (shape {tuple(shape)})")
        raise DwiMLUserError(
            f"{tractogram_name}: expected endpoints inside the volume "
            f"{volume}, found {nb_outside} of {nb_endpoints} outside; the "
            f"streamlines are probably not in that volume's space.")
    return heads, tails, voxels


def _labels_of_voxels(label_volume, voxels):
    """Labels at flat voxel indices; BACKGROUND at OUTSIDE."""
    flat_labels = np.asarray(label_volume, dtype=np.int64).ravel()
    results = []
    for flat in voxels:
        labels = np.full(len(flat), BACKGROUND, dtype=np.int64)
        labels[flat != OUTSIDE] = flat_labels[flat[flat != OUTSIDE]]
        results.append(labels)
    return tuple(results)


def connectivity_from_labels(streamlines_vox, label_volume, binary=False):
    """Connectivity between the labels of a parcellation.

    Rows and columns are the volume's labels in increasing order
    (:func:`~dwi_ml.data.hdf5.connectivity.label_nodes`), the background
    (label 0) included when present: the reference dwi_ml's matrices.
    Endpoints outside the volume count as background; where the volume has
    no background, a streamline with such an endpoint joins no node and is
    not counted.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin, on the grid of ``label_volume``. When
        every endpoint of a non-empty tractogram lies outside the volume,
        it is refused: it is on another grid.
    label_volume : np.ndarray, shape (X, Y, Z), integer values >= 0
        Whole floats (3.0) are accepted, fractional ones (7.5) refused.
    binary : bool

    Returns
    -------
    np.ndarray, square (as many rows as distinct labels), int64 (or bool)
    """
    label_volume = check_label_volume(label_volume)
    nodes = label_nodes(label_volume)
    start_labels, end_labels = endpoint_labels(streamlines_vox, label_volume)
    start_nodes, end_nodes = (np.searchsorted(nodes, labels)
                              for labels in (start_labels, end_labels))
    # Only BACKGROUND (outside the volume) can be missing from the nodes.
    known = ((start_nodes < len(nodes)) & (end_nodes < len(nodes)))
    known[known] = ((nodes[start_nodes[known]] == start_labels[known])
                    & (nodes[end_nodes[known]] == end_labels[known]))
    return connectivity_matrix(start_nodes[known], end_nodes[known],
                               len(nodes), binary)


def check_label_volume(label_volume):
    """Return ``label_volume`` as an array, refusing anything but a 3-D
    volume of integer labels >= 0 (whole floats included)."""
    label_volume = np.asarray(label_volume)
    if label_volume.ndim != 3:
        raise DwiMLUserError(
            f"label_volume: expected a 3-D (X, Y, Z) volume of labels, found "
            f"shape {label_volume.shape}.")
    if not (np.issubdtype(label_volume.dtype, np.integer)
            or label_volume.dtype == bool):
        fractional = label_volume[~(np.floor(label_volume) == label_volume)]
        if fractional.size:
            raise DwiMLUserError(
                f"label_volume: expected integer labels, found "
                f"{fractional.size} voxel(s) of non-integer value, e.g. "
                f"{fractional.flat[0]}.")
    if label_volume.size and label_volume.min() < 0:
        raise DwiMLUserError(
            f"label_volume: expected labels >= 0, found {label_volume.min()}.")
    return label_volume


def checked_endpoints(streamlines_vox):
    """First and last point of each streamline, refusing a non-empty
    streamline whose endpoint is NaN or infinite.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence or list of (n, 3) arrays

    Returns
    -------
    heads, tails : np.ndarray, shape (N, 3), float64
        NaN for empty streamlines (see
        :func:`~dwi_ml.tracking.voxel_masks.streamline_endpoints`).
    kept : np.ndarray, shape (N,), bool
        The non-empty streamlines.
    """
    if not isinstance(streamlines_vox, ArraySequence):
        streamlines_vox = ArraySequence(streamlines_vox)
    data, _, lengths = packed_arrays(streamlines_vox)
    if data.ndim != 2 or data.shape[1] != 3:
        raise DwiMLUserError(
            f"streamlines_vox: expected (n, 3) points, found points of "
            f"shape {data.shape[1:]}.")
    heads, tails = streamline_endpoints(streamlines_vox)
    kept = lengths > 0
    bad = np.flatnonzero(kept & ~np.all(np.isfinite(heads)
                                        & np.isfinite(tails), axis=1))
    if len(bad):
        raise DwiMLUserError(
            f"streamlines_vox: expected finite endpoints, found NaN or "
            f"infinite ones in {len(bad)} streamline(s), streamline "
            f"{bad[0]} first.")
    return heads, tails, kept


def point_blocs(points_vox, shape, nb_blocs):
    """Bloc of each point of a volume cut into a grid of blocs.

    The volume is cut into ``nb_blocs[d]`` equal parts along each axis
    ``d``; a point at ``x`` (voxels) along that axis is in part
    ``floor(x * nb_blocs[d] / shape[d])``, clipped to the first and last
    parts, so points outside the volume count in the bloc at its border.
    Blocs are numbered in C order: ``(a * nb_blocs[1] + b) * nb_blocs[2] +
    c``, as in the reference dwi_ml.

    Parameters
    ----------
    points_vox : np.ndarray, shape (P, 3)
        Voxel space, corner origin; NaN points (the endpoints of an empty
        streamline) go to bloc 0.
    shape : tuple of 3 int
    nb_blocs : int or tuple of 3 int

    Returns
    -------
    np.ndarray, shape (P,), int64
    """
    nb_blocs = parse_nb_blocs(nb_blocs)
    points = np.nan_to_num(np.asarray(points_vox, dtype=np.float64), nan=0.0)
    return np.ravel_multi_index(_parts(points, shape, nb_blocs).T, nb_blocs)


def _parts(coordinates_vox, sizes, nb_parts):
    """Part ``floor(x * n / S)`` of each coordinate ``x`` along an axis of
    ``S`` voxels cut in ``n`` parts, clipped to ``[0, n - 1]``; ``sizes``
    and ``nb_parts`` broadcast against the last axis of
    ``coordinates_vox``. Returns int64."""
    nb_parts = np.asarray(nb_parts, dtype=np.int64)
    scale = nb_parts / np.asarray(sizes, dtype=np.float64)
    parts = np.clip(np.floor(coordinates_vox * scale), 0, nb_parts - 1)
    return parts.astype(np.int64)


def bloc_label_volume(shape, nb_blocs):
    """The bloc of each voxel: a label volume whose label ``i`` is row ``i``
    of :func:`connectivity_from_blocs`' matrix.

    Each voxel gets the bloc of its centre (:func:`point_blocs`). When an
    axis of ``S`` voxels is not a multiple of its ``n`` blocs, some voxels
    straddle two blocs: points in them count in either, by their position.

    Parameters
    ----------
    shape : tuple of 3 int
    nb_blocs : int or tuple of 3 int

    Returns
    -------
    np.ndarray, shape ``shape``, int32
        Labels ``0`` to ``prod(nb_blocs) - 1``.
    """
    shape = tuple(int(size) for size in shape)
    nb_blocs = parse_nb_blocs(nb_blocs)
    # A voxel's bloc depends on each axis alone: three 1-D arrays of parts
    # broadcast into the labels, not the float64 centres of every voxel.
    first, second, third = (
        _parts(np.arange(size, dtype=np.float64) + 0.5, size, n).astype(
            np.int32) for size, n in zip(shape, nb_blocs))
    # C order, as point_blocs numbers the blocs.
    plane = (first[:, None] * np.int32(nb_blocs[1]) + second) \
        * np.int32(nb_blocs[2])
    return plane[:, :, None] + third


def endpoint_blocs(streamlines_vox, shape, nb_blocs):
    """Bloc of each streamline's first and last point (:func:`point_blocs`).

    Endpoints outside the volume count in the blocs at its border; a
    tractogram whose endpoints are all outside is refused
    (:func:`endpoints_in_volume`).

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin.
    shape : tuple of 3 int
    nb_blocs : tuple of 3 int

    Returns
    -------
    start_blocs, end_blocs : np.ndarray, shape (N,), int64
    """
    return tuple(point_blocs(points, shape, nb_blocs)
                 for points in endpoints_in_volume(streamlines_vox, shape)[:2])


def connectivity_from_blocs(streamlines_vox, shape, nb_blocs, binary=False):
    """Connectivity between the blocs of a volume cut into a grid.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin. An empty streamline counts in bloc 0;
        a NaN or infinite endpoint of another is refused. Endpoints
        outside the volume count in its border blocs; when every endpoint
        of a non-empty tractogram lies outside, it is refused: it is on
        another grid.
    shape : tuple of 3 int
        Volume size, voxels.
    nb_blocs : int or tuple of 3 int
        Blocs per axis; the matrix has ``prod(nb_blocs)`` rows.
    binary : bool

    Returns
    -------
    np.ndarray, square, int64 (or bool)
    """
    nb_blocs = parse_nb_blocs(nb_blocs)
    start_blocs, end_blocs = endpoint_blocs(streamlines_vox, shape, nb_blocs)
    return connectivity_matrix(start_blocs, end_blocs,
                               int(np.prod(nb_blocs)), binary)


def fold_upper(matrix):
    """Upper-triangular form of a square connectivity matrix.

    A symmetric matrix counts each streamline twice off the diagonal; an
    upper-triangular one once. Both give the upper-triangular one: entries
    below the diagonal are moved above it, unless the matrix is symmetric,
    in which case they are dropped.
    """
    matrix = np.asarray(matrix)
    if matrix.dtype == bool:
        matrix = matrix.astype(np.int64)
    upper = np.triu(matrix)
    if np.array_equal(matrix, matrix.T):
        return upper
    return upper + np.triu(matrix.T, k=1)


def score_connectivity(predicted, true):
    """Compare a predicted connectivity matrix with the true one.

    Both are square matrices of the same shape, counts or booleans,
    upper-triangular or symmetric (see :func:`fold_upper`). A connection is
    a pair of nodes with a non-zero entry.

    Returns
    -------
    dict of str to float or None
        ``true_connections_found``: share of the true connections that the
        prediction has (recall); ``predicted_connections_true``: share of the
        predicted connections that are true (precision);
        ``connections_f1``: ``2 found / (nb true + nb predicted)``;
        ``streamlines_in_true_connections``: share of the predicted
        streamlines (counts) that join a true connection (1 minus the
        reference dwi_ml's "connectivity loss"); ``nb_true_connections``,
        ``nb_predicted_connections``, ``nb_predicted_streamlines``. A share
        whose denominator is 0 is undefined (0 / 0), None: recall without
        true connections, precision without predicted ones, F1 without
        either, the streamlines' share without predicted streamlines.
    """
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.ndim != 2 or predicted.shape[0] != predicted.shape[1] \
            or predicted.shape != true.shape:
        raise DwiMLUserError(
            f"matrices: expected two square matrices of the same shape, "
            f"found {predicted.shape} (predicted) and {true.shape} (true).")
    predicted, true = fold_upper(predicted), fold_upper(true)
    if np.any(predicted < 0) or np.any(true < 0):
        raise DwiMLUserError(
            "matrices: expected counts >= 0, found negative entries.")
    is_predicted, is_true = predicted > 0, true > 0
    nb_found = int(np.count_nonzero(is_predicted & is_true))
    nb_true = int(np.count_nonzero(is_true))
    nb_predicted = int(np.count_nonzero(is_predicted))
    nb_streamlines = float(predicted.sum())

    def share(count, total):
        return float(count) / total if total else None

    return {
        "true_connections_found": share(nb_found, nb_true),
        "predicted_connections_true": share(nb_found, nb_predicted),
        "connections_f1": share(2 * nb_found, nb_true + nb_predicted),
        "streamlines_in_true_connections": share(
            predicted[is_true].sum(), nb_streamlines),
        "nb_true_connections": float(nb_true),
        "nb_predicted_connections": float(nb_predicted),
        "nb_predicted_streamlines": nb_streamlines,
    }
