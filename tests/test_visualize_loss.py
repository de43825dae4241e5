"""Per-point losses: the direction getters' unreduced losses and
dwiml_visualize_loss.py's tractogram and histograms."""
import matplotlib.image
import numpy as np
import pytest
import torch
from dipy.io.streamline import load_tractogram
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_loss import main as visualize_loss_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.processing.space import points_vox_corner_to_rasmm
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import load_model_from_params_and_state
from dwi_ml.models.direction_getters import DIRECTION_GETTERS, make_direction_getter
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.monitoring.loss_per_point import (
    compute_subject_point_losses,
    draw_histograms,
    predictions_to_points,
    save_loss_tractogram,
)
from dwi_ml.training.evaluation import evaluate_model
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5
from tests.tolerances import rounding_atol

DG_KEYS = tuple(sorted(DIRECTION_GETTERS))
# Losses of the same points from batches of other shapes (other kernels),
# relative, as in tests/test_evaluate_model.py: the forward error of an RNN
# output is within one rounding per term of its dot products (fan-in < 64:
# the inputs, 3, 8 hidden) per step (< 100: streamlines < 150 mm at
# 1.5 mm), relatively to losses of size ~1.
LOSS_REL = rounding_atol(1, 100 * 64)


@pytest.mark.parametrize("dg_key", DG_KEYS)
@pytest.mark.parametrize("add_eos", [False, True])
def test_per_point_losses_average_to_compute_loss(dg_key, add_eos):
    torch.manual_seed(0)
    dg = make_direction_getter(dg_key, 8, {"add_eos": add_eos,
                                           "eos_weight": 0.7})
    outputs = dg(torch.randn(50, 8))
    targets = torch.randn(50, 3)
    eos = (torch.rand(50) < 0.2).float() if add_eos else None
    per_point = dg.compute_per_point_losses(outputs, targets, eos)
    named, n_points = dg.compute_named_losses(outputs, targets, eos)
    assert set(per_point) == ({"direction", "eos"} if add_eos
                              else {"direction"})
    assert all(values.shape == (50,) for values in per_point.values())
    # A float32 mean of 50 values: 49 additions on partial sums below
    # 50 mean |v|, then a division, so within 50 * EPS32 / 2 * mean |v| of
    # the exact mean, each way; the total adds one float32 addition of the
    # terms (per point, or of their means).
    for name, values in per_point.items():
        torch.testing.assert_close(values.mean(), named[name], rtol=0,
                                   atol=rounding_atol(
                                       float(values.detach().abs().mean()),
                                       50))
    total, _ = dg.compute_loss(outputs, targets, eos)
    magnitude = float(sum(values.detach().abs()
                          for values in per_point.values()).mean())
    torch.testing.assert_close(sum(per_point.values()).mean(), total,
                               rtol=0, atol=rounding_atol(magnitude, 51))
    if add_eos:  # no direction to learn where the streamline stops
        assert (per_point["direction"][eos == 1] == 0).all()


def test_predictions_go_to_the_points_that_make_them():
    lengths = torch.tensor([3, 2])
    without_eos = predictions_to_points(torch.tensor([1., 2., 3.]), lengths,
                                        add_eos=False)
    np.testing.assert_array_equal(without_eos.numpy(),
                                  [1., 2., np.nan, 3., np.nan])
    with_eos = predictions_to_points(torch.arange(5.), lengths, add_eos=True)
    np.testing.assert_array_equal(with_eos.numpy(), [0., 1., 2., 3., 4.])


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("loss_points")),
                              nb_streamlines=60)


def evaluate_subject(model, hdf5_file, split):
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=split == "training",
                      load_validation=split == "validation",
                      load_testing=split == "testing")
    try:
        return evaluate_model(model, dataset, split, "input", "streamlines",
                              batch_size=25)
    finally:
        dataset.close()


