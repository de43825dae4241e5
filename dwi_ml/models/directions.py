"""Directions of streamlines: what a model predicts, and from what.

This module is the contract between the batch loader, the models, the
trainer and the tracker.

Batch
-----
A batch of N streamlines reaches a model as two lists of length N:

- ``inputs[i]``: float32 tensor ``(n_i, F_in)``, the input volume
  interpolated at every point of streamline ``i``, with
  ``F_in = nb_features * nb_neighbours`` laid out neighbour by neighbour;
- ``streamlines[i]``: float32 tensor ``(n_i, 3)``, points in voxel space,
  corner origin (dipy ``Space.VOX``, ``Origin.TRACKVIS``).

Directions and predictions
--------------------------
The directions of streamline ``s`` are its segments in voxel space:
``d_t = s[t + 1] - s[t]`` for ``t = 0 .. n - 2`` (not normalised; their
length is the segment's in voxels, which depends on its orientation when
voxels are anisotropic; docs/models.md).

At point ``t`` the model sees ``inputs[t]`` and the ``k`` previous
directions and predicts ``d_t``.

- Without EOS: ``n - 1`` predictions, for ``t = 0 .. n - 2``; the input at
  the last point is not used.
- With EOS ("end of streamline"): ``n`` predictions, for ``t = 0 .. n - 1``.
  The EOS target is 1 at the last point (stop there: no direction loss) and
  0 elsewhere. A streamline that ends at a cut made by splitting (the
  batch's ``open_ends``) has no true end: the fibre goes on, so its last
  point has no target at all and is left out of the loss
  (:func:`rows_with_targets`).

Predictions of a batch are concatenated streamline after streamline
(``M = sum of the predictions per streamline`` rows), the order of the
lists.

Previous directions
-------------------
With ``k = nb_previous_dirs > 0`` the input at point ``t`` is extended with
``k`` directions, the most recent first::

    [d_{t-1}, d_{t-2}, ..., d_{t-k}]      (3 * k values)

so that the first three values are always the last step, whatever ``k``.
A direction that does not exist (``t - j < 0``) is ``(0, 0, 0)``. When the
model normalises them, each is divided by its length (zeros stay zeros).
All of it is gathered over the packed points at once, never one point at a
time.
"""
import torch

from dwi_ml.io_utils.errors import DwiMLUserError


def unit_vectors(vectors):
    """Vectors ``(..., 3)`` (last axis) scaled to unit length: the values of
    ``F.normalize(vectors, dim=-1)``, bit for bit (the same norm, clamped
    to 1e-12, and division), without its Python layers (a third of its
    time for the few rows of a tracking step)."""
    return vectors / torch.linalg.vector_norm(
        vectors, dim=-1, keepdim=True).clamp_min(1e-12)


def streamline_lengths(streamlines):
    """Number of points of each streamline, int64 tensor (N,)."""
    device = streamlines[0].device if len(streamlines) else None
    return torch.tensor([len(s) for s in streamlines], dtype=torch.int64,
                        device=device)


def first_not_rows_of_width(tensors, width):
    """Where a list breaks the ``(n_i, width)`` tensors of the contract.

    Parameters
    ----------
    tensors : list
        Of torch.Tensor ``(n_i, width)``, one per streamline.
    width : int

    Returns
    -------
    tuple of (int, str), or None
        The index of the first other element and what it is (``'a 1-D
        tensor'``, ``'a tensor of 2 columns'`` or its type's name, never
        its rows: a tracking step reads the last points alone); None when
        all are tensors of that width.
    """
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            return index, type(tensor).__name__
        if tensor.ndim != 2:
            return index, f"a {tensor.ndim}-D tensor"
        if tensor.shape[1] != width:
            return index, f"a tensor of {tensor.shape[1]} columns"
    return None


def nb_predictions(lengths, add_eos):
    """Predictions per streamline: ``n`` with EOS, ``n - 1`` without."""
    return lengths if add_eos else lengths - 1


def _last_point_mask(lengths):
    """(P,) bool, True at the last point of each packed streamline."""
    total = int(lengths.sum())
    mask = torch.zeros(total, dtype=torch.bool, device=lengths.device)
    mask[torch.cumsum(lengths, 0) - 1] = True
    return mask


