"""A hand-edited parameters.json is refused on resume in one line.

A bad value, an unknown key or a section that is not an object gave a
TypeError or ValueError traceback (exit 1), and a negative seed was taken.
"""
import json
import shutil

import pytest
from file_tree import run_refused, snapshot
from training_data import TINY_TRAINING, make_trained_experiment

from dwi_ml.cli import resume_training_from_checkpoint as resume_cli
from dwi_ml.cli.dwiml_train_model import (
    INT_MINIMUMS,
    build_parser,
    check_saved_sections,
)
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.models.model_types import MODEL_TYPES, model_params_from_args
from dwi_ml.training.saved_parameters import check_saved_parameters


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_trained_experiment(tmp_path_factory.mktemp("saved_params"))


def _edited_copy(data, folder, edit):
    """A copy of the trained experiment in ``folder``/exp, its
    parameters.json changed by ``edit(params)``."""
    experiment = folder / "exp"
    shutil.copytree(data["experiment"], experiment)
    path = experiment / "parameters.json"
    params = json.loads(path.read_text())
    edit(params)
    path.write_text(json.dumps(params))
    return str(experiment)


def _set(section, key, value):
    def edit(params):
        params[section][key] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_set("trainer", "seed", None),
     "trainer.seed: expected an integer >= 0, found None."),
    (_set("trainer", "seed", "abc"),
     "trainer.seed: expected an integer >= 0, found 'abc'."),
    (_set("trainer", "seed", 1.5),
     "trainer.seed: expected an integer >= 0, found 1.5."),
    (_set("trainer", "seed", -1),
     "trainer.seed: expected an integer >= 0, found -1."),
    (_set("trainer", "foo", 1), "trainer: unknown key 'foo' "
     "(DWIMLTrainerOneInput takes no such argument): remove it."),
    (lambda params: params.update(trainer=[1]),
     "trainer: expected a JSON object, found list [1]."),
    (_set("trainer", "optimizer", "Foo"), "trainer.optimizer: expected one "
     "of ['Adam', 'AdamW', 'RAdam', 'SGD'], found 'Foo'."),
    (_set("trainer", "weight_decay", "x"),
     "trainer.weight_decay: expected a number, found 'x'."),
    (_set("sampler", "cycles", 0),
     "sampler.cycles: expected an integer >= 1, found 0."),
    (_set("sampler", "batch_size_training", 2.5),
     "sampler.batch_size_training: expected a finite, positive integer "
     "number of streamlines, found 2.5."),
    (_set("sampler", "bar", 2),
     "sampler: unknown key 'bar' (BatchSampler takes no such argument): "
     "remove it."),
    (_set("loader", "split_ratio", 2),
     "loader.split_ratio: expected a number in [0, 1], found 2."),
    (_set("dataset", "lazy", "yes"),
     "dataset.lazy: expected True or False, found 'yes'."),
    # The trainer's default (the model's rate) is resolved by a run only.
    (lambda params: params["trainer"].pop("learning_rate"),
     "trainer: expected the key 'learning_rate' (every training saves "
     "it), found none."),
    # Taken from the loader's default (no reversal), not the script's.
    (lambda params: params["loader"].pop("reverse_ratio"),
     "loader: expected the key 'reverse_ratio' (every training saves it; "
     "BatchLoaderOneInput's default, 0.0, is not the script's), found "
     "none."),
    (_set("model", "rnn_layer_sizes", [0]),
     "model.rnn_layer_sizes: expected an integer >= 1, found 0."),
    (_set("model", "nope", 1), "model: unknown key 'nope' "
     "(Learn2TrackModel takes no such argument): remove it."),
    # Tracking validation, off (null) in this run: its section built the
    # callback with a TypeError traceback, and nothing checked the metric.
    (lambda params: params.update(tracking_validation=[1]),
     "tracking_validation: expected a JSON object, found list [1]."),
    (lambda params: params.update(tracking_validation={"every": 0}),
     "tracking_validation: argument '--tracking_validation_every': "
     "expected an integer >= 1, got 0."),
    (lambda params: params.update(tracking_validation={"every": 1, "n": 2}),
     "tracking_validation: unknown key 'n' (TrackingValidationParams takes "
     "no such argument): remove it."),
    (lambda params: params.update(tracking_validation={"mode": "generation"}),
     "tracking_validation: expected the key 'every' "
     "(TrackingValidationParams needs it), found none."),
    (_set("trainer", "best_model_metric", "tracking_f1"),
     "trainer.best_model_metric: argument --best_model_metric: "
     "'tracking_f1' is a tracking metric; expected --tracking_validation_every"
     " N, found tracking validation off."),
])
def test_resume_refuses_a_bad_saved_value(tmp_path, data, capsys, edit,
                                          expected):
    experiment = _edited_copy(data, tmp_path, edit)
    before = snapshot(tmp_path)
    message = run_refused(resume_cli.main, [str(tmp_path), "exp",
                                            "--new_max_epochs", "2"], capsys)
    assert message.split(": error: ", 1)[1] == (
        f"parameters.json of {experiment}: {expected}")
    assert snapshot(tmp_path) == before


