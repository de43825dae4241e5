"""Tractometer-style bundle scores: valid, invalid and no connections.

Each bundle of the reference (its streamlines sharing one label) gives, from
its densely resampled streamlines (see
:func:`dwi_ml.tracking.scoring.densify`):

- its volume: the voxels holding at least one of its points;
- two end regions, head and tail: the voxels of its streamlines' first
  points, and of their last points, each dilated by one voxel (26
  neighbours). Streamlines of a bundle may run either way, so each is first
  flipped if that brings its endpoints closer to those of the bundle's
  first streamline.

The end regions are numbered ``2 b`` (head of bundle ``b``) and ``2 b + 1``
(tail), bundles being sorted by label. A tracked streamline is

- a valid connection (VC) of bundle ``b`` if one endpoint lies in ``b``'s
  head and the other in ``b``'s tail (either order), and at least
  ``min_share_in_volume`` of its points (densely resampled) lie in ``b``'s
  volume. When it is so for several bundles, it counts for the one holding
  the largest share of its points (the lowest label on a tie);
- an invalid connection (IC) if it is not a VC but both its endpoints lie
  in end regions (of different bundles, in one region twice, or in the
  right regions by another path);
- no connection (NC) otherwise: an endpoint outside every end region.

VC, IC and NC are shares of the tracked streamlines (they add up to 1).
VB is the number of bundles with at least one VC. IB is the number of
distinct unordered pairs of end regions joined by ICs, leaving out each
bundle's own (head, tail) pair; an endpoint in several regions takes the
lowest-numbered one. Per bundle, with ``A`` the voxels of its VCs and ``B``
its volume: overlap ``OL = |A & B| / |B|``, overreach
``OR = |A - B| / |B|`` and ``F1 = 2 |A & B| / (|A| + |B|)``, all 0 for a
bundle without VC. ``mean_OL``, ``mean_OR`` and ``mean_F1`` average them
over all bundles of the reference, missed ones included.

Points, in voxel space with a corner origin, lie in voxel ``floor(p)``;
points outside the grid lie in no voxel.
"""
from dataclasses import dataclass

import numpy as np

from dwi_ml.data.packed import ranges_to_indices
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.tracking.voxel_masks import (
    dilate_voxel_set,
    in_voxel_set,
    point_voxel_indices,
    streamline_endpoints,
    voxel_set,
)

NO_BUNDLE = -1


@dataclass(frozen=True)
class ReferenceBundle:
    """Volume and end regions of one reference bundle.

    Attributes
    ----------
    label : int
    volume, head_region, tail_region : np.ndarray, int64
        Sorted unique flat voxel indices (see
        :mod:`dwi_ml.tracking.voxel_masks`).
    """
    label: int
    volume: np.ndarray
    head_region: np.ndarray
    tail_region: np.ndarray


def check_bundle_labels(labels, nb_streamlines, where="reference_labels"):
    """Return ``labels`` as an (N,) int64 array, or raise a user error.

    Labels come from a tractogram's ``data_per_streamline``: one integer
    value per streamline, stored as (N,) or (N, 1), often as floats.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (nb_streamlines,):
        raise DwiMLUserError(
            f"{where}: expected one bundle label per streamline, shape "
            f"({nb_streamlines},) or ({nb_streamlines}, 1), found "
            f"{labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.number)
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))):
        raise DwiMLUserError(
            f"{where}: expected integer bundle labels, found values such as "
            f"{labels[:3].tolist()}.")
    return labels.astype(np.int64)


def orient_like_first(heads, tails):
    """Swap the endpoints of streamlines that run the other way.

    A streamline is flipped if its head is closer to the first streamline's
    tail, and its tail to that head, than the other way round (sum of the
    two distances).

    Parameters
    ----------
    heads, tails : np.ndarray, shape (N, 3)
        First and last points of one bundle's streamlines.

    Returns
    -------
    heads, tails : np.ndarray, shape (N, 3)
    """
    first_head, first_tail = heads[0], tails[0]
    same_way = (np.linalg.norm(heads - first_head, axis=1)
                + np.linalg.norm(tails - first_tail, axis=1))
    other_way = (np.linalg.norm(heads - first_tail, axis=1)
                 + np.linalg.norm(tails - first_head, axis=1))
    flip = (other_way < same_way)[:, None]
    return np.where(flip, tails, heads), np.where(flip, heads, tails)


def make_reference_bundles(dense_reference, labels, shape):
    """Volume and end regions of each bundle, sorted by label.

    Parameters
    ----------
    dense_reference : nibabel ArraySequence
        Reference streamlines, densely resampled, voxel space, corner
        origin.
    labels : np.ndarray, shape (N,), int
    shape : tuple of 3 int

    Returns
    -------
    list of ReferenceBundle
    """
    labels = check_bundle_labels(labels, len(dense_reference))
    offsets = np.asarray(dense_reference._offsets, dtype=np.int64)
    lengths = np.asarray(dense_reference._lengths, dtype=np.int64)
    heads, tails = streamline_endpoints(dense_reference)
    bundles = []
    for label in np.unique(labels):
        ids = np.flatnonzero((labels == label) & (lengths > 0))
        if len(ids) == 0:
            continue
        rows = ranges_to_indices(offsets[ids], lengths[ids])
        bundle_heads, bundle_tails = orient_like_first(heads[ids], tails[ids])
        bundles.append(ReferenceBundle(
            label=int(label),
            volume=voxel_set(point_voxel_indices(
                dense_reference._data[rows], shape)),
            head_region=_end_region(bundle_heads, shape),
            tail_region=_end_region(bundle_tails, shape)))
    return bundles


def _end_region(points, shape):
    return dilate_voxel_set(voxel_set(point_voxel_indices(points, shape)),
                            shape)


def share_in_volume(point_voxels, offsets, lengths, volume):
    """Share of each streamline's points whose voxel lies in ``volume``.

    Parameters
    ----------
    point_voxels : np.ndarray, shape (P,), int64
        Flat voxel index of every point (see
        :func:`dwi_ml.tracking.voxel_masks.point_voxel_indices`).
    offsets, lengths : np.ndarray, shape (n,)
        The streamlines to measure, lengths > 0.
    volume : np.ndarray, int64
        Sorted flat voxel indices.

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    rows = ranges_to_indices(offsets, lengths)
    inside = in_voxel_set(point_voxels[rows], volume)
    owners = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(owners, weights=inside,
                       minlength=len(lengths)) / lengths


