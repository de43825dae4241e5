"""The Transformer options one by one, as a user gives them to the scripts:
options of another model type are refused, not silently ignored."""
import numpy as np
import pytest
import torch
from error_checks import assert_user_error
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.model_types import model_params_from_args
from dwi_ml.models.transformers import TransformerSrcOnlyModel
from dwi_ml.tracking.stopping import max_nb_points
from dwi_ml.tracking.training_facts import model_max_length_mm
from dwi_ml.training.evaluation import evaluate_model
from dwi_ml.training.experiment_builder import (
    build_dataset,
    build_loader,
    check_streamlines_fit_model,
)


def _model_params(model_type, *options):
    args = train_parser().parse_args(
        ["exps", "exp", "data.hdf5", "input", "streamlines", "--model_type",
         model_type, *options])
    return model_params_from_args(args)[1]


@pytest.mark.parametrize("model_type, option, value", [
    ("transformer_src_only", "n_layers_d", "3"),
    ("transformer_src_tgt", "n_layers_d", "3"),
    ("transformer_src_only", "target_embedding_key", "none"),
    ("transformer_src_only", "sos_token_type", "class"),
    ("transformer_original", "token_combination", "add"),
    ("transformer_src_only", "target_embedded_size", "4"),
    ("transformer_original", "rnn_key", "gru"),
    ("transformer_src_tgt", "rnn_layer_sizes", "8"),
    ("transformer_src_only", "input_embedding_size", "8"),
    ("transformer_original", "prev_dirs_embedding_key", "linear"),
    ("learn2track", "d_model", "32"),
    ("learn2track", "attention_window", "3"),
    ("learn2track", "position_encoding", "alibi"),
])
def test_an_option_of_another_model_type_is_refused(model_type, option,
                                                    value):
    # Before: each was dropped from the model's parameters without a word.
    with pytest.raises(DwiMLUserError) as raised:
        _model_params(model_type, f"--{option}", value)
    message = str(raised.value)
    assert message.startswith(f"argument --{option}: an option of "
                              f"--model_type ")
    assert f"with --model_type {model_type}" in message


def test_target_embedded_size_is_refused_with_add():
    # Before: replaced by None, the size asked for was never used.
    with pytest.raises(DwiMLUserError, match="--target_embedded_size.*"
                                             "--token_combination add"):
        _model_params("transformer_src_tgt", "--token_combination", "add",
                      "--target_embedded_size", "4")
    params = _model_params("transformer_src_tgt", "--token_combination",
                           "add")
    assert params["target_embedded_size"] is None


@pytest.mark.parametrize("model_type, options, expected", [
    ("transformer_original", ["--n_layers_d", "3", "--sos_token_type",
                              "class"],
     {"n_layers_d": 3, "sos_token_type": "class"}),
    ("transformer_src_tgt", ["--target_embedded_size", "4",
                             "--target_embedding_key", "none"],
     {"target_embedded_size": 4, "target_embedding_key": "none"}),
    # An option at its default value is accepted by every model type.
    ("transformer_src_only", ["--n_layers_d", "2", "--rnn_key", "lstm"], {}),
    ("learn2track", ["--d_model", "64", "--rnn_key", "gru"],
     {"rnn_key": "gru"}),
])
def test_options_of_the_chosen_model_type_reach_it(model_type, options,
                                                   expected):
    params = _model_params(model_type, *options)
    assert {name: params[name] for name in expected} == expected
    assert "n_layers_d" in params or model_type != "transformer_original"
    if model_type == "transformer_src_only":
        assert "n_layers_d" not in params


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("tt_options")),
                              nb_streamlines=20)


def test_refused_from_the_script_before_any_folder(tmp_path, hdf5_file,
                                                   capsys):
    assert_user_error(
        train_main, [tmp_path, "exp", hdf5_file, "input",
                     "streamlines", "--model_type", "transformer_src_only",
                     "--n_layers_d", "3"],
        capsys, tmp_path, "--n_layers_d", "transformer_original",
        "transformer_src_only")


def _longest_predictions(loader, split, add_eos):
    """Prediction points of the longest streamline of ``split``, every
    streamline read and brought to the model's format."""
    subset = loader._subset(split)
    longest = 0
    for subj_idx in range(subset.nb_subjects):
        sft_data = subset.get_subject(subj_idx).sft_data_list[0]
        streamlines = loader.resample(
            sft_data.get_streamlines(),
            np.asarray(sft_data.space_attributes[0], dtype=np.float64))
        longest = max(longest, int(max(len(s) for s in streamlines)))
    return longest if add_eos else longest - 1


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("add_eos", [False, True])
@pytest.mark.parametrize("streamline_format", [
    {}, {"step_size": 1.5}, {"step_size": 0.7}, {"nb_points": 9},
    {"compress": 0.3}])
