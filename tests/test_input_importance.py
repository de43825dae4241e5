"""dwiml_visualize_input_importance.py: gradient x input attribution of a
trained model's inputs, per column, feature, neighbour and group."""
import json
import math
import os
import shutil

import matplotlib.image
import numpy as np
import pytest
import torch
from error_checks import assert_user_error
from tolerances import EPS64, rounding_atol
from training_data import TINY_TRAINING, make_training_hdf5

import dwi_ml
from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_input_importance import main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.manifest import write_manifest
from dwi_ml.models import load_model_from_params_and_state
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.monitoring.input_importance import (
    GRADIENT,
    GRADIENT_X_INPUT,
    MEASURES,
    FeatureGroup,
    InputImportance,
    compute_input_importance,
    draw_importance,
    importance_as_dict,
    offset_label,
    parse_feature_groups,
)
from dwi_ml.training.evaluation import evaluate_model
from dwi_ml.training.experiment_builder import build_loader
from tests.reference_hdf5 import make_example_subject, write_reference_hdf5

NB_FEATURES = 45  # of the synthetic 'input' group
AXES_OFFSETS_MM = [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0],
                   [0, 0, 1], [0, 0, -1]]


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("importance")),
                              nb_streamlines=40)


@pytest.fixture(scope="module")
def l2t_experiment(hdf5_file, tmp_path_factory):
    """One LSTM layer of 8 that alone reads the inputs (no skip
    connection), over a 7-point neighbourhood, without EOS."""
    folder = tmp_path_factory.mktemp("experiments")
    train_main([str(folder), "l2t", hdf5_file, "input", "streamlines",
                *TINY_TRAINING, "--no_skip_connection", "--neighborhood_type",
                "axes", "--neighborhood_radius", "1"])
    return str(folder / "l2t")


@pytest.fixture(scope="module")
def transformer_experiment(hdf5_file, tmp_path_factory):
    """A tiny Transformer whose inputs go through a CNN embedding."""
    folder = tmp_path_factory.mktemp("experiments")
    train_main([str(folder), "tt", hdf5_file, "input", "streamlines",
                "--max_epochs", "1", "--batch_size_training", "20",
                "--step_size", "1.5", "--model_type", "transformer_src_only",
                "--d_model", "8", "--nheads", "2", "--n_layers_e", "1",
                "--neighborhood_type", "grid", "--neighborhood_radius", "1",
                "--input_embedding_key", "cnn", "--cnn_nb_filters", "2",
                "--add_eos", "-v", "WARNING"])
    return str(folder / "tt")


def run_script(experiment, hdf5_file, subject, folder, *options):
    """Run the script; return its JSON values and the PNG's pixels."""
    out_png, out_json = str(folder / "importance.png"), str(
        folder / "importance.json")
    main([experiment, hdf5_file, subject, out_png, "--out_json", out_json,
          "-f", *options])
    with open(out_json) as f:
        values = json.load(f)
    return values, matplotlib.image.imread(out_png)


def test_features_the_model_cannot_read_get_exactly_zero(
        l2t_experiment, hdf5_file, tmp_path):
    # The LSTM's input weights are its only ones that read the inputs:
    # columns k * F + f of weight_ih; keep feature 3's, zero the others'.
    kept = 3
    experiment = str(tmp_path / "edited")
    shutil.copytree(l2t_experiment, experiment)
    best_model = experiment + "/best_model"
    model = load_model_from_params_and_state(best_model)
    weights = model.rnn.rnn_layers[0].weight_ih_l0
    zeroed = torch.arange(model.input_size) % NB_FEATURES != kept
    with torch.no_grad():
        weights[:, :model.input_size][:, zeroed] = 0
    model.save_params_and_state(best_model)
    write_manifest(best_model)

    values, _ = run_script(experiment, hdf5_file, "subj-01", tmp_path)
    assert values["model"] == "best"
    for measure in MEASURES:
        per_feature = np.array(values["per_feature"][measure])
        assert (np.delete(per_feature, kept) == 0).all()
        assert per_feature[kept] > 0
        per_column = np.array(values["per_column"][measure])
        assert (per_column[zeroed.numpy()] == 0).all()
        assert (per_column[~zeroed.numpy()] > 0).all()
    # The checkpoint's model was not edited: it reads every feature.
    latest, _ = run_script(experiment, hdf5_file, "subj-01", tmp_path,
                           "--use_latest_epoch")
    assert latest["model"] == "latest epoch"
    assert (np.array(latest["per_feature"][GRADIENT_X_INPUT]) > 0).all()


