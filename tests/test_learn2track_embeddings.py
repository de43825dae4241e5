"""Learn2track's embeddings: the CNN over a grid neighbourhood and the
embedding of the previous directions, in the model and from the scripts."""
import json

import pytest
import torch
from dipy.io.streamline import load_tractogram
from test_preemption import assert_same_run
from training_data import make_training_hdf5

from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import Learn2TrackModel
from dwi_ml.models.cnn_embedding import CNNEmbedding
from dwi_ml.models.embeddings import LinearEmbedding, NoEmbedding
from tests.tolerances import rounding_atol

NB_FEATURES = 2
GRID = dict(neighborhood_type="grid", neighborhood_radius=1,
            neighborhood_resolution=1.0)


def make_model(**kwargs):
    torch.manual_seed(0)
    args = dict(experiment_name="test", nb_features=NB_FEATURES,
                rnn_layer_sizes=[6], use_skip_connection=False)
    args.update(kwargs)
    return Learn2TrackModel(**args)


def make_batch(model, lengths=(4, 6)):
    generator = torch.Generator().manual_seed(0)
    streamlines = [5 + torch.cumsum(torch.randn(n, 3, generator=generator), 0)
                   for n in lengths]
    inputs = [torch.randn(n, model.input_size, generator=generator)
              for n in lengths]
    return inputs, streamlines


def test_cnn_input_embedding_widths():
    model = make_model(input_embedding_key="cnn", input_embedding_size=10,
                       cnn_nb_filters=3, nb_previous_dirs=2, **GRID)
    # 27 grid points of 2 features in, 10 values out, then 2 x 3 previous
    # direction values: the RNN's input is 16 wide.
    assert isinstance(model.embedding, CNNEmbedding)
    assert model.input_size == 27 * NB_FEATURES
    assert model.embedding.conv.out_channels == 3
    assert model.rnn.rnn_layers[0].input_size == 10 + 6
    inputs, streamlines = make_batch(model)
    embedded = model.embedding(torch.cat(inputs))
    assert embedded.shape == (10, 10) and torch.all(embedded >= 0)
    assert model(inputs, streamlines).shape == (3 + 5, 3)


def test_cnn_embedding_is_the_transformers_class_on_the_same_grid():
    # Learn2track's CNN gives, for the same weights, what the class gives.
    model = make_model(input_embedding_key="cnn", input_embedding_size=4,
                       cnn_nb_filters=2, **GRID)
    alone = CNNEmbedding(NB_FEATURES, 1, 0, 4, 2)
    alone.load_state_dict(model.embedding.state_dict())
    inputs, _ = make_batch(model)
    points = torch.cat(inputs)
    assert torch.equal(alone(points), model.embedding(points))


def test_prev_dirs_embedding_widths_and_values():
    model = make_model(nb_previous_dirs=3, prev_dirs_embedding_key="linear",
                       prev_dirs_embedding_size=4)
    assert isinstance(model.prev_dirs_embedding, LinearEmbedding)
    assert model.prev_dirs_embedding.linear.in_features == 9
    assert model.rnn.rnn_layers[0].input_size == NB_FEATURES + 4
    inputs, streamlines = make_batch(model)
    previous = model.compute_previous_dirs(streamlines, False)
    features = model._point_features(torch.cat(inputs)[[0, 1, 2, 4, 5, 6, 7,
                                                         8]], previous)
    # The embedded values: ReLU(W d + b) of the previous directions.
    linear = model.prev_dirs_embedding.linear
    expected = torch.relu(previous @ linear.weight.T + linear.bias)
    # Another kernel (SIMD width) may sum the 9 products and the bias in
    # another order: 10 roundings of values up to sum |W| |d| + |b|.
    with torch.no_grad():
        magnitude = float((previous.abs() @ linear.weight.abs().T
                           + linear.bias.abs()).max())
    torch.testing.assert_close(features[:, NB_FEATURES:], expected, rtol=0,
                               atol=rounding_atol(magnitude, 10))
    # Its default width is 3 k; "none" keeps the 3 k values.
    assert make_model(nb_previous_dirs=2, prev_dirs_embedding_key="linear"
                      ).prev_dirs_embedding.output_size == 6
    plain = make_model(nb_previous_dirs=2)
    assert isinstance(plain.prev_dirs_embedding, NoEmbedding)
    assert plain.rnn.rnn_layers[0].input_size == NB_FEATURES + 6


