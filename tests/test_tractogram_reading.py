"""The numpy .trk reader of HDF5 creation against nibabel and dipy."""
import os

import nibabel as nib
import numpy as np
import pytest
from dipy.io.stateful_tractogram import Origin, Space, StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from hdf5_test_data import random_streamlines

from dwi_ml.data.hdf5.tractogram_reading import (
    TractogramReadError,
    read_tractogram_vox,
)
from tests.tolerances import rounding_atol

SHAPE = (12, 10, 9)
# Oblique, anisotropic and flipped along x: every term of the affines used.
AFFINE = np.array([[-2.0, 0.1, 0.0, 30.0],
                   [0.05, 2.5, -0.2, -12.0],
                   [0.0, 0.15, 3.0, 4.0],
                   [0.0, 0.0, 0.0, 1.0]])
# The reader rounds to float32 once, dipy's chain (load, to_vox, to_corner)
# a few times: at most 8 roundings of coordinates below 40 mm, each by at
# most EPS32 / 2 * 40 mm, read back in voxels of >= 2 mm.
POINT_ATOL_VOX = rounding_atol(40.0, 8) / 2.0


def _write_trk(path, nb_streamlines, with_extras=True, seed=0):
    """A .trk on the test grid; optionally per-point and per-streamline
    data of several columns (interleaved with the points in the file)."""
    rng = np.random.default_rng(seed)
    streamlines = random_streamlines(rng, nb_streamlines, SHAPE)
    dpp, dps = {}, {}
    if with_extras:
        dpp = {"colors": [rng.random((len(s), 3), dtype=np.float32)
                          for s in streamlines]}
        dps = {"weight": rng.random((nb_streamlines, 1), dtype=np.float32),
               "pair": rng.random((nb_streamlines, 2), dtype=np.float32)}
    reference = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    sft = StatefulTractogram(streamlines, reference, Space.VOX,
                             origin=Origin.TRACKVIS, data_per_point=dpp,
                             data_per_streamline=dps)
    save_tractogram(sft, str(path), bbox_valid_check=False)
    return streamlines


@pytest.mark.parametrize("with_extras", [False, True])
def test_trk_reader_matches_dipy_points_and_nibabel_dps(tmp_path, with_extras):
    path = tmp_path / "bundle.trk"
    _write_trk(path, 7, with_extras)
    read = read_tractogram_vox(str(path), AFFINE)

    expected = load_tractogram(str(path), "same", bbox_valid_check=False)
    expected.to_vox()
    expected.to_corner()
    assert read.points.dtype == np.float32
    np.testing.assert_array_equal(read.lengths, expected.streamlines._lengths)
    np.testing.assert_allclose(read.points, expected.streamlines.get_data(),
                               rtol=0, atol=POINT_ATOL_VOX)
    nibabel_dps = nib.streamlines.load(str(path)).tractogram \
        .data_per_streamline
    assert sorted(read.data_per_streamline) == sorted(nibabel_dps)
    for key, values in nibabel_dps.items():
        np.testing.assert_array_equal(read.data_per_streamline[key], values)


def test_tck_reader_matches_dipy(tmp_path):
    path = tmp_path / "bundle.tck"
    reference = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    streamlines = random_streamlines(np.random.default_rng(3), 5, SHAPE)
    save_tractogram(StatefulTractogram(streamlines, reference, Space.VOX,
                                       origin=Origin.TRACKVIS), str(path),
                    bbox_valid_check=False)
    read = read_tractogram_vox(str(path), AFFINE)
    np.testing.assert_array_equal(read.lengths, [len(s) for s in streamlines])
    np.testing.assert_allclose(read.points, np.concatenate(streamlines),
                               rtol=0, atol=POINT_ATOL_VOX)


def test_trk_cut_between_two_streamlines_is_refused(tmp_path):
    # nibabel reads such a file as a shorter tractogram, without a word.
    path = tmp_path / "bundle.trk"
    streamlines = _write_trk(path, 5, with_extras=False)
    header_size = nib.streamlines.TrkFile.load(str(path), lazy_load=True) \
        .header["_offset_data"]
    # Each record: an int32 count, then 3 float32 per point.
    kept_bytes = header_size + sum(4 + 12 * len(s) for s in streamlines[:3])
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:kept_bytes])
    assert len(nib.streamlines.load(str(path)).streamlines) == 3
    with pytest.raises(TractogramReadError,
                       match="announces 5 streamlines, found 3"):
        read_tractogram_vox(str(path), AFFINE)


def test_trk_cut_inside_a_streamline_is_refused(tmp_path):
    path = tmp_path / "bundle.trk"
    _write_trk(path, 5, with_extras=True)
    os.truncate(path, os.path.getsize(path) - 7)
    with pytest.raises(TractogramReadError,
                       match="the data ends inside streamline 4"):
        read_tractogram_vox(str(path), AFFINE)


def test_trk_without_a_count_is_read_to_its_end(tmp_path):
    # A count of 0 in the header means "not given" (TrackVis convention).
    path = tmp_path / "bundle.trk"
    streamlines = _write_trk(path, 5, with_extras=True)
    expected = read_tractogram_vox(str(path), AFFINE)
    with open(path, "r+b") as file:
        file.seek(988)  # nb_streamlines, an int32 of the 1000-byte header
        file.write(np.int32(0).tobytes())
    read = read_tractogram_vox(str(path), AFFINE)
    np.testing.assert_array_equal(read.lengths, [len(s) for s in streamlines])
    np.testing.assert_array_equal(read.points, expected.points)
    for key, values in expected.data_per_streamline.items():
        np.testing.assert_array_equal(read.data_per_streamline[key], values)


def test_reference_info_equals_dipys_for_nifti_trk_and_trx(tmp_path):
    """Creation reads grids without dipy.io (its import pulls pytest): the
    values, dtypes and voxel order must stay dipy's, bit for bit."""
    from dipy.io.utils import get_reference_info

    from dwi_ml.data.hdf5.tractograms import reference_info

    nifti = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), nifti)
    trk = tmp_path / "bundle.trk"
    _write_trk(trk, 3, with_extras=False)
    trx = tmp_path / "bundle.trx"
    save_tractogram(load_tractogram(str(trk), "same"), str(trx))
    for path in (nifti, trk, trx):
        ours, dipys = reference_info(str(path)), get_reference_info(str(path))
        # The affine is float64 whatever dipy's version (dipy < 1.12 gives
        # float32; its values are float32 in every header, so equal).
        assert ours[0].dtype == np.float64
        for got, expected in zip(ours[:3], dipys[:3]):
            if got is not ours[0]:
                assert np.asarray(got).dtype == np.asarray(expected).dtype
            np.testing.assert_array_equal(got, expected)
        assert ours[3] == dipys[3] and isinstance(ours[3], str)