def test_aggregates_sum_the_columns_over_every_prediction_point(
        l2t_experiment, hdf5_file, tmp_path, capsys):
    capsys.readouterr()
    values, image = run_script(
        l2t_experiment, hdf5_file, "subj-02", tmp_path, "--batch_size", "9",
        "--feature_names", "low", "0", "mid", "10", "high", "40")
    assert capsys.readouterr().out == (
        f"Saved the figure in {tmp_path / 'importance.png'} and the values "
        f"in {tmp_path / 'importance.json'}.\n")
    assert values["subject"] == "subj-02"
    assert values["inputs"] == {
        "experiment_path": os.path.abspath(l2t_experiment),
        "hdf5_file": os.path.abspath(hdf5_file), "subject_id": "subj-02"}
    assert values["options"]["batch_size"] == 9
    assert values["argv"][-2:] == ["high", "40"]
    assert values["dwi_ml_version"] == dwi_ml.__version__
    assert (values["nb_features"], values["nb_neighbours"]) == (NB_FEATURES,
                                                                7)
    assert values["per_neighbour"]["offsets_mm"] == AXES_OFFSETS_MM
    assert all(math.copysign(1, value) == 1 for offset in
               values["per_neighbour"]["offsets_mm"] for value in offset
               if value == 0)   # written "0.0", not "-0.0"
    for measure in MEASURES:
        columns = np.array(values["per_column"][measure]).reshape(
            7, NB_FEATURES)
        assert np.isfinite(columns).all() and (columns > 0).all()
        per_feature = np.array(values["per_feature"][measure])
        per_neighbour = np.array(values["per_neighbour"][measure])
        # Sums of float64 means: one rounding per term.
        np.testing.assert_allclose(per_feature, columns.sum(axis=0), rtol=0,
                                   atol=rounding_atol(per_feature.max(), 7,
                                                      EPS64))
        np.testing.assert_allclose(per_neighbour, columns.sum(axis=1),
                                   rtol=0, atol=rounding_atol(
                                       per_neighbour.max(), NB_FEATURES,
                                       EPS64))
        groups = values["per_group"]
        for name, start, stop in [("low", 0, 10), ("mid", 10, 40),
                                  ("high", 40, 45)]:
            assert groups[name]["first_feature"] == start
            assert groups[name]["nb_features"] == stop - start
            assert groups[name][measure] == pytest.approx(
                per_feature[start:stop].sum(), rel=0,
                abs=rounding_atol(per_feature.sum(), stop - start, EPS64))
    # Every streamline (40 < 1000), each point that predicts: the points
    # of the subject's loss.
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=False, load_testing=False)
    model = load_model_from_params_and_state(l2t_experiment + "/best_model")
    try:
        evaluated = evaluate_model(model, dataset, "validation", "input",
                                   "streamlines")
    finally:
        dataset.close()
    assert values["nb_streamlines"] == 40
    assert values["nb_points"] == evaluated["subj-02"]["n_points"]
    # Two panels (features, neighbours) of 10 x 4 inches at 100 dpi.
    assert image.shape[:2] == (800, 1000)


def direct_attribution(model, hdf5_file, subject):
    """Mean |dL/dx * x| and |dL/dx| per column, one streamline at a time
    (a model without EOS: its last point predicts nothing)."""
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject)
    try:
        loader = build_loader(dataset, {"streamline_group": "streamlines",
                                        "input_group": "input"}, model, "cpu")
        nb_streamlines = dataset.training_set.get_subject(0) \
            .sft_data_list[0].nb_streamlines
        batch = loader.load_batch(BatchRequest(
            "training", 0, 0, [(0, np.arange(nb_streamlines))]))
    finally:
        dataset.close()
    sums, nb_points = {name: 0 for name in MEASURES}, 0
    for inputs, streamline in zip(batch.inputs_list(),
                                  batch.target_streamlines()):
        inputs = inputs.double().requires_grad_(True)
        loss, n_points = model.compute_loss(model([inputs], [streamline]),
                                            [streamline])
        gradient, = torch.autograd.grad(loss * n_points, inputs)
        gradient, inputs = gradient[:-1], inputs.detach()[:-1]
        sums[GRADIENT_X_INPUT] += (gradient * inputs).abs().sum(0)
        sums[GRADIENT] += gradient.abs().sum(0)
        nb_points += n_points
    return {name: (total / nb_points).numpy() for name, total in sums.items()}


