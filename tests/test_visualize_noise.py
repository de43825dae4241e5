"""dwiml_visualize_noise_on_streamlines.py: a subject's streamlines as the
batch loader hands them to the model, on a small synthetic HDF5 (voxels of
2 x 2.5 x 3 mm: noise in mm and in voxels differ along each axis)."""
import numpy as np
import pytest
from dipy.io.streamline import load_tractogram
from error_checks import assert_user_error
from scipy.stats import truncnorm
from training_data import make_training_hdf5

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.cli.dwiml_hdf5_extract_data import main as extract_main
from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_noise_on_streamlines import _build_parser
from dwi_ml.cli.dwiml_visualize_noise_on_streamlines import main as noise_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.augmentation import NOISE_TRUNCATION_NB_SIGMAS
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.data.processing.space import points_vox_corner_to_rasmm
from dwi_ml.monitoring.augmentation_preview import (
    NOISE_KEY,
    NOISE_NORM_KEY,
    SOURCE_KEY,
)
from tests.tolerances import rounding_atol

NO_AUGMENTATION = ["--reverse_ratio", "0"]
# A streamline is split when it has at least 2 * 3 - 1 points.
MIN_SPLIT_LENGTH = 5
# Standard errors a sample statistic may stray from its expectation.
NB_STANDARD_ERRORS = 4


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    """subj-01 (training), subj-02 (validation), subj-03 (testing), 40
    streamlines of 29 to 52 points each, stored as created (no format)."""
    return make_training_hdf5(str(tmp_path_factory.mktemp("noise")),
                              nb_streamlines=40)


def _run(hdf5_file, out, *options, subject="subj-01"):
    noise_main([hdf5_file, subject, "streamlines", str(out), *options])
    return load_tractogram(str(out), "same", bbox_valid_check=False)


def _points_mm(sft):
    return np.asarray(sft.streamlines.get_data(), dtype=np.float64)


def _stored(hdf5_file, tmp_path, subject="subj-01"):
    out = str(tmp_path / f"stored_{subject}.trk")
    extract_main([hdf5_file, subject, "streamlines", out])
    return load_tractogram(out, "same", bbox_valid_check=False)


def _per_point(sft, key):
    return np.asarray(sft.data_per_point[key].get_data(), dtype=np.float64)


def _sources(sft):
    return np.asarray(sft.data_per_streamline[SOURCE_KEY]).ravel().astype(int)


def test_defaults_are_those_of_a_training_run():
    ours = _build_parser().parse_args(["h", "s", "g", "o.trk"])
    training = train_parser().parse_args(["e", "n", "h", "input", "g"])
    for name in ("split_ratio", "reverse_ratio", "noise_gaussian_size_forward",
                 "noise_gaussian_size_loss", "step_size", "nb_points",
                 "compress", "seed"):
        assert getattr(ours, name) == getattr(training, name), name


def test_without_augmentation_the_points_are_the_stored_ones(
        hdf5_file, tmp_path, capsys):
    stored = _stored(hdf5_file, tmp_path)
    stored_mm = _points_mm(stored)
    # One rounding of the same RAS mm coordinates to float32.
    atol = rounding_atol(np.abs(stored_mm).max(), 1)
    for options in (NO_AUGMENTATION,
                    # Validation batches are brought to the format only.
                    ["--subset", "validation", "--split_ratio", "0.5",
                     "--noise_gaussian_size_forward", "0.5"]):
        out = tmp_path / "shown.trk"
        capsys.readouterr()
        sft = _run(hdf5_file, out, *options, "-f")
        np.testing.assert_allclose(_points_mm(sft), stored_mm, rtol=0,
                                   atol=atol)
        np.testing.assert_array_equal(sft.streamlines._lengths,
                                      stored.streamlines._lengths)
        np.testing.assert_array_equal(sft.affine, stored.affine)
        assert _sources(sft).tolist() == list(range(len(stored)))
        assert not _per_point(sft, NOISE_KEY).any()
        assert capsys.readouterr().out == (
            f"40 streamlines in, 40 out, {len(stored_mm)} points; noise "
            "displacement: mean 0.0000 mm, max 0.0000 mm.\n")


def test_noise_has_the_truncated_gaussian_spread_in_mm(hdf5_file, tmp_path):
    sigma_mm = 0.4
    sft = _run(hdf5_file, tmp_path / "noisy.trk",
               "--noise_gaussian_size_forward", str(sigma_mm),
               "--max_streamlines", "30")
    noise = _per_point(sft, NOISE_KEY)
    nb_points = len(noise)
    # The noise is sigma times a standard normal truncated at +- 2.
    bound = NOISE_TRUNCATION_NB_SIGMAS
    variance, excess_kurtosis = truncnorm(-bound, bound).stats(moments="vk")
    expected_std = sigma_mm * np.sqrt(variance)
    # Standard error of a sample variance, (mu4 - sigma^4) / n, and of its
    # square root (delta method: divided by 2 std).
    se_variance = expected_std ** 2 * np.sqrt(
        (excess_kurtosis + 2) / nb_points)
    se_std = se_variance / (2 * expected_std)
    np.testing.assert_allclose(noise.std(axis=0), expected_std, rtol=0,
                               atol=NB_STANDARD_ERRORS * se_std)
    np.testing.assert_allclose(noise.mean(axis=0), 0, rtol=0,
                               atol=NB_STANDARD_ERRORS * expected_std
                               / np.sqrt(nb_points))
    # Drawn in mm, moved in voxels of 2 x 2.5 x 3 mm, and read back in mm.
    rounding = rounding_atol(np.abs(_points_mm(sft)).max(), 4)
    assert np.abs(noise).max() <= bound * sigma_mm + rounding
    np.testing.assert_allclose(
        _per_point(sft, NOISE_NORM_KEY).ravel(),
        np.linalg.norm(noise, axis=1), rtol=0, atol=rounding)


