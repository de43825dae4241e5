"""Seeds: random points inside the voxels of a seeding mask.

Seeds are in voxel space with a corner origin (dipy ``Space.VOX``,
``Origin.TRACKVIS``): voxel ``(i, j, k)`` spans ``[i, i + 1) x [j, j + 1) x
[k, k + 1)``, and each seed is drawn uniformly inside its voxel.
"""
import numbers

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError

# A voxel belongs to a mask when its value is at least this; the same
# threshold as the tracking mask (see dwi_ml.tracking.stopping).
MASK_THRESHOLD = 0.5


def make_seeds(mask, rng, npv=None, nt=None):
    """Draw seeds uniformly inside the voxels of ``mask``.

    Parameters
    ----------
    mask : np.ndarray, shape (X, Y, Z) or (X, Y, Z, 1)
        Seeding mask; voxels with a value >= 0.5 are seeded.
    rng : np.random.Generator or int
        The random stream (positions and, with ``nt``, voxels), or its
        seed.
    npv : int, optional
        Seeds per mask voxel, voxel after voxel (C order).
    nt : int, optional
        Total number of seeds; each falls in a mask voxel drawn uniformly
        (with replacement). Exactly one of ``npv`` and ``nt``.

    Returns
    -------
    np.ndarray, shape (S, 3), float32
        Seeds in voxel space, corner origin.
    """
    if (npv is None) == (nt is None):
        raise DwiMLUserError(
            f"seeding: expected exactly one of npv and nt, found npv={npv}, "
            f"nt={nt}.")
    count = npv if npv is not None else nt
    if count < 1:
        raise DwiMLUserError(
            f"seeding: expected {'npv' if npv is not None else 'nt'} >= 1, "
            f"found {count}.")
    if rng is None or isinstance(rng, bool) or not isinstance(
            rng, (np.random.Generator, numbers.Integral)):
        raise DwiMLUserError(
            f"seeding: expected rng, a numpy Generator or an integer seed, "
            f"found {rng!r} (None would draw other seeds at each run).")
    rng = np.random.default_rng(rng)  # a Generator is kept as it is
    mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    voxels = np.argwhere(mask >= MASK_THRESHOLD)
    if len(voxels) == 0:
        raise DwiMLUserError(
            "seeding mask: expected at least one voxel >= 0.5, found none.")
    if npv is not None:
        chosen = np.repeat(voxels, npv, axis=0)
    else:
        chosen = voxels[rng.integers(0, len(voxels), size=nt)]
    seeds = (chosen + rng.random(chosen.shape)).astype(np.float32)
    # Rounding to float32 can carry a draw just below 1 onto the next
    # voxel's edge: keep each seed below its voxel's upper bound.
    upper = np.nextafter((chosen + 1).astype(np.float32), np.float32(0))
    return np.minimum(seeds, upper)
