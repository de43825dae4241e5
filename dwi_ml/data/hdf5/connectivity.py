"""Connectivity matrices of streamline groups, in the reference's layout.

A streamline group of the creation config may carry the subject's known
connectivity, used to score generated streamlines::

    "streamlines": {"type": "streamlines", "files": ["bundles/*.trk"],
                    "connectivity_matrix": "connectivity.npy",
                    "connectivity_nb_blocs": [4, 4, 4]}

``connectivity_matrix`` is a square ``.npy`` file (counts or booleans),
relative to the subject folder, with exactly one of:

- ``connectivity_nb_blocs``: an int or 3 ints, the volume split into that
  many equal blocs per axis (nodes numbered as in
  :func:`dwi_ml.tracking.connectivity.endpoint_blocs`); the matrix is then
  ``prod(nb_blocs)`` square;
- ``connectivity_labels``: a NIfTI label volume on the group's grid
  (integers >= 0, 0 the background). The matrix has one row per distinct
  label of the volume, in increasing order, as the reference dwi_ml's
  (:func:`matrix_on_label_nodes` also takes our older matrices, one row
  per label value).

The HDF5 group then holds, as the reference dwi_ml writes them: the dataset
``connectivity_matrix`` (bool, M x M), the attr ``connectivity_matrix_type``
(``'from_blocs'`` or ``'from_labels'``), and the attr
``connectivity_nb_blocs`` (3 ints) or the dataset
``connectivity_label_volume`` (int32).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from dwi_ml.data.hdf5.layout import decode_str
from dwi_ml.data.hdf5.subjects import one_line
from dwi_ml.data.hdf5.tractograms import reference_info
from dwi_ml.data.hdf5.volumes import AFFINE_TOLERANCE_MM
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.safe_load import load_npy_file

CONNECTIVITY_KEYS = ("connectivity_matrix", "connectivity_nb_blocs",
                     "connectivity_labels")
FROM_BLOCS = "from_blocs"
FROM_LABELS = "from_labels"


@dataclass(frozen=True)
class ConnectivityConfig:
    """A streamline group's connectivity entries of the creation config."""
    matrix_file: str
    nb_blocs: Optional[Tuple[int, int, int]] = None
    labels_file: Optional[str] = None


@dataclass(frozen=True)
class Connectivity:
    """A subject's known connectivity for one streamline group.

    Attributes
    ----------
    matrix : np.ndarray of bool, (M, M)
    matrix_type : str
        'from_blocs' or 'from_labels'.
    nb_blocs : tuple of 3 int or None
        With 'from_blocs'.
    label_volume : np.ndarray of int, (X, Y, Z), or None
        With 'from_labels'.
    """
    matrix: np.ndarray
    matrix_type: str
    nb_blocs: Optional[Tuple[int, int, int]] = None
    label_volume: Optional[np.ndarray] = None


def parse_connectivity_config(entry, where):
    """The ConnectivityConfig of a streamline group's config entry, or None.

    Raises
    ------
    DwiMLUserError
        Blocs or labels without a matrix, both or neither with a matrix, a
        bad number of blocs or a file name that is not relative.
    """
    matrix_file = entry.get("connectivity_matrix")
    has_blocs = "connectivity_nb_blocs" in entry
    has_labels = "connectivity_labels" in entry
    if matrix_file is None:
        if has_blocs or has_labels:
            raise DwiMLUserError(
                f"{where}: 'connectivity_nb_blocs' and 'connectivity_labels' "
                "need 'connectivity_matrix'.")
        return None
    if has_blocs == has_labels:
        raise DwiMLUserError(
            f"{where}: 'connectivity_matrix' needs exactly one of "
            "'connectivity_nb_blocs' and 'connectivity_labels', found "
            f"{'both' if has_blocs else 'neither'}.")
    files = [("connectivity_matrix", matrix_file)]
    if has_labels:
        files.append(("connectivity_labels", entry["connectivity_labels"]))
    for key, name in files:
        if not isinstance(name, str) or not name or name.startswith("/"):
            raise DwiMLUserError(
                f"{where}: '{key}' must be a file name relative to the "
                f"subject folder, found {name!r}.")
    if has_labels:
        return ConnectivityConfig(matrix_file,
                                  labels_file=entry["connectivity_labels"])
    return ConnectivityConfig(matrix_file, nb_blocs=_parse_nb_blocs(
        entry["connectivity_nb_blocs"], where))