def prediction_rows(lengths, add_eos):
    """Rows of the packed points at which a prediction is made.

    Parameters
    ----------
    lengths : torch.Tensor, int64 (N,)
        Points per streamline (all >= 1).
    add_eos : bool
        With EOS every point predicts; without, the last point does not.

    Returns
    -------
    torch.Tensor, int64 (M,)
        Indices into ``torch.cat(inputs)``. A fresh torch tensor: nothing
        else holds it, so nobody can modify it after it indexed a tensor.
    """
    keep = torch.ones(int(lengths.sum()), dtype=torch.bool,
                      device=lengths.device)
    if not add_eos:
        keep &= ~_last_point_mask(lengths)
    return torch.nonzero(keep).squeeze(1)


def compute_segment_directions(streamlines):
    """Segments ``s[t+1] - s[t]`` of all streamlines, packed.

    Parameters
    ----------
    streamlines : list of torch.Tensor (n_i, 3)
        Points in voxel space, corner origin.

    Returns
    -------
    directions : torch.Tensor (sum(n_i - 1), 3)
        In voxel units, streamline after streamline.
    nb_directions : torch.Tensor, int64 (N,)
        ``n_i - 1`` for each streamline.
    """
    lengths = streamline_lengths(streamlines)
    if torch.any(lengths < 1):
        raise DwiMLUserError(
            "streamlines: expected at least 1 point per streamline, "
            "found an empty one.")
    try:
        points = torch.cat(list(streamlines))
    except (TypeError, RuntimeError):
        points = None
    # The cat and one shape check stand for a check of each streamline;
    # the loop runs only to name the one at fault.
    if points is None or points.ndim != 2 or points.shape[1] != 3:
        fault = first_not_rows_of_width(streamlines, 3)
        if fault is None:  # another failure of torch.cat (memory, devices)
            torch.cat(list(streamlines))
        raise DwiMLUserError(
            f"streamlines: expected tensors of shape (n_i, 3) (points), "
            f"found {fault[1]} at streamline {fault[0]}.")
    # Differences across two streamlines start at a streamline's last point.
    keep = ~_last_point_mask(lengths)[:-1]
    return (points[1:] - points[:-1])[keep], lengths - 1


def compute_direction_targets(streamlines, add_eos):
    """Targets of every prediction of the batch.

    Returns
    -------
    target_dirs : torch.Tensor (M, 3)
        ``d_t`` in voxel units. With EOS, rows of last points are zeros
        (no direction to learn there).
    eos_targets : torch.Tensor (M,) float or None
        With EOS: 1 at the last point of each streamline, else 0.
    """
    directions, nb_directions = compute_segment_directions(streamlines)
    if not add_eos:
        return directions, None
    eos_targets = _last_point_mask(nb_directions + 1).to(directions.dtype)
    target_dirs = directions.new_zeros((len(eos_targets), 3))
    target_dirs[eos_targets == 0] = directions
    return target_dirs, eos_targets


def rows_with_targets(lengths, open_ends, add_eos):
    """Prediction rows that have a target, or None when all of them have.

    Only with EOS can a row lack a target: the last point of a streamline
    whose end is a cut (``open_ends``), where neither "stop" nor a
    direction is known. Without EOS that point predicts nothing anyway.

    Parameters
    ----------
    lengths : torch.Tensor, int64 (N,)
        Points per streamline.
    open_ends : torch.Tensor (N,) bool, or None
        True where the streamline's last point is a cut.
    add_eos : bool

    Returns
    -------
    torch.Tensor, int64 (M',) or None
        Indices into the M prediction rows, in order.
    """
    if not add_eos or open_ends is None:
        return None
    open_ends = open_ends.to(lengths.device)
    if not bool(open_ends.any()):
        return None
    keep = torch.ones(int(lengths.sum()), dtype=torch.bool,
                      device=lengths.device)
    keep[(torch.cumsum(lengths, 0) - 1)[open_ends]] = False
    return torch.nonzero(keep).squeeze(1)


def _gather_previous_dirs(directions, first_dir_rows, points, k):
    """Directions ``d_{t-1} .. d_{t-k}`` for queries (streamline, t).

    ``first_dir_rows[q]`` is the packed row of ``d_0`` of the query's
    streamline and ``points[q]`` is its ``t``. Missing ones point to an
    extra zero row.
    """
    padded = torch.cat([directions, directions.new_zeros((1, 3))])
    local = points[:, None] - 1 - torch.arange(k, device=points.device)
    rows = torch.where(local >= 0, first_dir_rows[:, None] + local,
                       torch.full_like(local, len(directions)))
    return padded[rows]