def assign_valid_connections(dense_tracked, bundles, shape,
                             min_share_in_volume):
    """Index (in ``bundles``) of the bundle each tracked streamline is a VC of.

    Parameters
    ----------
    dense_tracked : nibabel ArraySequence
        Tracked streamlines, densely resampled, voxel space, corner origin.
    bundles : list of ReferenceBundle
    shape : tuple of 3 int
    min_share_in_volume : float

    Returns
    -------
    np.ndarray, shape (N,), int64
        ``NO_BUNDLE`` (-1) for streamlines that are no VC.
    """
    offsets = np.asarray(dense_tracked._offsets, dtype=np.int64)
    lengths = np.asarray(dense_tracked._lengths, dtype=np.int64)
    point_voxels = point_voxel_indices(dense_tracked._data, shape)
    head_voxels, tail_voxels = (point_voxel_indices(points, shape) for points
                                in streamline_endpoints(dense_tracked))
    assigned = np.full(len(lengths), NO_BUNDLE, dtype=np.int64)
    best_share = np.full(len(lengths), -1.0)
    for index, bundle in enumerate(bundles):
        head_in_head = in_voxel_set(head_voxels, bundle.head_region)
        head_in_tail = in_voxel_set(head_voxels, bundle.tail_region)
        tail_in_head = in_voxel_set(tail_voxels, bundle.head_region)
        tail_in_tail = in_voxel_set(tail_voxels, bundle.tail_region)
        candidates = np.flatnonzero((head_in_head & tail_in_tail)
                                    | (head_in_tail & tail_in_head))
        shares = share_in_volume(point_voxels, offsets[candidates],
                                 lengths[candidates], bundle.volume)
        # Strictly larger: on a tie the earlier (lower label) bundle stays.
        better = (shares >= min_share_in_volume) & \
            (shares > best_share[candidates])
        assigned[candidates[better]] = index
        best_share[candidates[better]] = shares[better]
    return assigned


def first_end_region(flat_voxels, bundles):
    """Lowest-numbered end region (``2 b`` head, ``2 b + 1`` tail) of voxels.

    Returns an int64 array, -1 where a voxel lies in no end region.
    """
    regions = np.full(len(flat_voxels), -1, dtype=np.int64)
    # Backwards, so that lower numbers overwrite higher ones.
    for index in range(len(bundles) - 1, -1, -1):
        for region, mask in ((2 * index + 1, bundles[index].tail_region),
                             (2 * index, bundles[index].head_region)):
            regions[in_voxel_set(flat_voxels, mask)] = region
    return regions


def count_invalid_bundles(head_regions, tail_regions):
    """Number of distinct region pairs, leaving out bundles' own pairs.

    Parameters
    ----------
    head_regions, tail_regions : np.ndarray, shape (n,), int64
        End regions (>= 0) of the invalid connections.
    """
    low = np.minimum(head_regions, tail_regions)
    high = np.maximum(head_regions, tail_regions)
    own_pair = (low % 2 == 0) & (high == low + 1)
    pairs = np.unique(np.stack([low[~own_pair], high[~own_pair]], axis=1),
                      axis=0)
    return len(pairs)


