"""dwiml_divide_volume_into_blocs.py: label i of its volume is row i of
dwiml_compute_connectivity_matrix_from_blocs.py's matrix."""
import tracemalloc

import nibabel as nib
import numpy as np
from error_checks import assert_user_error
from nibabel.streamlines import ArraySequence
from scoring_data import save_nifti, save_trk

from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_blocs import main as blocs_main
from dwi_ml.cli.dwiml_compute_connectivity_matrix_from_labels import main as labels_main
from dwi_ml.cli.dwiml_divide_volume_into_blocs import main as divide_main
from dwi_ml.tracking.connectivity import bloc_label_volume, point_blocs

# Sizes that are not multiples of the blocs: the parts are uneven.
SHAPE = (10, 7, 6)
NB_BLOCS = (3, 2, 4)
AFFINE = np.array([[2., 0., 0., -9.], [0., 2.5, 0., 4.], [0., 0., 3., 1.],
                   [0., 0., 0., 1.]])


def _expected_label(voxel):
    """floor(x n / S) for x the voxel's centre (corner origin), in C order."""
    parts = [int(np.floor((i + 0.5) * n / s))
             for i, n, s in zip(voxel, NB_BLOCS, SHAPE)]
    return (parts[0] * NB_BLOCS[1] + parts[1]) * NB_BLOCS[2] + parts[2]


def _divide(tmp_path, *nb_blocs, name="blocs.nii.gz"):
    volume = save_nifti(tmp_path / "volume.nii.gz", shape=SHAPE,
                        affine=AFFINE)
    out = tmp_path / name
    divide_main([volume, *map(str, nb_blocs), str(out)])
    return volume, nib.load(str(out))


def test_labels_are_the_blocs_of_the_voxel_centres(tmp_path, capsys):
    _, image = _divide(tmp_path, *NB_BLOCS)
    # One line says what was written where: 3 x 2 x 4 = 24 blocs.
    assert capsys.readouterr().out == (
        f"Saved the 3 x 2 x 4 blocs (labels 0 to 23) in "
        f"{tmp_path / 'blocs.nii.gz'}.\n")
    labels = np.asarray(image.dataobj)
    assert labels.shape == SHAPE and labels.dtype == np.int32
    np.testing.assert_array_equal(image.affine, AFFINE)
    assert (int(image.header["sform_code"]),
            int(image.header["qform_code"])) == (1, 1)
    # Hand-chosen voxels, at the borders of parts too: along x (10 voxels,
    # 3 parts), voxels 3 (centre 3.5 -> 1.05) and 6 (6.5 -> 1.95) are in
    # part 1; along y (7 voxels, 2 parts), voxel 3 (3.5 -> 1.0, exactly in
    # float64) is in part 1, and along z (6 voxels, 4 parts) voxel 1.
    hand_chosen = {(0, 0, 0): 0, (3, 3, 0): (1 * 2 + 1) * 4 + 0,
                   (6, 2, 5): (1 * 2 + 0) * 4 + 3, (9, 6, 2): (2 * 2 + 1) * 4 + 1,
                   (2, 4, 1): (0 * 2 + 1) * 4 + 1}
    for voxel, label in hand_chosen.items():
        assert labels[voxel] == label == _expected_label(voxel), voxel
    assert np.unique(labels).tolist() == list(range(int(np.prod(NB_BLOCS))))


def test_one_value_is_the_same_for_every_axis(tmp_path):
    _, image = _divide(tmp_path, 3, 3, 3)
    _, same = _divide(tmp_path, 3, name="same.nii")
    np.testing.assert_array_equal(np.asarray(image.dataobj),
                                  np.asarray(same.dataobj))


def _blocs_of_voxel_centres(shape, nb_blocs):
    """Each voxel's bloc, its centre looked up with point_blocs: what
    bloc_label_volume computed before it worked axis by axis."""
    centres = np.indices(shape, dtype=np.float64).reshape(3, -1).T + 0.5
    return point_blocs(centres, shape, nb_blocs).reshape(shape)