def test_without_eos_mean_is_the_evaluated_loss_and_last_points_nan(
        hdf5_file, tmp_path):
    torch.manual_seed(1)
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data()
    model = Learn2TrackModel("untrained", nb_features=dataset.nb_features[0],
                             step_size=1.5, rnn_layer_sizes=[8]).eval()
    dataset.close()
    losses = compute_subject_point_losses(model, hdf5_file, "subj-01",
                                          "input", "streamlines",
                                          batch_size=17)
    assert set(losses.values) == {"loss", "angular_error_deg"}
    last_points = np.cumsum(losses.streamlines._lengths) - 1
    for values in losses.values.values():
        assert len(values) == len(losses.streamlines.get_data())
        assert np.isnan(values[last_points]).all()
        assert np.isfinite(np.delete(values, last_points)).all()
    expected = evaluate_subject(model, hdf5_file, "training")["subj-01"]
    # Other batches (17 and 25 streamlines), same points: float32 rounding
    # of other kernels, the bound of tests/test_evaluate_model.py
    # (LOSS_REL); the means are taken in float64.
    assert np.nanmean(losses.values["loss"].astype(np.float64)) \
        == pytest.approx(expected["loss"], rel=LOSS_REL)
    # An angle moves by at most the angle between the two predictions
    # (LOSS_REL radians: their relative error), plus the float32 arccos of
    # a cosine within 10 roundings (3-term products and norms) of its
    # value: sqrt(2 * 10 * EPS32 / 2) radians where the angle is near 0.
    angle_atol_deg = np.degrees(LOSS_REL + np.sqrt(rounding_atol(1, 10)))
    assert np.nanmean(
        losses.values["angular_error_deg"].astype(np.float64)) \
        == pytest.approx(expected["angular_error_deg"], rel=0,
                         abs=angle_atol_deg)
    assert expected["n_points"] == np.isfinite(losses.values["loss"]).sum()
    # The NaN of the last points survive a .trx file.
    save_loss_tractogram(losses, str(tmp_path / "losses.trx"))
    sft = load_tractogram(str(tmp_path / "losses.trx"), "same")
    np.testing.assert_array_equal(
        np.asarray(sft.data_per_point["loss"].get_data()).ravel(),
        losses.values["loss"])


@pytest.fixture(scope="module")
def eos_experiment(hdf5_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("experiments")
    train_main([str(folder), "exp", hdf5_file, "input", "streamlines",
                "--max_epochs", "1", "--step_size", "1.5", "--rnn_layer_sizes",
                "8", "--add_eos", "-v", "WARNING"])
    return str(folder / "exp")


def test_script_writes_losses_per_point_in_subject_space(
        eos_experiment, hdf5_file, tmp_path, capsys):
    out = str(tmp_path / "losses.trk")
    capsys.readouterr()
    visualize_loss_main([eos_experiment, hdf5_file, "subj-03", out,
                         "--batch_size", "23", "--nb_bins", "20"])
    assert capsys.readouterr().out == (
        f"Saved the loss per point in {out} and its histograms in "
        f"{tmp_path / 'losses_histogram.png'}.\n")
    model = load_model_from_params_and_state(eos_experiment + "/best_model")
    expected = compute_subject_point_losses(model, hdf5_file, "subj-03",
                                            "input", "streamlines")
    sft = load_tractogram(out, "same")
    keys = {"loss", "loss_direction", "loss_eos", "angular_error_deg"}
    assert set(sft.data_per_point) == keys
    # In the subject's space: RAS mm through the streamline group's affine.
    points_mm = points_vox_corner_to_rasmm(expected.streamlines.get_data(),
                                           expected.affine)
    tolerance = 4 * np.finfo(np.float32).eps * np.abs(points_mm).max()
    np.testing.assert_allclose(sft.streamlines.get_data(), points_mm,
                               rtol=0, atol=tolerance)
    np.testing.assert_allclose(sft.affine, expected.affine)
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id="subj-03")
    stored = dataset.testing_set.get_subject(0).sft_data_list[0] \
        .get_streamlines()
    dataset.close()
    # Resampled to the model's 1.5 mm, from the same first points.
    np.testing.assert_allclose(
        sft.streamlines.get_data()[sft.streamlines._offsets],
        points_vox_corner_to_rasmm(stored.get_data()[stored._offsets],
                                   expected.affine), rtol=0, atol=tolerance)
    for key in keys:
        values = np.asarray(sft.data_per_point[key].get_data()).ravel()
        np.testing.assert_array_equal(values, expected.values[key])
    loss = expected.values["loss"]
    # Each point's loss is the float32 sum of its two positive terms.
    np.testing.assert_allclose(loss, expected.values["loss_direction"]
                               + expected.values["loss_eos"],
                               rtol=rounding_atol(1, 1))
    # With EOS every point predicts; the last one only "stop".
    last_points = np.cumsum(expected.streamlines._lengths) - 1
    assert np.isfinite(loss).all()
    assert (expected.values["loss_direction"][last_points] == 0).all()
    assert np.isnan(expected.values["angular_error_deg"][last_points]).all()
    evaluated = evaluate_subject(model, hdf5_file, "testing")["subj-03"]
    # Other batches, same points (LOSS_REL); means in float64.
    assert loss.astype(np.float64).mean() == pytest.approx(
        evaluated["loss"], rel=LOSS_REL)
    assert expected.values["loss_eos"].astype(np.float64).mean() \
        == pytest.approx(evaluated["loss_eos"], rel=LOSS_REL)

    image = matplotlib.image.imread(str(tmp_path / "losses_histogram.png"))
    assert image.shape[:2] == (400, 4 * 500)


