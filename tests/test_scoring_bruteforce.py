"""score_tractogram against the brute-force scorer of docs/tracking.md
(tests/scoring_bruteforce.py), on anisotropic voxels and awkward cases:
reversed, cut and shifted copies, joins between bundles (invalid
connections), streamlines partly or wholly outside the volume, single
points, random lines."""
import numpy as np
from nibabel.streamlines import ArraySequence
from scoring_bruteforce import brute_force_scores, resample
from scoring_data import random_lines, synthetic_reference

from dwi_ml.tracking.scoring import score_tractogram
from tests.tolerances import EPS32

SHAPE = (30, 30, 30)
# Anisotropic: densification (0.5 of the smallest voxel), directions and
# lengths are in mm, distances and masks in voxels.
AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])


def awkward_tracked(reference, labels, rng):
    first = [reference[np.flatnonzero(labels == label)[0]]
             for label in (1, 2, 3)]
    outside = first[0].copy()
    outside[-5:, 2] -= 40          # its tail leaves the volume
    return [
        *reference[::3],                                  # valid copies
        *(s[::-1] for s in reference[1::7]),              # run backwards
        *(s[:len(s) // 2] for s in reference[2::9]),      # cut: no tail
        *(s + [1.3, -0.7, 0.4] for s in reference[::5]),  # shifted
        np.linspace(first[0][0], first[1][0], 30),        # head 1 - head 2
        np.linspace(first[1][-1], first[2][0], 30),       # tail 2 - head 3
        np.linspace(first[0][0], first[0][-1], 30),       # 1's ends, straight
        outside, first[1] + 100.0,                        # leave the volume
        first[2][:1], first[0][10:11],                    # single points
        *random_lines(10, np.asarray(SHAPE), rng),
    ]


def test_scores_equal_the_brute_force_definitions():
    reference, labels = synthetic_reference(nb_per_bundle=12,
                                            shape=SHAPE)
    # Bundles that mix both directions (except their first streamline).
    reference = ArraySequence([s[::-1] if i % 4 == 3 else s
                               for i, s in enumerate(reference)])
    tracked = awkward_tracked(reference, labels, np.random.default_rng(0))
    expected = brute_force_scores(tracked, list(reference), SHAPE, AFFINE,
                                  labels)
    scores = score_tractogram(ArraySequence(tracked), reference, SHAPE,
                              AFFINE, labels)
    assert set(scores) == set(expected)
    # The cases reach every branch of the definitions.
    assert 0 < expected["VC"] < 1 and expected["IC"] > 0 \
        and expected["NC"] > 0 and expected["IB"] >= 2
    for key in set(expected) - {"mean_length_mm", "median_length_mm"}:
        # Shares of the same integer counts: the same float.
        assert scores[key] == expected[key], key
    # Lengths sum float32 steps (< 200 per streamline, each off by at most
    # a few roundings of its size); the brute force sums float64 ones.
    for key in ("mean_length_mm", "median_length_mm"):
        np.testing.assert_allclose(scores[key], expected[key],
                                   rtol=200 * 4 * EPS32)


def test_ties_and_the_share_threshold():
    """A VC needs a share >= --min_share_in_volume (equal counts), and a
    streamline valid for two bundles with equal shares goes to the lower
    label."""
    shape, affine = (12, 12, 12), np.eye(4)
    line = np.column_stack([np.arange(10) + 0.5, np.full(10, 2.5),
                            np.full(10, 2.5)])
    # Bundles 1 and 2: the same line (same volume and end regions).
    reference, labels = [line, line.copy()], np.array([2, 1])
    # From head to tail through a detour out of the volume.
    bent = np.array([line[0], [5.0, 6.5, 2.5], line[-1]])
    dense = resample(bent, affine, 0.5)
    share = np.mean(np.floor(dense[:, 1]) == 2)
    assert 0 < share < 1
    for min_share, nb_vc in ((share, 2),
                             (np.nextafter(share, 1.0), 1)):
        scores = score_tractogram(ArraySequence([line, bent]), reference,
                                  shape, affine, labels,
                                  min_share_in_volume=min_share)
        expected = brute_force_scores([line, bent], reference, shape,
                                      affine, labels, min_share=min_share)
        assert scores["bundle_1_nb_VC"] == expected["bundle_1_nb_VC"] \
            == nb_vc
        assert scores["bundle_2_nb_VC"] == expected["bundle_2_nb_VC"] == 0