def overlap_scores(tracked_voxels, volume):
    """OL, OR and F1 of a tracked voxel mask against a bundle's volume.

    Parameters
    ----------
    tracked_voxels, volume : np.ndarray, int64
        Sorted unique flat voxel indices; ``volume`` is not empty.

    Returns
    -------
    tuple of 3 float
    """
    common = len(np.intersect1d(tracked_voxels, volume, assume_unique=True))
    overlap = common / len(volume)
    overreach = (len(tracked_voxels) - common) / len(volume)
    f1 = 2. * common / (len(tracked_voxels) + len(volume))
    return overlap, overreach, f1


def score_bundles(dense_tracked, dense_reference, reference_labels, shape,
                  min_share_in_volume):
    """Tractometer-style scores of the module docstring.

    Parameters
    ----------
    dense_tracked, dense_reference : nibabel ArraySequence
        Compact, densely resampled streamlines, voxel space, corner origin.
    reference_labels : np.ndarray, shape (len(dense_reference),), int
    shape : tuple of 3 int
    min_share_in_volume : float

    Returns
    -------
    dict of str to float
        ``VC``, ``IC``, ``NC`` (shares), ``VB``, ``IB``, ``nb_bundles``,
        ``mean_OL``, ``mean_OR``, ``mean_F1`` and, for each bundle label
        ``L``, ``bundle_L_nb_VC``, ``bundle_L_OL``, ``bundle_L_OR``,
        ``bundle_L_F1``.
    """
    bundles = make_reference_bundles(dense_reference, reference_labels, shape)
    nb_tracked = len(dense_tracked)
    assigned = assign_valid_connections(dense_tracked, bundles, shape,
                                        min_share_in_volume)
    head_regions, tail_regions = (
        first_end_region(point_voxel_indices(points, shape), bundles)
        for points in streamline_endpoints(dense_tracked))
    is_valid = assigned != NO_BUNDLE
    is_invalid = ~is_valid & (head_regions >= 0) & (tail_regions >= 0)
    nb_valid = int(np.count_nonzero(is_valid))
    nb_invalid = int(np.count_nonzero(is_invalid))

    def share(count):
        return count / nb_tracked if nb_tracked else 0.0

    scores = {
        "VC": share(nb_valid),
        "IC": share(nb_invalid),
        "NC": share(nb_tracked - nb_valid - nb_invalid),
        "VB": float(len(np.unique(assigned[is_valid]))),
        "IB": float(count_invalid_bundles(head_regions[is_invalid],
                                          tail_regions[is_invalid])),
        "nb_bundles": float(len(bundles)),
    }
    per_bundle = _overlaps_per_bundle(dense_tracked, assigned, bundles, shape)
    for bundle, nb_vc, (overlap, overreach, f1) in per_bundle:
        prefix = f"bundle_{bundle.label}_"
        scores[prefix + "nb_VC"] = float(nb_vc)
        scores[prefix + "OL"] = overlap
        scores[prefix + "OR"] = overreach
        scores[prefix + "F1"] = f1
    all_scores = np.array([scores_ for _, _, scores_ in per_bundle]
                          ).reshape(-1, 3)
    means = all_scores.mean(axis=0) if len(bundles) else np.zeros(3)
    scores.update(mean_OL=float(means[0]), mean_OR=float(means[1]),
                  mean_F1=float(means[2]))
    return scores


def _overlaps_per_bundle(dense_tracked, assigned, bundles, shape):
    """(bundle, number of VCs, (OL, OR, F1)) for each bundle."""
    valid = np.flatnonzero(assigned != NO_BUNDLE)
    lengths = np.asarray(dense_tracked._lengths, dtype=np.int64)[valid]
    rows = ranges_to_indices(
        np.asarray(dense_tracked._offsets, dtype=np.int64)[valid], lengths)
    point_voxels = point_voxel_indices(dense_tracked._data[rows], shape)
    point_bundles = np.repeat(assigned[valid], lengths)
    inside = point_voxels >= 0
    # One sort for all bundles: (bundle, voxel) pairs as single integers.
    nb_voxels = int(np.prod(shape))
    pairs = np.unique(point_bundles[inside] * nb_voxels + point_voxels[inside])
    pair_bundles = pairs // nb_voxels
    nb_vc = np.bincount(assigned[valid], minlength=len(bundles))
    results = []
    for index, bundle in enumerate(bundles):
        voxels = pairs[pair_bundles == index] % nb_voxels
        results.append((bundle, int(nb_vc[index]),
                        overlap_scores(voxels, bundle.volume)
                        if nb_vc[index] else (0.0, 0.0, 0.0)))
    return results