def test_histogram_counts_every_finite_point(eos_experiment, hdf5_file):
    model = load_model_from_params_and_state(eos_experiment + "/best_model")
    losses = compute_subject_point_losses(model, hdf5_file, "subj-02",
                                          "input", "streamlines")
    figure = draw_histograms(losses, nb_bins=7)
    for ax, (name, values) in zip(figure.axes, losses.values.items()):
        heights = [patch.get_height() for patch in ax.patches]
        assert len(heights) == 7
        assert sum(heights) == np.isfinite(values).sum()
        assert ax.get_title().startswith(f"{name}: {np.isfinite(values).sum()}")


def test_bad_inputs_are_one_line_errors(eos_experiment, hdf5_file, tmp_path,
                                        capsys):
    existing = tmp_path / "taken.trk"
    existing.write_text("keep me")
    out = str(tmp_path / "out.trk")
    cases = [
        ([str(tmp_path / "none"), hdf5_file, "subj-01", out],
         "experiment '"),
        ([eos_experiment, str(tmp_path / "none.hdf5"), "subj-01", out],
         "HDF5 file '"),
        ([eos_experiment, hdf5_file, "subj-01", str(tmp_path / "out.tck")],
         "expected one of .trk, .trx (data_per_point), found '.tck'"),
        ([eos_experiment, hdf5_file, "subj-01", str(existing)],
         "already exists; use -f"),
        ([eos_experiment, hdf5_file, "subj-01", out, "--out_histogram",
          str(existing)], "already exists; use -f"),
        ([eos_experiment, hdf5_file, "subj-99", out],
         "unknown subject id 'subj-99'"),
        ([eos_experiment, hdf5_file, "subj-01", out, "--input_group",
          "typo"], "typo"),
        # It said 'batch inputs: expected width 45 ..., found shape (N, 1)'.
        ([eos_experiment, hdf5_file, "subj-01", out, "--input_group",
          "wm_mask"], f"input group 'wm_mask' of {hdf5_file}: the model "
         "expects 45 inputs per point (45 features x 1 neighbours), found 1 "
         "features."),
        ([eos_experiment, hdf5_file, "subj-01", out, "--batch_size", "0"],
         "--batch_size': expected an integer >= 1"),
        ([eos_experiment, hdf5_file, "subj-01", out, "--nb_bins", "0"],
         "--nb_bins': expected an integer >= 1"),
        # With -f, a PNG was written over the input HDF5 file.
        ([eos_experiment, hdf5_file, "subj-01", out, "--out_histogram",
          hdf5_file, "-f"],
         f"--out_histogram '{hdf5_file}' is also an input (HDF5); give "
         "another path."),
    ]
    hdf5_bytes = open(hdf5_file, "rb").read()
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            visualize_loss_main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error, error
        assert error.count("\n") == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.trk"]
    assert open(hdf5_file, "rb").read() == hdf5_bytes


def test_subjects_without_usable_streamlines_are_one_line_errors(tmp_path):
    # A subject without streamlines failed with torch.cat's ValueError
    # traceback; a 1-point streamline with the model's batch error, which
    # named neither file nor subject.
    rng = np.random.default_rng(9)
    subjects = {name: make_example_subject(rng, nb_streamlines=4)
                for name in ("s1", "s2")}
    subjects["s1"]["streamlines"].streamlines = []
    subjects["s2"]["streamlines"].streamlines[1] = (
        subjects["s2"]["streamlines"].streamlines[1][:1])
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, testing_subjs=["s1", "s2"])
    torch.manual_seed(0)
    model = Learn2TrackModel("m", nb_features=2, rnn_layer_sizes=[8]).eval()
    expected = {
        "s1": f"HDF5 file {path}, subject 's1', group 'streamlines': "
              "expected streamlines, found none.",
        "s2": f"HDF5 file {path}, subject 's2', group 'streamlines': "
              "expected testing streamlines of at least 2 points in the "
              "model's format (a model without EOS predicts n - 1 "
              "directions), found 1 (streamline ids: 1)."}
    for subject, message in expected.items():
        with pytest.raises(DwiMLUserError) as error:
            compute_subject_point_losses(model, path, subject, "input",
                                         "streamlines")
        assert str(error.value) == message
