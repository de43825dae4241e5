"""An independent, brute-force scorer written from docs/tracking.md.

It follows the text of "Scoring a tractogram", not the package's code: one
streamline and one bundle at a time, a full distance matrix instead of a
k-d tree, Python sets of voxel tuples instead of flat indices. Slow: for a
few hundred streamlines only. Streamlines are lists of (n, 3) arrays in
voxel space, corner origin.
"""
import itertools
import math

import numpy as np


def resample(streamline, affine, max_step_mm, length_atol_mm=0.0):
    """Every point kept, each segment cut into ``ceil((l - atol) / h)``
    equal parts (at least one): steps of at most ``h`` mm."""
    streamline = np.asarray(streamline, dtype=np.float64)
    if len(streamline) < 2:
        return streamline
    points = []
    for start, end in zip(streamline[:-1], streamline[1:]):
        length = np.linalg.norm((end - start) @ affine[:3, :3].T)
        nb_parts = max(math.ceil((length - length_atol_mm) / max_step_mm
                                 - 1e-6), 1)
        points += [start + (end - start) * k / nb_parts
                   for k in range(nb_parts)]
    return np.array(points + [streamline[-1]])


def voxels(points, shape):
    """Set of the voxels (tuples) holding the points inside the grid."""
    indices = np.floor(np.asarray(points, dtype=np.float64)).astype(int)
    inside = np.all((indices >= 0) & (indices < np.asarray(shape)), axis=1)
    return {tuple(int(i) for i in v) for v in indices[inside]}


def dilate(voxel_set, shape):
    """The voxels and their 26 neighbours, inside the grid."""
    return {w for v in voxel_set
            for w in (tuple(np.add(v, d)) for d in
                      itertools.product((-1, 0, 1), repeat=3))
            if all(0 <= w[i] < shape[i] for i in range(3))}


def point_directions(streamlines, affine):
    """Step to the next point (to the last point: the step reaching it)."""
    rows = []
    for s in streamlines:
        steps = np.diff(s, axis=0)
        rows.append(np.concatenate([steps, steps[-1:]]) if len(s) > 1
                    else np.zeros((len(s), 3)))
    return np.concatenate(rows) @ affine[:3, :3].T


def _bundles(reference, labels, dense, shape):
    bundles = []
    for label in sorted(set(labels.tolist())):
        ids = [i for i in np.flatnonzero(labels == label)
               if len(reference[i])]
        first = reference[ids[0]]
        heads, tails = [], []
        for i in ids:
            head, tail = reference[i][0], reference[i][-1]
            if (np.linalg.norm(head - first[-1])
                    + np.linalg.norm(tail - first[0])
                    < np.linalg.norm(head - first[0])
                    + np.linalg.norm(tail - first[-1])):
                head, tail = tail, head
            heads.append(head)
            tails.append(tail)
        bundles.append({
            "label": int(label),
            "volume": set().union(*(voxels(dense[i], shape) for i in ids)),
            "head": dilate(voxels(heads, shape), shape),
            "tail": dilate(voxels(tails, shape), shape)})
    return bundles


def _region(voxel, bundles):
    """First end region (by label, head before tail) holding the voxel."""
    for b, bundle in enumerate(bundles):
        for side, key in enumerate(("head", "tail")):
            if voxel in bundle[key]:
                return 2 * b + side
    return None


def brute_force_scores(tracked, reference, shape, affine, labels,
                       min_share=0.5, max_angle_deg=30.0, max_step_vox=0.5):
    """The scores of docs/tracking.md, as a dict like score_tractogram's."""
    affine = np.asarray(affine, dtype=np.float64)
    tracked = [np.asarray(s, dtype=np.float64) for s in tracked]
    reference = [np.asarray(s, dtype=np.float64) for s in reference]
    step_mm = max_step_vox * np.linalg.svd(affine[:3, :3],
                                           compute_uv=False).min()
    dense = [resample(s, affine, step_mm) for s in reference]
    dense_points = np.concatenate(dense)
    points = np.concatenate(tracked)
    distances = np.linalg.norm(points[:, None] - dense_points[None], axis=2)
    nearest = np.argmin(distances, axis=1)
    distance = distances[np.arange(len(points)), nearest]
    own = point_directions(tracked, affine)
    theirs = point_directions(dense, affine)[nearest]
    norms = np.linalg.norm(own, axis=1) * np.linalg.norm(theirs, axis=1)
    cosines = np.abs(np.sum(own * theirs, axis=1)) / np.where(norms > 0,
                                                              norms, 1)
    lengths = [np.sum(np.linalg.norm(np.diff(s, axis=0) @ affine[:3, :3].T,
                                     axis=1)) for s in tracked]
    scores = {
        "nb_tracked": len(tracked), "nb_reference": len(reference),
        "nb_tracked_points": len(points),
        "points_within_1_vox": np.mean(distance <= 1),
        "points_within_2_vox": np.mean(distance <= 2),
        "points_aligned": np.mean((distance <= 2) & (norms > 0) & (
            cosines >= math.cos(math.radians(max_angle_deg)))),
        "mean_length_mm": np.mean(lengths),
        "median_length_mm": np.median(lengths)}

    bundles = _bundles(reference, np.asarray(labels), dense, shape)
    nb_vc = [0] * len(bundles)
    vc_voxels = [set() for _ in bundles]
    nb_ic, pairs = 0, set()
    for streamline in tracked:
        ends = [next(iter(voxels(p[None], shape)), None)
                for p in (streamline[0], streamline[-1])]
        dense_streamline = resample(streamline, affine, step_mm)
        candidates = []
        for b, bundle in enumerate(bundles):
            if ((ends[0] in bundle["head"] and ends[1] in bundle["tail"])
                    or (ends[0] in bundle["tail"]
                        and ends[1] in bundle["head"])):
                share = np.mean([tuple(v) in bundle["volume"] for v in
                                 np.floor(dense_streamline).astype(int)])
                if share >= min_share:
                    candidates.append((-share, b))
        if candidates:
            b = min(candidates)[1]
            nb_vc[b] += 1
            vc_voxels[b] |= voxels(dense_streamline, shape)
            continue
        regions = [None if end is None else _region(end, bundles)
                   for end in ends]
        if None not in regions:
            nb_ic += 1
            low, high = sorted(regions)
            if not (low // 2 == high // 2 and low != high):
                pairs.add((low, high))
    n = len(tracked)
    scores.update(VC=sum(nb_vc) / n, IC=nb_ic / n,
                  NC=(n - sum(nb_vc) - nb_ic) / n,
                  VB=sum(count > 0 for count in nb_vc), IB=len(pairs),
                  nb_bundles=len(bundles))
    per_bundle = []
    for bundle, count, a in zip(bundles, nb_vc, vc_voxels):
        b = bundle["volume"]
        values = ((len(a & b) / len(b), len(a - b) / len(b),
                   2 * len(a & b) / (len(a) + len(b))) if count
                  else (0., 0., 0.))
        per_bundle.append(values)
        for key, value in zip(("OL", "OR", "F1"), values):
            scores[f"bundle_{bundle['label']}_{key}"] = value
        scores[f"bundle_{bundle['label']}_nb_VC"] = count
    for k, key in enumerate(("mean_OL", "mean_OR", "mean_F1")):
        scores[key] = np.mean([values[k] for values in per_bundle])
    return scores