def test_max_len_is_checked_exactly_before_training(hdf5_file, lazy,
                                                    add_eos,
                                                    streamline_format):
    # Before: a streamline beyond max_len stopped the run at its first
    # batch (possibly in validation, after a whole epoch), with the
    # experiment folder already made.
    dataset = build_dataset({"hdf5_file": hdf5_file, "lazy": lazy})

    def check(max_len):
        model = TransformerSrcOnlyModel(
            "m", dataset.nb_features[0], d_model=8, nheads=2, n_layers_e=1,
            max_len=max_len, dg_args={"add_eos": add_eos},
            **streamline_format)
        loader = build_loader(dataset, {"streamline_group": "streamlines",
                                        "input_group": "input"}, model, "cpu")
        check_streamlines_fit_model(model, loader)
        return loader

    loader = check(10_000)
    longest = {split: _longest_predictions(loader, split, add_eos)
               for split in ("training", "validation")}
    split = max(longest, key=longest.get)
    check(longest[split])
    with pytest.raises(DwiMLUserError) as raised:
        check(longest[split] - 1)
    assert str(raised.value) == (
        f"argument --max_len: expected at least {longest[split]}, the "
        f"prediction points of the longest {split} streamline in the "
        f"model's format, found {longest[split] - 1}.")


def test_max_len_refused_from_the_script_before_any_folder(tmp_path,
                                                           hdf5_file, capsys):
    assert_user_error(
        train_main, [tmp_path, "exp", hdf5_file, "input", "streamlines",
                     "--model_type", "transformer_src_only", "--d_model", "8",
                     "--nheads", "2", "--step_size", "1.5", "--max_len", "5"],
        capsys, tmp_path, "--max_len", "found 5")


def test_a_window_of_every_point_is_refused(tmp_path, hdf5_file, capsys):
    """--attention_window 5000 with max_len 1000 trained as without one."""
    message = assert_user_error(
        train_main, [tmp_path, "exp", hdf5_file, "input", "streamlines",
                     "--model_type", "transformer_src_only", "--d_model", "8",
                     "--nheads", "2", "--attention_window", "1000"],
        capsys, tmp_path)
    assert message == (
        "argument --attention_window: expected fewer points than --max_len "
        "(1000), found 1000: a window of every point is no window; leave it "
        "out.")
    assert not (tmp_path / "exp").exists()


def test_model_max_length_is_that_of_max_len_steps():
    model = TransformerSrcOnlyModel("m", 2, d_model=8, nheads=2, max_len=40)
    assert model_max_length_mm(model, 1.5, 300.0) == 60.0
    assert model_max_length_mm(model, 10.0, 300.0) == 300.0
    assert max_nb_points(model_max_length_mm(model, 1.5, 300.0), 1.5) == 41
    assert model_max_length_mm(object(), 1.5, 300.0) == 300.0


def test_tracking_validation_of_a_transformer_shorter_than_300_mm(tmp_path,
                                                                  hdf5_file):
    # Before: 40 steps of 1.5 mm (60 mm) < 300 mm: the first tracking
    # validation, after an epoch, refused '--max_length', an option the
    # training script does not have. It now tracks up to 60 mm.
    train_main([str(tmp_path), "exp", hdf5_file, "input", "streamlines",
                "--model_type", "transformer_src_only", "--d_model", "8",
                "--nheads", "2", "--n_layers_e", "1", "--step_size", "1.5",
                "--max_len", "40", "--max_epochs", "1",
                "--tracking_validation_every", "1",
                "--tracking_validation_mode", "whole_subject",
                "--tracking_validation_tracking_mask_group", "wm_mask",
                "--tracking_validation_nb_seeds", "20", "-v", "WARNING"])
    f1 = np.load(tmp_path / "exp" / "logs" / "tracking_f1.npy")
    assert f1.shape == (1,) and 0 <= f1[0] <= 1


def test_evaluation_refuses_a_subset_beyond_max_len_before_any_batch(
        hdf5_file):
    # Before: refused at the first batch holding a too long streamline,
    # after the batches before it were run.
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=False, load_validation=False,
                      load_testing=True)

    def evaluate(max_len):
        torch.manual_seed(0)
        model = TransformerSrcOnlyModel(
            "m", dataset.nb_features[0], d_model=8, nheads=2, n_layers_e=1,
            max_len=max_len, step_size=1.5).eval()
        return evaluate_model(model, dataset, "testing", "input",
                              "streamlines", batch_size=5)

    loader = build_loader(dataset, {"streamline_group": "streamlines",
                                    "input_group": "input"},
                          TransformerSrcOnlyModel("m", dataset.nb_features[0],
                                                  d_model=8, nheads=2,
                                                  step_size=1.5), "cpu")
    longest = _longest_predictions(loader, "testing", False)
    assert evaluate(longest)["all"]["n_points"] > longest
    with pytest.raises(DwiMLUserError) as raised:
        evaluate(longest - 1)
    assert str(raised.value) == (
        f"--subset testing: expected streamlines of at most the model's "
        f"max_len={longest - 1} prediction points, found {longest} (in the "
        f"model's format).")
    dataset.close()