def test_embeddings_round_trip_through_parameters(tmp_path):
    model = make_model(input_embedding_key="cnn", input_embedding_size=5,
                       cnn_nb_filters=2, nb_previous_dirs=2,
                       prev_dirs_embedding_key="linear",
                       prev_dirs_embedding_size=4, **GRID).eval()
    params = model.params_for_checkpoint
    assert {key: params[key] for key in (
        "input_embedding_key", "input_embedding_size", "cnn_nb_filters",
        "prev_dirs_embedding_key", "prev_dirs_embedding_size")} == {
        "input_embedding_key": "cnn", "input_embedding_size": 5,
        "cnn_nb_filters": 2, "prev_dirs_embedding_key": "linear",
        "prev_dirs_embedding_size": 4}
    folder = str(tmp_path / "model")
    model.save_params_and_state(folder)
    loaded = Learn2TrackModel.load_model_from_params_and_state(folder)
    assert loaded.params_for_checkpoint == params
    inputs, streamlines = make_batch(model)
    with torch.no_grad():
        assert torch.equal(model(inputs, streamlines),
                           loaded(inputs, streamlines))


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_embedding_key="cnn", input_embedding_size=4,
          neighborhood_type="axes", neighborhood_radius=1,
          neighborhood_resolution=1.0), "'cnn' needs a 'grid'"),
    (dict(input_embedding_key="cnn", **GRID), "input_embedding_size"),
    (dict(input_embedding_key="cnn", input_embedding_size=4,
          cnn_nb_filters=0, **GRID), "cnn_nb_filters"),
    (dict(prev_dirs_embedding_key="linear"), "nb_previous_dirs >= 1"),
    (dict(nb_previous_dirs=1, prev_dirs_embedding_size=4),
     "prev_dirs_embedding_size"),
    (dict(nb_previous_dirs=1, prev_dirs_embedding_key="cnn"),
     "prev_dirs_embedding_key"),
])
def test_bad_embedding_args_give_user_errors(kwargs, match):
    with pytest.raises(DwiMLUserError, match=match):
        make_model(**kwargs)


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("l2t_emb_data")))


def _args(experiments, name, hdf5_file, max_epochs):
    return [str(experiments), name, hdf5_file, "input", "streamlines",
            "--max_epochs", str(max_epochs), "--neighborhood_type", "grid",
            "--neighborhood_radius", "1", "--input_embedding_key", "cnn",
            "--input_embedding_size", "8", "--cnn_nb_filters", "2",
            "--nb_previous_dirs", "2", "--prev_dirs_embedding_key", "linear",
            "--prev_dirs_embedding_size", "4", "--rnn_layer_sizes", "8",
            "--step_size", "1.5", "--batch_size_training", "30",
            "--batch_size_validation", "40", "--reverse_ratio", "0.5",
            "--dropout", "0.2", "--seed", "7", "-v", "WARNING"]


def test_cnn_learn2track_trains_resumes_bitwise_and_tracks(tmp_path,
                                                          hdf5_file):
    train_main(_args(tmp_path, "straight", hdf5_file, 3))
    train_main(_args(tmp_path, "resumed", hdf5_file, 2))
    resume_cli.main([str(tmp_path), "resumed", "--new_max_epochs", "3",
                     "-v", "WARNING"])
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    with open(tmp_path / "straight" / "parameters.json") as f:
        model_params = json.load(f)["model"]
    assert model_params["input_embedding_key"] == "cnn"
    assert model_params["prev_dirs_embedding_size"] == 4

    out = tmp_path / "tracked.trk"
    track_cli.main([str(tmp_path / "straight"), hdf5_file, "subj-02", "input",
                    str(out), "--tracking_mask_group", "wm_mask", "--nt",
                    "20", "--min_length", "0", "-v", "WARNING"])
    tracked = load_tractogram(str(out), "same", bbox_valid_check=True)
    assert 10 <= len(tracked.streamlines) <= 20
    assert tracked.streamlines._lengths.max() > 2


def test_cnn_without_grid_is_one_line_from_the_script(tmp_path, hdf5_file,
                                                      capsys):
    args = _args(tmp_path, "bad", hdf5_file, 1)
    args[args.index("grid")] = "axes"
    with pytest.raises(SystemExit) as exit_info:
        train_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'cnn' needs a 'grid'" in err


def test_prev_dirs_embedding_refused_for_transformers(tmp_path, hdf5_file,
                                                      capsys):
    with pytest.raises(SystemExit):
        train_main([str(tmp_path), "tr", hdf5_file, "input", "streamlines",
                    "--model_type", "transformer_src_only",
                    "--nb_previous_dirs", "1", "--prev_dirs_embedding_key",
                    "linear", "-v", "WARNING"])
    assert "an option of --model_type learn2track" in capsys.readouterr().err