def _prepare_directions(streamlines, normalize):
    directions, nb_directions = compute_segment_directions(streamlines)
    if normalize:
        directions = unit_vectors(directions)
    first_dir_rows = torch.cumsum(nb_directions, 0) - nb_directions
    return directions, nb_directions, first_dir_rows


def compute_previous_dirs(streamlines, nb_previous_dirs, add_eos,
                          normalize=True):
    """Previous directions at every prediction point of the batch.

    Parameters
    ----------
    streamlines : list of torch.Tensor (n_i, 3)
        Voxel space, corner origin.
    nb_previous_dirs : int
        ``k``, at least 1.
    add_eos : bool
        Whether the last point predicts too (see module docstring).
    normalize : bool
        Divide each direction by its length.

    Returns
    -------
    torch.Tensor (M, 3 * k)
        Rows in prediction order, ``[d_{t-1}, ..., d_{t-k}]`` per row.
    """
    directions, nb_directions, first_dir_rows = _prepare_directions(
        streamlines, normalize)
    counts = nb_predictions(nb_directions + 1, add_eos)
    streamline_ids = torch.repeat_interleave(
        torch.arange(len(counts), device=counts.device), counts)
    first_prediction = torch.cumsum(counts, 0) - counts
    points = (torch.arange(len(streamline_ids), device=counts.device)
              - first_prediction[streamline_ids])
    previous = _gather_previous_dirs(
        directions, first_dir_rows[streamline_ids], points, nb_previous_dirs)
    return previous.reshape(len(points), 3 * nb_previous_dirs)


def compute_last_previous_dirs(partial_streamlines, nb_previous_dirs,
                               normalize=True):
    """Previous directions at the last point of each partial streamline.

    This is what a tracker needs at each step: the rows equal those that
    :func:`compute_previous_dirs` gives at the same point of the complete
    streamline.

    Parameters
    ----------
    partial_streamlines : list of torch.Tensor (m_i, 3) or torch.Tensor (N, m, 3)
        Streamlines tracked so far (m_i >= 1), voxel space, corner origin.
        A (N, m, 3) tensor holds N streamlines of m points each (a
        tracker's lockstep), or only their last m points when
        ``m >= k + 1``: the result depends on the last k + 1 points only.
    nb_previous_dirs, normalize :
        As in :func:`compute_previous_dirs`.

    Returns
    -------
    torch.Tensor (N, 3 * k)
    """
    if isinstance(partial_streamlines, torch.Tensor):
        return _last_previous_dirs_lockstep(partial_streamlines,
                                            nb_previous_dirs, normalize)
    # Only the last k + 1 points matter; this keeps each step's cost flat.
    tails = [s[-(nb_previous_dirs + 1):] for s in partial_streamlines]
    directions, nb_directions, first_dir_rows = _prepare_directions(
        tails, normalize)
    previous = _gather_previous_dirs(directions, first_dir_rows,
                                     nb_directions, nb_previous_dirs)
    return previous.reshape(len(tails), 3 * nb_previous_dirs)


def _last_previous_dirs_lockstep(points, nb_previous_dirs, normalize):
    """:func:`compute_last_previous_dirs` of (N, m, 3) equal-length streamlines.

    A few tensor operations, no list: the same rows, bit for bit (the same
    differences and the same normalisation of each 3-vector). A tracking
    step calls it for a few rows, where each operation's fixed cost is
    what counts: ``torch.diff`` is one call for the slices and the
    difference.
    """
    nb_points = min(points.shape[1], nb_previous_dirs + 1)
    directions = torch.diff(points.narrow(1, points.shape[1] - nb_points,
                                          nb_points), dim=1)
    if normalize:
        directions = unit_vectors(directions)
    # Most recent first: d_{t-1}, d_{t-2}...; zeros for missing ones.
    previous = directions.flip(1)
    missing = nb_previous_dirs - previous.shape[1]
    if missing:
        previous = torch.cat([previous, previous.new_zeros(
            (len(points), missing, 3))], dim=1)
    return previous.reshape(len(points), 3 * nb_previous_dirs)