def _parse_nb_blocs(value, where):
    values = [value] if isinstance(value, int) else value
    valid = (isinstance(values, list) and len(values) in (1, 3)
             and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                     for v in values))
    if not valid:
        raise DwiMLUserError(
            f"{where}: 'connectivity_nb_blocs' must be a positive integer or "
            f"a list of 3, found {value!r}.")
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def check_nb_blocs_fit(nb_blocs, shape, what="nb_blocs"):
    """Refuse more blocs than voxels along an axis (a bloc holds at least
    one voxel); ``what`` starts the one-line error."""
    if any(nb > size for nb, size in zip(nb_blocs, shape)):
        raise DwiMLUserError(
            f"{what}: expected at most the volume's size along each axis "
            f"{list(shape)} (a bloc holds at least one voxel), found "
            f"{list(nb_blocs)}.")


def check_count_matrix(matrix, what):
    """Refuse a connectivity matrix that is not square, finite counts >= 0
    (or booleans); ``what`` names the file in the one-line error."""
    if not (np.issubdtype(matrix.dtype, np.integer)
            or np.issubdtype(matrix.dtype, np.floating)
            or matrix.dtype == bool):
        raise DwiMLUserError(
            f"{what}: expected numbers or booleans, found dtype "
            f"{matrix.dtype}.")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] \
            or matrix.size == 0:
        raise DwiMLUserError(
            f"{what}: expected a square 2-D array of at least one node, "
            f"found shape {matrix.shape}.")
    nb_not_finite = int(np.count_nonzero(~np.isfinite(matrix)))
    if nb_not_finite:
        raise DwiMLUserError(
            f"{what}: expected finite counts, found {nb_not_finite} NaN or "
            "infinite entries.")
    nb_negative = int(np.count_nonzero(matrix < 0))
    if nb_negative:
        raise DwiMLUserError(
            f"{what}: expected counts >= 0, found {nb_negative} negative "
            "entries.")


