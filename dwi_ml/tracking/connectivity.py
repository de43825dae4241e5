"""Connectivity matrices of tractograms, and how well one matches another.

A connectivity matrix counts streamlines per pair of nodes (labels of a
parcellation, or blocs of the volume) reached by their two endpoints. As in
the reference dwi_ml (its HDF5 ``connectivity_matrix``), the matrix is
upper-triangular: a streamline from node ``i`` to node ``j`` adds one at
``[min(i, j), max(i, j)]``, so its sum is the number of streamlines.

Every function takes streamlines in voxel space with a corner origin (dipy
``Space.VOX``, ``Origin.TRACKVIS``): an endpoint ``p`` lies in voxel
``floor(p)``.
"""
import numpy as np

from dwi_ml.data.hdf5.connectivity import (  # noqa: F401 (re-exported)
    check_nb_blocs_fit,
    label_nodes,
)
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
        ``[0, nb_nodes)``.
    nb_nodes : int
    binary : bool
        Return whether each pair is connected (bool) instead of counts.

    Returns
    -------
    np.ndarray, shape (nb_nodes, nb_nodes), int64 (or bool)
    """
    start_nodes = np.asarray(start_nodes, dtype=np.int64)
    end_nodes = np.asarray(end_nodes, dtype=np.int64)
    low = np.minimum(start_nodes, end_nodes)
    high = np.maximum(start_nodes, end_nodes)
    counts = np.bincount(low * nb_nodes + high, minlength=nb_nodes * nb_nodes)
    matrix = counts.reshape(nb_nodes, nb_nodes)
    return matrix > 0 if binary else matrix


def endpoint_labels(streamlines_vox, label_volume):
    """Label of the voxel of each streamline's first and last point.

    Endpoints outside the volume get ``BACKGROUND`` (0), like those in
    unlabelled voxels.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin.
    label_volume : np.ndarray, shape (X, Y, Z), int >= 0

    Returns
    -------
    start_labels, end_labels : np.ndarray, shape (N,), int64
    """
    flat_labels = np.asarray(label_volume, dtype=np.int64).ravel()
    results = []
    for points in streamline_endpoints(streamlines_vox):
        voxels = point_voxel_indices(points, label_volume.shape)
        labels = np.full(len(voxels), BACKGROUND, dtype=np.int64)
        labels[voxels != OUTSIDE] = flat_labels[voxels[voxels != OUTSIDE]]
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
        Voxel space, corner origin, on the grid of ``label_volume``.
    label_volume : np.ndarray, shape (X, Y, Z), int >= 0
    binary : bool

    Returns
    -------
    np.ndarray, square (as many rows as distinct labels), int64 (or bool)
    """
    label_volume = np.asarray(label_volume)
    if label_volume.size and label_volume.min() < 0:
        raise DwiMLUserError(
            f"label_volume: expected labels >= 0, found {label_volume.min()}.")
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
    nb_blocs = np.asarray(parse_nb_blocs(nb_blocs), dtype=np.int64)
    scale = nb_blocs / np.asarray(shape, dtype=np.float64)
    points = np.nan_to_num(np.asarray(points_vox, dtype=np.float64), nan=0.0)
    parts = np.clip(np.floor(points * scale), 0, nb_blocs - 1)
    return np.ravel_multi_index(parts.astype(np.int64).T, tuple(nb_blocs))


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
    centres = np.indices(shape, dtype=np.float64).reshape(3, -1).T + 0.5
    return point_blocs(centres, shape, nb_blocs).astype(np.int32).reshape(
        shape)


def endpoint_blocs(streamlines_vox, shape, nb_blocs):
    """Bloc of each streamline's first and last point (:func:`point_blocs`).

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
                 for points in streamline_endpoints(streamlines_vox))


def connectivity_from_blocs(streamlines_vox, shape, nb_blocs, binary=False):
    """Connectivity between the blocs of a volume cut into a grid.

    Parameters
    ----------
    streamlines_vox : nibabel ArraySequence
        Voxel space, corner origin.
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
    dict of str to float
        ``true_connections_found``: share of the true connections that the
        prediction has (recall); ``predicted_connections_true``: share of the
        predicted connections that are true (precision);
        ``connections_f1``: their F1 score; ``streamlines_in_true_connections``:
        share of the predicted streamlines (counts) that join a true
        connection (1 minus the reference dwi_ml's "connectivity loss");
        ``nb_true_connections``, ``nb_predicted_connections``,
        ``nb_predicted_streamlines``. Shares are 0 when their denominator is.
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
        return float(count) / total if total else 0.0

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
