"""Whether two voxel grids point their axes alike.

Models learn directions in voxel space (docs/models.md): a model trained on
subjects whose voxel axes point one way predicts, on a grid whose axes
point another way (flipped, permuted, rotated) or whose voxels have another
shape, directions that are other directions in the world. A grid that only
differs by its origin or by an isotropic scale keeps every direction.
"""
import nibabel as nib
import numpy as np

# Beyond these, a grid is unlike another: an axis turned by more than
# 1 degree, or a voxel side changed by more than 1 % relative to the
# others (the rounding of stored affines is ~1e-7).
MAX_AXIS_ANGLE_DEG = 1.0
MAX_VOXEL_SHAPE_CHANGE = 0.01


def grid_frame(affine):
    """The world direction of each voxel axis and the voxel's shape.

    Parameters
    ----------
    affine : array-like, shape (4, 4)
        Voxel to RAS mm.

    Returns
    -------
    axes : np.ndarray, shape (3, 3)
        Column j is the unit vector of voxel axis j in RAS mm.
    shape : np.ndarray, shape (3,)
        The voxel's sides divided by their geometric mean (1, 1, 1 for
        isotropic voxels of any size).
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    sides = np.linalg.norm(linear, axis=0)
    return linear / sides, sides / np.prod(sides) ** (1 / 3)


def grid_frame_difference(affine, other):
    """How far apart the frames of two grids are.

    Returns
    -------
    angle_deg : float
        The largest angle between a voxel axis of one grid and the same
        axis of the other (180 for a flipped axis).
    shape_change : float
        The largest relative change of a voxel side, the voxels scaled to
        the same volume, either way (the same number whichever grid comes
        first).
    """
    axes, shape = grid_frame(affine)
    other_axes, other_shape = grid_frame(other)
    cosines = np.clip((axes * other_axes).sum(axis=0), -1.0, 1.0)
    ratios = np.concatenate([shape / other_shape, other_shape / shape])
    return (float(np.degrees(np.arccos(cosines)).max()),
            float(np.abs(ratios - 1).max()))


def grids_alike(affine, other):
    """True when voxel-space directions mean the same world directions on
    both grids (see :data:`MAX_AXIS_ANGLE_DEG`,
    :data:`MAX_VOXEL_SHAPE_CHANGE`)."""
    angle, change = grid_frame_difference(affine, other)
    return angle <= MAX_AXIS_ANGLE_DEG and change <= MAX_VOXEL_SHAPE_CHANGE


def describe_grid(affine):
    """'LPS, 2 x 2 x 2.5 mm voxels' (axis codes and voxel sides)."""
    sides = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3],
                           axis=0)
    return (f"{''.join(nib.aff2axcodes(affine))}, "
            f"{' x '.join(f'{side:.4g}' for side in sides)} mm voxels")