def test_saved_parameters_of_a_run_pass(data):
    params = read_parameters(data["experiment"])
    check_saved_sections(params, data["experiment"])
    # A value that the option reads from its text 'none' (no clipping).
    params["trainer"]["clip_grad"] = None
    check_saved_sections(params, data["experiment"])


def test_resume_if_exists_names_the_model_options_it_ignores(
        tmp_path, data, capsys):
    """Changed model options were ignored without a word, while changed
    trainer options were named; options not given are never named."""
    shutil.copytree(data["experiment"], tmp_path / "exp")
    argv = [str(tmp_path), "exp", data["hdf5"], "input", "streamlines",
            *TINY_TRAINING, "--resume_if_exists"]
    capsys.readouterr()
    train_main(argv)  # the same command line: finished, nothing ignored
    assert "ignored" not in capsys.readouterr().err
    sizes = argv.index("--rnn_layer_sizes") + 1
    argv[sizes:sizes + 1] = ["32", "32"]
    train_main([*argv, "--learning_rate", "0.1", "--add_eos",
                "--split_ratio", "0.2"])
    warning = capsys.readouterr().err.strip().splitlines()[0]
    assert ("ignored: --split_ratio 0.2 (saved: 0.0), --rnn_layer_sizes "
            "32 32 (saved: 8), --add_eos (saved: not given), "
            "--learning_rate 0.1 (saved: 0.005).") in warning
    # Typed at its default, 10, but saved as 1: named too (it was taken for
    # an option not given).
    epochs = argv.index("--max_epochs") + 1
    argv[epochs] = "10"
    train_main(argv)
    warning = capsys.readouterr().err.strip().splitlines()[0]
    assert "--max_epochs 10 (saved: 1)" in warning


_T = ["--d_model", "16", "--nheads", "2", "--n_layers_e", "1"]


@pytest.mark.parametrize("options", [
    [],
    # Saved prev_dirs_embedding_size 0 (3 x 0 directions), which the
    # option's minimum of 1 refused: such a run could never be resumed.
    ["--nb_previous_dirs", "0"],
    ["--nb_previous_dirs", "0", "--rnn_key", "gru", "--dg_key",
     "sphere-classification", "--add_eos"],
    ["--prev_dirs_embedding_key", "linear", "--prev_dirs_embedding_size", "4"],
    ["--neighborhood_type", "grid", "--neighborhood_radius", "1",
     "--input_embedding_key", "cnn", "--input_embedding_size", "8"],
    ["--nb_points", "12", "--dg_key", "gaussian-mixture"],
    ["--model_type", "transformer_src_only", *_T, "--position_encoding",
     "none", "--attention_window", "4", "--nb_previous_dirs", "0"],
    ["--model_type", "transformer_src_tgt", *_T],
    # Saved target_embedded_size None ('add' takes none), which the
    # option's default of 8 refused.
    ["--model_type", "transformer_src_tgt", *_T, "--token_combination",
     "add", "--sos_token_type", "class", "--dg_key",
     "sphere-classification", "--add_eos"],
    ["--model_type", "transformer_src_tgt", *_T, "--target_embedding_key",
     "none", "--target_embedded_size", "3"],
    ["--model_type", "transformer_original", *_T, "--n_layers_d", "1",
     "--dg_key", "fisher-von-mises", "--norm_first"],
])
def test_what_training_saves_a_resume_accepts(options):
    """Every model a training builds saves parameters that the resume's
    check takes (each option's type and minimum, or the model's own
    constructor where the saved value is outside the option's range)."""
    parser = build_parser()
    args = parser.parse_args(["exps", "exp", "data.hdf5", "input",
                              "streamlines", *options])
    class_name, model_params = model_params_from_args(args)
    model = MODEL_TYPES[args.model_type](nb_features=5, **model_params)
    params = {"model_type": class_name, "model": model.params_for_checkpoint}
    check_saved_parameters(params, "exps/exp", parser, INT_MINIMUMS)


def test_a_model_value_outside_its_option_names_the_models_reason(tmp_path):
    # The constructor decides, with its own message.
    parser = build_parser()
    args = parser.parse_args(["exps", "exp", "data.hdf5", "input",
                              "streamlines", "--nb_previous_dirs", "2"])
    class_name, model_params = model_params_from_args(args)
    saved = MODEL_TYPES["learn2track"](nb_features=5, **model_params
                                       ).params_for_checkpoint
    saved["prev_dirs_embedding_size"] = 0
    with pytest.raises(DwiMLUserError) as error:
        check_saved_parameters({"model_type": class_name, "model": saved},
                               "exps/exp", parser, INT_MINIMUMS)
    assert str(error.value) == (
        "parameters.json of exps/exp: model: argument "
        "'prev_dirs_embedding_size': expected None or 6 (3 * "
        "nb_previous_dirs) with prev_dirs_embedding_key 'none', found 0.")