def test_label_volume_is_the_blocs_of_the_centres_on_odd_grids():
    for shape, nb_blocs in [((7, 11, 5), 3), ((7, 11, 5), 2),
                            ((7, 11, 5), (3, 2, 5)), ((1, 4, 9), (1, 3, 2))]:
        labels = bloc_label_volume(shape, nb_blocs)
        assert labels.dtype == np.int32 and labels.shape == shape
        np.testing.assert_array_equal(
            labels, _blocs_of_voxel_centres(shape, nb_blocs))


def test_label_volume_needs_little_more_memory_than_itself():
    """The centres of every voxel, in float64, peaked at 480 MB for a
    145 x 174 x 145 grid (2 GB at 256^3): 1-D parts per axis now."""
    shape = (64, 80, 72)
    tracemalloc.start()
    try:
        labels = bloc_label_volume(shape, 7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The int32 labels (1.5 MB), and the 1-D arrays of each axis.
    assert peak < 1.1 * labels.nbytes


def test_endpoint_labels_give_the_matrix_of_the_blocs_script(tmp_path):
    volume, _ = _divide(tmp_path, *NB_BLOCS)
    # Endpoints anywhere in the volume (corner origin), off the voxel
    # centres, but not in a voxel that straddles two blocs (x in [3, 4) or
    # [6, 7), y in [3, 4), z in [1, 2) or [4, 5)). Their blocs: 0 -> 23,
    # 17 -> 7, 8 -> 9, 7 -> 17.
    streamlines = ArraySequence([
        np.array([[0.2, 0.3, 0.1], [5.0, 3.0, 3.0], [9.9, 6.9, 5.9]]),
        np.array([[9.5, 0.5, 2.2], [1.1, 4.2, 5.5]]),
        np.array([[4.2, 1.7, 0.4], [4.8, 1.1, 2.3]]),
        np.array([[1.1, 4.2, 5.5], [8.1, 5.5, 4.4], [9.5, 0.5, 2.2]]),
    ])
    tractogram = save_trk(tmp_path / "t.trk", streamlines, volume)
    from_blocs, from_labels = tmp_path / "blocs.npy", tmp_path / "labels.npy"
    blocs_main([tractogram, volume, *map(str, NB_BLOCS), str(from_blocs)])
    labels_main([tractogram, str(tmp_path / "blocs.nii.gz"),
                 str(from_labels)])
    matrix = np.load(from_blocs)
    np.testing.assert_array_equal(np.load(from_labels), matrix)
    assert matrix.shape == (24, 24) and matrix.sum() == 4
    assert (matrix[0, 23], matrix[7, 17], matrix[8, 9]) == (1, 2, 1)


def test_refused_inputs_are_one_line_errors(tmp_path, capsys):
    volume = save_nifti(tmp_path / "volume.nii.gz", shape=SHAPE,
                        affine=AFFINE)
    existing = tmp_path / "taken.nii.gz"
    existing.write_text("keep me")
    out = tmp_path / "out.nii.gz"
    # Taken as a grid until now; HDF5 creation refuses it.
    five_d = save_nifti(tmp_path / "five_d.nii.gz", shape=(*SHAPE, 2, 2),
                        affine=AFFINE)
    cases = [
        ([five_d, "2", out], "expected a 3-D or 4-D volume, found shape "
         f"{(*SHAPE, 2, 2)}."),
        ([volume, "3", "8", "2", out],
         "at most the volume's size along each axis [10, 7, 6]"),
        ([volume, "2", "2", out], "1 or 3 integers >= 1, found [2, 2]"),
        ([volume, "2", tmp_path / "out.npy"],
         "expected one of the extensions .nii, .nii.gz, found '.npy'"),
        ([volume, "2", existing], "already exists; use -f"),
        ([tmp_path / "none.nii.gz", "2", out], "none.nii.gz' does not exist"),
        # The reference's order, IN OUT NB_BLOCS.
        ([volume, out, "2"], "invalid int value"),
    ]
    for argv, expected in cases:
        assert_user_error(divide_main, argv, capsys, tmp_path, expected)