@pytest.mark.parametrize("points, noise_option", [
    ("input", "--noise_gaussian_size_forward"),
    ("target", "--noise_gaussian_size_loss")])
def test_displacements_are_the_difference_with_the_clean_points(
        hdf5_file, tmp_path, points, noise_option):
    """Same seed, split and reversal, with and without noise."""
    options = ["--split_ratio", "0.5", "--step_size", "1.2", "--points",
               points, "--seed", "7"]
    noisy = _run(hdf5_file, tmp_path / "noisy.trx", *options, noise_option,
                 "0.3")
    clean = _run(hdf5_file, tmp_path / "clean.trx", *options)
    np.testing.assert_array_equal(noisy.streamlines._lengths,
                                  clean.streamlines._lengths)
    np.testing.assert_array_equal(_sources(noisy), _sources(clean))
    difference = _points_mm(noisy) - _points_mm(clean)
    # Two points and a displacement, each rounded to float32 once or twice.
    atol = rounding_atol(np.abs(_points_mm(clean)).max(), 4)
    np.testing.assert_allclose(_per_point(noisy, NOISE_KEY), difference,
                               rtol=0, atol=atol)
    assert np.abs(difference).max() > 0.1


def test_the_same_seed_gives_the_same_file(hdf5_file, tmp_path):
    options = ["--noise_gaussian_size_forward", "0.3", "--split_ratio", "0.3"]
    paths = [tmp_path / name for name in ("a.trk", "b.trk", "c.trk")]
    _run(hdf5_file, paths[0], *options, "--seed", "3")
    _run(hdf5_file, paths[1], *options, "--seed", "3")
    other = _run(hdf5_file, paths[2], *options, "--seed", "4")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    first = load_tractogram(str(paths[0]), "same", bbox_valid_check=False)
    assert (len(first) != len(other) or not np.array_equal(
        _points_mm(first), _points_mm(other)))


def test_split_halves_map_back_to_their_source(hdf5_file, tmp_path):
    stored = _stored(hdf5_file, tmp_path)
    ids = [7, 3, 11, 3]
    sft = _run(hdf5_file, tmp_path / "split.trk", "--split_ratio", "1",
               "--reverse_ratio", "0", "--streamline_ids",
               *map(str, ids))
    splittable = sum(len(stored.streamlines[i]) >= MIN_SPLIT_LENGTH
                     for i in ids)
    assert len(sft) == len(ids) + splittable == 8
    # Each split streamline's pieces follow it, in the order asked.
    assert _sources(sft).tolist() == [7, 7, 3, 3, 11, 11, 3, 3]
    atol = rounding_atol(np.abs(_points_mm(stored)).max(), 1)
    for index in range(0, len(sft), 2):
        first, second = sft.streamlines[index], sft.streamlines[index + 1]
        # The pieces share the cut point.
        joined = np.concatenate([first, second[1:]])
        np.testing.assert_allclose(
            joined, stored.streamlines[_sources(sft)[index]], rtol=0,
            atol=atol)


@pytest.mark.parametrize("points, attribute", [
    ("input", "input_points"), ("target", "target_points")])
def test_output_is_what_the_batch_loader_returns(hdf5_file, tmp_path, points,
                                                 attribute):
    augmentations = {"split_ratio": 0.3, "reverse_ratio": 0.5,
                     "noise_gaussian_size_forward": 0.2,
                     "noise_gaussian_size_loss": 0.1}
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    loader = BatchLoaderOneInput(
        dataset, "streamlines", "input", seed=5,
        input_spec=InputSpec(StreamlineFormat(step_size=1.5)),
        **augmentations)
    ids = np.arange(dataset.training_set.get_subject(0).sft_data_list[0]
                    .nb_streamlines)
    batch = loader.load_batch(BatchRequest("training", 0, 0, [(0, ids)]))
    affine = dataset.training_set.get_subject(0).sft_data_list[0] \
        .space_attributes[0]
    options = [f"--{name}={value}" for name, value in augmentations.items()]
    sft = _run(hdf5_file, tmp_path / "shown.trk", *options, "--seed", "5",
               "--step_size", "1.5", "--points", points)
    expected_mm = points_vox_corner_to_rasmm(
        getattr(batch, attribute).numpy(), affine)
    np.testing.assert_array_equal(sft.streamlines._lengths,
                                  batch.lengths.numpy())
    np.testing.assert_allclose(_points_mm(sft), expected_mm, rtol=0,
                               atol=rounding_atol(np.abs(expected_mm).max(),
                                                  1))