def test_columns_are_the_mean_gradient_times_input_of_each_point(
        l2t_experiment, hdf5_file):
    # In float64 the batches of 7 streamlines and the streamlines one by
    # one agree up to logic, not float32 rounding.
    model = load_model_from_params_and_state(
        l2t_experiment + "/best_model").double()
    importance = compute_input_importance(model, hdf5_file, "subj-01",
                                          "input", "streamlines",
                                          batch_size=7)
    expected = direct_attribution(model, hdf5_file, "subj-01")
    for name in MEASURES:
        # A column sums ~1000 points' values (1000 roundings), each from a
        # gradient through the LSTM's recurrence over ~30 points of
        # ~330-term sums (relative error ~1000 roundings): 2000 in all
        # (float32 rounding would be ~5e9).
        np.testing.assert_allclose(
            importance.values[name], expected[name], rtol=0,
            atol=rounding_atol(np.abs(expected[name]).max(), 2000, EPS64))


def test_a_transformer_with_a_cnn_embedding_gets_every_column(
        transformer_experiment, hdf5_file, tmp_path):
    values, image = run_script(transformer_experiment, hdf5_file, "subj-03",
                               tmp_path, "--max_streamlines", "15",
                               "--batch_size", "4")
    assert values["nb_streamlines"] == 15
    assert values["nb_neighbours"] == 27
    assert values["per_neighbour"]["offsets_mm"][0] == [0, 0, 0]
    for measure in MEASURES:
        columns = np.array(values["per_column"][measure])
        assert columns.shape == (27 * NB_FEATURES,)
        assert np.isfinite(columns).all() and (columns >= 0).all()
        assert columns.max() > 0
    assert values["per_group"] == {}
    assert image.shape[:2] == (800, 1000)


def hand_made_importance(nb_neighbours):
    """F = 4 features; columns 0, 1, ... (gradient: 10 times more)."""
    columns = np.arange(4.0 * nb_neighbours)
    return InputImportance({GRADIENT_X_INPUT: columns,
                            GRADIENT: 10 * columns}, 4,
                           np.array(AXES_OFFSETS_MM[:nb_neighbours]) * 1.5,
                           nb_points=12, nb_streamlines=3)


def test_feature_groups_on_a_hand_made_case():
    groups = parse_feature_groups(["A", "0", "B", "1", "C", "3"], 4)
    assert groups == [FeatureGroup("A", 0, 1), FeatureGroup("B", 1, 3),
                      FeatureGroup("C", 3, 4)]
    assert parse_feature_groups(None, 4) == []
    # Columns k * F + f: neighbour 0 holds 0..3, neighbour 1 holds 4..7.
    importance = hand_made_importance(2)
    np.testing.assert_array_equal(importance.per_feature(GRADIENT_X_INPUT),
                                  [4, 6, 8, 10])
    np.testing.assert_array_equal(importance.per_neighbour(GRADIENT),
                                  [60, 220])
    np.testing.assert_array_equal(
        importance.per_group(GRADIENT_X_INPUT, groups), [4, 14, 10])
    values = importance_as_dict(importance, groups)
    assert values["per_group"] == {
        "A": {"first_feature": 0, "nb_features": 1, GRADIENT_X_INPUT: 4.0,
              GRADIENT: 40.0},
        "B": {"first_feature": 1, "nb_features": 2, GRADIENT_X_INPUT: 14.0,
              GRADIENT: 140.0},
        "C": {"first_feature": 3, "nb_features": 1, GRADIENT_X_INPUT: 10.0,
              GRADIENT: 100.0}}
    assert values["per_neighbour"] == {
        "offsets_mm": [[0, 0, 0], [1.5, 0, 0]], GRADIENT_X_INPUT: [6, 22],
        GRADIENT: [60, 220]}
    assert values["per_column"][GRADIENT] == list(range(0, 80, 10))
    assert (values["nb_points"], values["nb_streamlines"]) == (12, 3)


