"""The Transformer families from the scripts: train, resume bitwise, track."""
import json

import pytest
from dipy.io.streamline import load_tractogram
from error_checks import assert_user_error
from test_preemption import assert_same_run
from training_data import make_training_hdf5

from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import main as train_main

MODEL_CLASSES = {"transformer_original": "OriginalTransformerModel",
                 "transformer_src_tgt": "TransformerSrcAndTgtModel",
                 "transformer_src_only": "TransformerSrcOnlyModel"}


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("tt_data")))


def _args(experiments, name, hdf5_file, model_type, max_epochs):
    # Dropout, augmentation and noise exercise every random stream;
    # transformer_src_tgt attends within a window of 3 points,
    # transformer_src_only with ALiBi, transformer_original has 1 decoder
    # layer (an option of that model only).
    window = {"transformer_src_tgt": ["--attention_window", "3"],
              "transformer_src_only": ["--position_encoding", "alibi"],
              "transformer_original": ["--n_layers_d", "1"]}[model_type]
    return [str(experiments), name, hdf5_file, "input", "streamlines", *window,
            "--model_type", model_type, "--max_epochs", str(max_epochs),
            "--d_model", "16", "--nheads", "2", "--n_layers_e", "1",
            "--nb_previous_dirs", "1",
            "--step_size", "1.5", "--batch_size_training", "30",
            "--batch_size_validation", "40", "--split_ratio", "0.3",
            "--reverse_ratio", "0.5", "--noise_gaussian_size_forward", "0.1",
            "--seed", "7", "-v", "WARNING"]


@pytest.mark.parametrize("model_type", sorted(MODEL_CLASSES))
def test_train_resume_track_each_transformer(tmp_path, hdf5_file,
                                             model_type, capsys):
    train_main(_args(tmp_path, "straight", hdf5_file, model_type, 3))
    train_main(_args(tmp_path, "resumed", hdf5_file, model_type, 2))
    resume_cli.main([str(tmp_path), "resumed", "--new_max_epochs", "3",
                     "-v", "WARNING"])
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")

    with open(tmp_path / "straight" / "parameters.json") as f:
        params = json.load(f)
    assert params["model_type"] == MODEL_CLASSES[model_type]
    assert params["model"]["d_model"] == 16
    assert params["model"]["attention_window"] == (
        3 if model_type == "transformer_src_tgt" else None)
    assert params["model"]["position_encoding"] == (
        "alibi" if model_type == "transformer_src_only" else "sinusoidal")
    # The family's own defaults for shared options.
    assert params["model"]["input_embedding_key"] == "linear"
    assert params["model"]["dropout"] == 0.1

    out = tmp_path / "tracked.trk"
    track_cli.main([str(tmp_path / "straight"), hdf5_file, "subj-02", "input",
                    str(out), "--tracking_mask_group", "wm_mask", "--nt",
                    "50", "--min_length", "0", "-v", "WARNING"])
    # Inside the volume (bbox check); single-point streamlines are dropped.
    tracked = load_tractogram(str(out), "same", bbox_valid_check=True)
    assert 25 <= len(tracked.streamlines) <= 50
    assert tracked.streamlines._lengths.max() > 2

    # max_len 1000 steps of 1.5 mm: 1500 mm; longer is refused up front.
    assert_user_error(
        track_cli.main, [tmp_path / "straight", hdf5_file, "subj-02",
                         "input", tmp_path / "long.trk",
                         "--tracking_mask_group", "wm_mask", "--nt", "5",
                         "--max_length", "1600"],
        capsys, tmp_path, "max_length", "max_len=1000", "1500 mm")


def test_a_model_argument_refused_is_named_as_its_option(tmp_path, hdf5_file,
                                                         capsys):
    """The models' checks name their constructor argument ('nheads'); from
    the script, the option typed (--nheads)."""
    args = _args(tmp_path, "bad", hdf5_file, "transformer_src_only", 1)
    args[args.index("--nheads") + 1] = "3"
    assert_user_error(train_main, args, capsys, tmp_path,
                      "argument --nheads: expected a divisor of d_model (16), "
                      "found 3.")