def load_connectivity(config, matrix_path, labels_path, shape, where,
                      affine=None):
    """Read and check a subject's connectivity files.

    Parameters
    ----------
    config : ConnectivityConfig
    matrix_path, labels_path : str or None
        The subject's files (labels_path with 'from_labels' only).
    shape : tuple of 3 int
        The streamline group's grid: the label volume's shape, and at
        most as many blocs along each axis.
    where : str
        Names the subject and group in errors.
    affine : np.ndarray (4, 4), optional
        The streamline group's voxel-to-RAS affine; the label volume's must
        match it (within dipy's header tolerance).

    Returns
    -------
    Connectivity
    """
    matrix = load_npy_file(matrix_path, f"{where}: connectivity matrix")
    check_count_matrix(
        matrix, f"{where}: connectivity matrix '{matrix_path}'")
    if config.nb_blocs is not None:
        check_nb_blocs_fit(config.nb_blocs, shape,
                           f"{where}: 'connectivity_nb_blocs'")
        nb_nodes = int(np.prod(config.nb_blocs))
        if matrix.shape[0] != nb_nodes:
            raise DwiMLUserError(
                f"{where}: connectivity matrix '{matrix_path}': expected "
                f"{nb_nodes} x {nb_nodes} for {list(config.nb_blocs)} blocs, "
                f"found {matrix.shape[0]} x {matrix.shape[1]}.")
        return Connectivity(matrix > 0, FROM_BLOCS, config.nb_blocs)
    what = f"{where}: connectivity labels '{labels_path}'"
    labels, labels_affine = read_label_volume(labels_path, what)
    if labels.shape != tuple(shape):
        raise DwiMLUserError(
            f"{what}: expected the streamline group's grid {tuple(shape)}, "
            f"found shape {labels.shape}.")
    if affine is not None and not np.allclose(
            labels_affine, affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise DwiMLUserError(
            f"{what}: expected the streamline group's affine "
            f"{np.round(affine, 4).tolist()}, found "
            f"{np.round(labels_affine, 4).tolist()}; endpoints would take "
            "the labels of other voxels.")
    labels = labels.astype(np.int32)
    matrix = matrix_on_label_nodes(
        matrix, labels, f"{where}: connectivity matrix '{matrix_path}'")
    return Connectivity(matrix > 0, FROM_LABELS, label_volume=labels)


def read_label_volume(path, what):
    """Integer labels (X, Y, Z) >= 0 of a NIfTI parcellation, and its
    affine; one-line errors start with ``what`` (names the file).

    A volume of shape (X, Y, Z, 1), as some tools write them, is read as
    3-D; scaled integers (``scl_slope``) that load as whole floats are
    integers.

    Returns
    -------
    labels : np.ndarray (X, Y, Z), int64
    affine : np.ndarray (4, 4), float64
    """
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many kinds
        raise DwiMLUserError(
            f"{what}: expected a NIfTI file, could not read it; the file is "
            f"missing, truncated or corrupt ({type(error).__name__}: "
            f"{one_line(error)}).") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    where = f"{what}: expected a 3-D volume of integers >= 0"
    if data.ndim != 3:
        raise DwiMLUserError(f"{where}, found shape {data.shape}.")
    nb_not_finite = int(np.count_nonzero(~np.isfinite(data)))
    if nb_not_finite:
        raise DwiMLUserError(f"{where}, found {nb_not_finite} NaN or "
                             "infinite value(s).")
    for wrong, kind in ((data != np.round(data), "non-integer"),
                        (data < 0, "negative")):
        if np.any(wrong):
            raise DwiMLUserError(
                f"{where}, found {kind} values such as "
                f"{', '.join(map(str, np.unique(data[wrong])[:3].tolist()))} "
                f"(dtype {data.dtype}).")
    return data.astype(np.int64), np.asarray(image.affine, dtype=np.float64)


def label_nodes(label_volume):
    """The nodes of a parcellation: its distinct labels, sorted.

    Row and column ``k`` of a matrix from labels are ``label_nodes(...)[k]``,
    as in the reference dwi_ml: labels absent from the volume have no row,
    and the background (0) is node 0 when the volume has some.

    Parameters
    ----------
    label_volume : np.ndarray, int >= 0

    Returns
    -------
    np.ndarray, shape (M,), the volume's dtype
    """
    return np.unique(np.asarray(label_volume))


def matrix_on_label_nodes(matrix, label_volume, where):
    """``matrix`` with one row per distinct label of ``label_volume``.

    A matrix from labels has a row per label present, in increasing order
    (the reference dwi_ml's, :func:`label_nodes`).
    Matrices indexed by label value (row ``k`` is label ``k``, ``largest
    label + 1`` rows: earlier dwi_ml versions) are converted by keeping the
    rows and columns of the labels present; they are the same matrix when
    every label from 0 to the largest is present. Matrices without the
    background (a row per label other than 0, as some versions of the
    reference make them) get an empty row and column for label 0: no
    connection ends in the background.

    Raises
    ------
    DwiMLUserError
        Any other number of rows.
    """
    nodes = label_nodes(label_volume)
    if len(matrix) == len(nodes):
        return matrix
    if len(nodes) and len(matrix) == int(nodes[-1]) + 1:
        absent = np.setdiff1d(np.arange(len(matrix)), nodes)
        lost = np.flatnonzero(np.asarray(matrix)[absent].any(axis=1)
                              | np.asarray(matrix)[:, absent].any(axis=0))
        if len(lost):
            raise DwiMLUserError(
                f"{where}: a row per label value, with connections on "
                f"label(s) {absent[lost][:5].tolist()} that the label volume "
                "does not have; was it made from another parcellation?")
        return matrix[np.ix_(nodes, nodes)]
    if len(nodes) and nodes[0] == 0 and len(matrix) == len(nodes) - 1:
        with_background = np.zeros((len(nodes), len(nodes)), matrix.dtype)
        with_background[1:, 1:] = matrix
        return with_background
    background = (f" (or {len(nodes) - 1} x {len(nodes) - 1} without label "
                  "0)" if len(nodes) > 1 and nodes[0] == 0 else "")
    raise DwiMLUserError(
        f"{where}: expected {len(nodes)} x {len(nodes)}, one row per "
        f"distinct label of the label volume{background}, found "
        f"{matrix.shape[0]} x {matrix.shape[1]}.")


def load_group_connectivity(group_config, group_files, subject):
    """Load the connectivity of one streamline group of one subject.

    Parameters
    ----------
    group_config : StreamlineGroupConfig
        With its ``connectivity`` set.
    group_files : StreamlineGroupFiles
        The subject's resolved files of that group.
    subject : str

    Returns
    -------
    Connectivity
    """
    affine, dimensions = reference_info(group_files.reference)[:2]
    matrix_path, *labels_path = group_files.connectivity_files
    return load_connectivity(
        group_config.connectivity, matrix_path,
        labels_path[0] if labels_path else None,
        tuple(int(v) for v in dimensions),
        f"subject '{subject}', group '{group_config.name}'", affine)


def write_connectivity(streamline_group, connectivity):
    """Add ``connectivity`` to an HDF5 streamline group, reference layout."""
    streamline_group.attrs["connectivity_matrix_type"] = \
        connectivity.matrix_type
    streamline_group.create_dataset(
        "connectivity_matrix", data=np.asarray(connectivity.matrix, bool),
        fletcher32=True, chunks=True, track_times=False)
    if connectivity.matrix_type == FROM_BLOCS:
        streamline_group.attrs["connectivity_nb_blocs"] = np.asarray(
            connectivity.nb_blocs, dtype=np.int64)
    else:
        streamline_group.create_dataset(
            "connectivity_label_volume",
            data=np.asarray(connectivity.label_volume, np.int32),
            fletcher32=True, chunks=True, track_times=False)


def read_connectivity(streamline_group, where=None):
    """The Connectivity of an HDF5 streamline group (either tool's), or None.

    ``where`` starts the error of a matrix with connections on labels that
    the label volume lacks (default: the group's name).

    Raises
    ------
    DwiMLUserError
        A matrix without its blocs or label volume, or with connections on
        labels the volume lacks.
    """
    if where is None:
        where = f"HDF5 group '{streamline_group.name}':"
    if "connectivity_matrix" not in streamline_group:
        return None
    matrix = np.asarray(streamline_group["connectivity_matrix"]) > 0
    if "connectivity_nb_blocs" in streamline_group.attrs:
        nb_blocs = [int(v) for v in np.atleast_1d(
            streamline_group.attrs["connectivity_nb_blocs"])]
        return Connectivity(matrix, FROM_BLOCS,
                            tuple(nb_blocs * 3 if len(nb_blocs) == 1
                                  else nb_blocs))
    if "connectivity_label_volume" in streamline_group:
        labels = np.asarray(streamline_group["connectivity_label_volume"],
                            dtype=np.int32)
        return Connectivity(matrix_on_label_nodes(
            matrix, labels, f"{where} dataset 'connectivity_matrix'"),
            FROM_LABELS, label_volume=labels)
    matrix_type = decode_str(streamline_group.attrs.get(
        "connectivity_matrix_type", "?"))
    raise DwiMLUserError(
        f"HDF5 group '{streamline_group.name}': connectivity_matrix of type "
        f"'{matrix_type}' has neither connectivity_nb_blocs nor "
        "connectivity_label_volume.")


def check_connectivity(streamline_group, dimensions, where):
    """Check the connectivity data of an HDF5 streamline group, if any,
    when it is loaded (not at the first tracking validation).

    Parameters
    ----------
    streamline_group : h5py.Group
    dimensions : np.ndarray, shape (3,)
        The subject's grid (the group's ``dimensions`` attr).
    where : str
        "HDF5 file F: streamline group 'S/G'", starting each error.

    Raises
    ------
    DwiMLUserError
        One line naming the key: a matrix that is not a square 2-D
        dataset, a type other than 'from_blocs' and 'from_labels', blocs
        that are not 1 or 3 integers >= 1 or of another size than the
        matrix, or a label volume that is not integers on the subject's
        grid. Only shapes and types are read: the labels are checked
        against the matrix by :func:`read_connectivity`.
    """
    attrs = streamline_group.attrs
    if "connectivity_matrix" not in streamline_group:
        return
    matrix = streamline_group["connectivity_matrix"]
    shape = getattr(matrix, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        found = "a group" if shape is None else f"shape {shape}"
        raise DwiMLUserError(f"{where}: expected dataset "
                             f"'connectivity_matrix' square (M, M), found "
                             f"{found}.")
    matrix_type = (decode_str(attrs["connectivity_matrix_type"])
                   if "connectivity_matrix_type" in attrs else None)
    if matrix_type not in (None, FROM_BLOCS, FROM_LABELS):
        raise DwiMLUserError(
            f"{where}: expected attr 'connectivity_matrix_type' "
            f"'{FROM_BLOCS}' or '{FROM_LABELS}', found '{matrix_type}'.")
    if "connectivity_nb_blocs" in attrs and matrix_type != FROM_LABELS:
        _check_hdf5_blocs(attrs["connectivity_nb_blocs"], shape[0], where)
    elif "connectivity_label_volume" in streamline_group \
            and matrix_type != FROM_BLOCS:
        _check_hdf5_labels(streamline_group, dimensions, where)
    else:
        needed = {FROM_BLOCS: "attr 'connectivity_nb_blocs'",
                  FROM_LABELS: "dataset 'connectivity_label_volume'"}
        raise DwiMLUserError(
            f"{where}: 'connectivity_matrix' of type '{matrix_type}' expects "
            f"{needed.get(matrix_type, ' or '.join(needed.values()))}, "
            "found none.")


def _check_hdf5_blocs(value, matrix_size, where):
    values = np.atleast_1d(np.asarray(value))
    valid = (values.ndim == 1 and len(values) in (1, 3)
             and values.dtype.kind in "iu" and (values >= 1).all())
    if not valid:
        raise DwiMLUserError(
            f"{where}: expected attr 'connectivity_nb_blocs' 1 or 3 "
            f"integers >= 1, found {values.tolist()!r} ({values.dtype}).")
    nb_blocs = values.tolist() * (3 if len(values) == 1 else 1)
    if int(np.prod(nb_blocs)) != matrix_size:
        raise DwiMLUserError(
            f"{where}: expected dataset 'connectivity_matrix' of "
            f"{int(np.prod(nb_blocs))} x {int(np.prod(nb_blocs))} (one row "
            f"per bloc of 'connectivity_nb_blocs' {nb_blocs}), found "
            f"{matrix_size} x {matrix_size}.")


def _check_hdf5_labels(streamline_group, dimensions, where):
    labels = streamline_group["connectivity_label_volume"]
    shape = getattr(labels, "shape", None)
    if shape is None or tuple(shape) != tuple(int(d) for d in dimensions) \
            or labels.dtype.kind not in "iu":
        found = ("a group" if shape is None
                 else f"shape {tuple(shape)}, dtype {labels.dtype}")
        raise DwiMLUserError(
            f"{where}: expected dataset 'connectivity_label_volume' of "
            f"integers on the subject's grid {tuple(int(d) for d in dimensions)}"
            f", found {found}.")