def test_figure_bars_are_the_aggregates():
    groups = parse_feature_groups(["A", "0", "B", "1", "C", "3"], 4)
    figure = draw_importance(hand_made_importance(2), groups)
    features, neighbours = figure.axes
    assert [bar.get_height() for bar in features.patches] == [4, 6, 8, 10]
    colours = [bar.get_facecolor() for bar in features.patches]
    assert colours[1] == colours[2] and len(set(colours)) == 3
    assert [text.get_text() for text in features.get_legend().get_texts()] \
        == ["A", "B", "C"]
    assert [bar.get_height() for bar in neighbours.patches] == [6, 22]
    assert [label.get_text() for label in neighbours.get_xticklabels()] \
        == ["(0, 0, 0)", "(+1.5, 0, 0)"]
    assert offset_label([0, -1, 2.5]) == "(0, -1, +2.5)"
    # Without a neighbourhood, the features alone.
    assert len(draw_importance(hand_made_importance(1)).axes) == 1


def test_bad_inputs_are_one_line_errors(l2t_experiment, hdf5_file, tmp_path,
                                        capsys):
    taken_png, taken_json = tmp_path / "taken.png", tmp_path / "taken.json"
    taken_png.write_text("keep me")
    taken_json.write_text("{}")
    out = tmp_path / "out.png"
    run = [l2t_experiment, hdf5_file, "subj-01", out]
    cases = [
        ([tmp_path / "none", hdf5_file, "subj-01", out], ["experiment '"]),
        ([l2t_experiment, hdf5_file, "subj-99", out],
         ["unknown subject id 'subj-99'"]),
        ([l2t_experiment, hdf5_file, "subj-01", taken_png],
         ["already exists; use -f"]),
        ([*run, "--out_json", taken_json], ["--out_json", "already exists"]),
        ([l2t_experiment, hdf5_file, "subj-01", tmp_path / "out.jpg"],
         ["expected the extension .png, found '.jpg'"]),
        ([*run, "--out_json", tmp_path / "values.txt"],
         ["--out_json", "expected the extension .json"]),
        ([*run, "--max_streamlines", "0"],
         ["--max_streamlines", "expected an integer >= 1"]),
        ([*run, "--feature_names", "T1", "0", "FA"],
         ["--feature_names: expected pairs NAME START, found 3 values."]),
        ([*run, "--feature_names", "T1", "zero"],
         ["first feature of 'T1' as an integer, found 'zero'"]),
        ([*run, "--feature_names", "T1", "1", "FA", "2"],
         ["first group to start at feature 0", "'T1' at 1"]),
        ([*run, "--feature_names", "T1", "0", "FA", "45"],
         ["below the model's 45 input features, found 'FA' at 45"]),
        ([*run, "--feature_names", "T1", "0", "FA", "5", "MD", "3"],
         ["increasing starts, found 'MD' at 3 after 5"]),
        ([*run, "--feature_names", "T1", "0", "FA", "5", "FA", "7"],
         ["distinct names, found FA more than once"]),
    ]
    for argv, expected in cases:
        assert_user_error(main, argv, capsys, tmp_path, *expected)
    assert taken_png.read_text() == "keep me"


def test_a_subject_without_streamlines_is_a_user_error(tmp_path):
    rng = np.random.default_rng(9)
    subjects = {"s1": make_example_subject(rng, nb_streamlines=4)}
    subjects["s1"]["streamlines"].streamlines = []
    path = str(tmp_path / "data.hdf5")
    write_reference_hdf5(path, subjects, testing_subjs=["s1"])
    model = Learn2TrackModel("m", nb_features=2, rnn_layer_sizes=[8]).eval()
    with pytest.raises(DwiMLUserError) as error:
        compute_input_importance(model, path, "s1", "input", "streamlines")
    assert str(error.value) == (f"HDF5 file {path}, subject 's1', group "
                                "'streamlines': expected streamlines, found "
                                "none.")
