"""Learn2track's options as a user gives them to dwiml_train_model.py: an
option that would change nothing in the model built is refused, naming it,
before any folder is made."""
import pytest
from error_checks import assert_user_error
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_train_model import build_parser as train_parser
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.model_io import MODEL_REGISTRY
from dwi_ml.models.model_types import model_params_from_args

# Each was silently ignored: the model built was the one without it.
IGNORED_OPTIONS = [
    (["--cnn_nb_filters", "4"], "--cnn_nb_filters"),
    (["--input_embedding_key", "linear", "--input_embedding_size", "8",
      "--cnn_nb_filters", "4"], "--cnn_nb_filters"),
    (["--nb_previous_dirs", "0", "--no-normalize_prev_dirs"],
     "--no-normalize_prev_dirs"),
    (["--neighborhood_resolution", "2"], "neighborhood_resolution"),
    (["--eos_weight", "0.5"], "--eos_weight"),
    (["--eos_only_at_fibre_ends"], "--eos_only_at_fibre_ends"),
    (["--normalize_targets", "2"], "normalize_targets"),
    (["--normalize_outputs", "2"], "normalize_outputs"),
    (["--rnn_layer_sizes", "8", "--rnn_stacking", "plain"],
     "--rnn_stacking"),
    (["--model_type", "transformer_src_only", "--rnn_stacking", "plain"],
     "--rnn_stacking"),
]


def _build_model(*options):
    args = train_parser().parse_args(
        ["exps", "exp", "data.hdf5", "input", "streamlines", *options])
    model_type, params = model_params_from_args(args)
    return MODEL_REGISTRY[model_type](nb_features=4, **params)


@pytest.mark.parametrize("options, option", IGNORED_OPTIONS)
def test_an_option_without_effect_is_refused(options, option):
    with pytest.raises(DwiMLUserError) as raised:
        _build_model(*options)
    assert option in str(raised.value)


@pytest.mark.parametrize("options, expected", [
    (["--input_embedding_key", "cnn", "--input_embedding_size", "8",
      "--neighborhood_type", "grid", "--neighborhood_radius", "1",
      "--cnn_nb_filters", "4"], {"cnn_nb_filters": 4}),
    (["--nb_previous_dirs", "1", "--no-normalize_prev_dirs"],
     {"normalize_prev_dirs": False}),
    (["--neighborhood_type", "axes", "--neighborhood_radius", "1",
      "--neighborhood_resolution", "2"], {"neighborhood_resolution": 2.0}),
    (["--neighborhood_type", "axes", "--neighborhood_radius", "1"],
     {"neighborhood_resolution": 1.0}),
    (["--add_eos", "--eos_weight", "0.5"],
     {"dg_args": {"add_eos": True, "eos_weight": 0.5, "dropout": 0.0,
                  "normalize_targets": None, "normalize_outputs": None,
                  "eos_only_at_fibre_ends": False}}),
    (["--add_eos", "--eos_only_at_fibre_ends"],
     {"dg_args": {"add_eos": True, "eos_weight": 1.0, "dropout": 0.0,
                  "normalize_targets": None, "normalize_outputs": None,
                  "eos_only_at_fibre_ends": True}}),
    (["--rnn_stacking", "plain"], {"rnn_stacking": "plain"}),
    (["--rnn_layer_sizes", "8", "--dropout", "0.1", "--rnn_stacking",
      "plain"], {"rnn_stacking": "plain"}),
    ([], {"rnn_stacking": "reference"}),
    (["--dg_key", "l2-regression", "--normalize_targets", "2",
      "--normalize_outputs", "3"],
     {"dg_args": {"add_eos": False, "eos_weight": 1.0, "dropout": 0.0,
                  "normalize_targets": 2.0, "normalize_outputs": 3.0,
                  "eos_only_at_fibre_ends": False}}),
])
def test_the_same_options_where_they_apply_reach_the_model(options,
                                                           expected):
    params = _build_model(*options).params_for_checkpoint
    assert {name: params[name] for name in expected} == expected


def test_transformers_with_targets_keep_no_normalize_prev_dirs_at_k_0():
    # Their target token d_{t-1} is a previous direction even with k = 0.
    model = _build_model("--model_type", "transformer_src_tgt",
                         "--nb_previous_dirs", "0", "--no-normalize_prev_dirs")
    assert model.normalize_prev_dirs is False


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("l2t_options")),
                              nb_streamlines=20)


@pytest.mark.parametrize("options, option", IGNORED_OPTIONS[::2])
def test_refused_from_the_script_before_any_folder(tmp_path, hdf5_file,
                                                   capsys, options, option):
    assert_user_error(
        train_main, [tmp_path, "exp", hdf5_file, "input", "streamlines",
                     *options], capsys, tmp_path, option)