def test_a_subject_of_any_split_is_shown_as_a_training_batch(hdf5_file,
                                                             tmp_path):
    sft = _run(hdf5_file, tmp_path / "testing.trk",
               "--noise_gaussian_size_forward", "0.3", "--split_ratio", "1",
               subject="subj-03")
    assert len(sft) == 80
    assert np.abs(_per_point(sft, NOISE_KEY)).max() > 0.1


def test_augmentations_typed_for_a_validation_batch_are_warned_about(
        hdf5_file, tmp_path, capsys):
    """They were ignored in silence: "mean 0.0000 mm" of noise."""
    sft = _run(hdf5_file, tmp_path / "valid.trk", "--subset", "validation",
               "--split_ratio", "1", "--noise_gaussian_size_forward", "0.3")
    assert np.abs(_per_point(sft, NOISE_KEY)).max() == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "WARNING: --split_ratio, --noise_gaussian_size_forward: not applied "
        "to a --subset validation batch (the loader augments training "
        "batches only); use --subset training to see them."]
    _run(hdf5_file, tmp_path / "valid_default.trk", "--subset", "validation")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("points, noise, other", [
    ("target", "noise_gaussian_size_forward", "input"),
    ("input", "noise_gaussian_size_loss", "target")])
def test_a_noise_of_the_other_points_is_warned_about(hdf5_file, tmp_path,
                                                     capsys, points, noise,
                                                     other):
    """The file showed 0.0000 mm of noise in silence."""
    sft = _run(hdf5_file, tmp_path / "other.trk", "--points", points,
               f"--{noise}", "1")
    assert np.abs(_per_point(sft, NOISE_KEY)).max() == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"WARNING: --{noise}: not shown with --points {points} (it moves the "
        f"{other} points only); use --points {other} to see it."]


def test_refused_inputs_are_one_line_errors(hdf5_file, tmp_path, capsys):
    out = tmp_path / "out.trk"
    existing = tmp_path / "taken.trk"
    existing.write_text("keep me")
    cases = [
        (["subj-99", "streamlines", out], "unknown subject id 'subj-99'"),
        (["subj-01", "typo", out],
         "streamline_group: 'typo' is not a streamline group"),
        (["subj-01", "input", out],
         "streamline_group: 'input' is not a streamline group"),
        (["subj-01", "streamlines", existing], f"'{existing}' already "
         "exists; use -f"),
        (["subj-01", "streamlines", tmp_path / "out.tck"],
         "expected one of the extensions .trk, .trx, found '.tck'"),
        (["subj-01", "streamlines", out, "--split_ratio", "1.5"],
         "argument '--split_ratio': expected a number in [0, 1]"),
        (["subj-01", "streamlines", out, "--streamline_ids", "3", "40"],
         "--streamline_ids: expected ids in [0, 40)"),
        (["subj-01", "streamlines", out, "--max_streamlines", "0"],
         "argument '--max_streamlines': expected an integer >= 1"),
        # It wrote NaN points, with numpy's warnings, and exit 0.
        *[(["subj-01", "streamlines", out, f"--{name}", "1e300"],
           f"argument '--{name}': expected a sigma in mm in [0, 1000] (a "
           "head is ~200 mm across), got 1e+300.")
          for name in ("noise_gaussian_size_forward",
                       "noise_gaussian_size_loss")],
    ]
    for argv, expected in cases:
        assert_user_error(noise_main, [hdf5_file, *argv], capsys, tmp_path,
                          expected)
    assert existing.read_text() == "keep me"


def test_experiment_gives_its_augmentations_seed_and_format(hdf5_file,
                                                             tmp_path, capsys):
    settings = ["--noise_gaussian_size_forward", "0.2", "--split_ratio",
                "0.3", "--reverse_ratio", "0.2", "--seed", "5",
                "--step_size", "1.5"]
    train_main([str(tmp_path), "run", hdf5_file, "input", "streamlines",
                "--max_epochs", "1", "--rnn_layer_sizes", "8", "-v", "WARNING",
                *settings])
    experiment = str(tmp_path / "run")
    _run(hdf5_file, tmp_path / "from_run.trk", "--experiment", experiment)
    _run(hdf5_file, tmp_path / "given.trk", *settings)
    assert ((tmp_path / "from_run.trk").read_bytes()
            == (tmp_path / "given.trk").read_bytes())
    out = tmp_path / "out.trk"
    assert_user_error(noise_main, [hdf5_file, "subj-01", "streamlines", out,
                                   "--experiment", experiment, "--seed", "1"],
                      capsys, tmp_path, "argument --seed: --experiment",
                      "expected none of them, found --seed")
    assert_user_error(noise_main, [hdf5_file, "subj-01", "streamlines", out,
                                   "--experiment", str(tmp_path / "nowhere")],
                      capsys, tmp_path, "is not a dwi_ml experiment")
