"""Models called from Python name what is wrong with their inputs."""
import json
import logging
import os
import shutil

import pytest
import torch
from training_data import make_trained_experiment

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.model_io import (
    MODEL_REGISTRY,
    load_model_from_params_and_state,
    register_model,
)
from dwi_ml.models.transformers import TransformerSrcOnlyModel


def _streamlines():
    torch.manual_seed(0)
    return [torch.cumsum(torch.rand(n, 3), dim=0) + 1.0 for n in (5, 3)]


def _model(**options):
    torch.manual_seed(0)
    return Learn2TrackModel("m", nb_features=4, rnn_layer_sizes=[8],
                            **options)


def test_compute_loss_refuses_outputs_of_another_width_or_count():
    """Extra columns were ignored (the same loss); a 4-wide EOS output was
    read by a 3-wide model."""
    model = _model()
    streamlines = _streamlines()
    outputs = torch.randn(6, model.output_size)  # 4 + 2 predictions
    loss, n_points = model.compute_loss(outputs, streamlines)
    assert n_points == 6 and torch.isfinite(loss)
    wider = torch.cat([outputs, torch.randn(6, 7)], dim=1)
    with pytest.raises(DwiMLUserError, match=(
            r"^Learn2TrackModel.compute_loss: expected outputs of shape "
            r"\(M, 3\) \(the model's output_size\), found shape \(6, 10\)")):
        model.compute_loss(wider, streamlines)
    with pytest.raises(DwiMLUserError, match=(
            r"expected one row of outputs per prediction of the streamlines "
            r"\(6: n - 1 per streamline\), found 5")):
        model.compute_loss(outputs[:5], streamlines)
    with pytest.raises(DwiMLUserError, match="found ndarray"):
        model.compute_loss(outputs.numpy(), streamlines)


def test_tracking_directions_refuse_outputs_of_another_width():
    """A regression model returned (2, 2) 'directions'."""
    with pytest.raises(DwiMLUserError, match=(
            r"get_tracking_directions: expected outputs of shape \(M, 3\)")):
        _model().get_tracking_directions(torch.randn(2, 2))


@pytest.mark.parametrize("options, message", [
    ({"dg_args": {"add_eos": "no"}},  # was read as True
     "argument 'add_eos': expected True or False, got 'no'."),
    ({"dg_args": [1]},
     "argument 'dg_args': expected a dict of the getter's options, found "
     "list [1]."),
    ({"use_layer_norm": "yes"},
     "argument 'use_layer_norm': expected True or False, got 'yes'.")])
def test_model_options_that_are_no_bools_or_dicts_are_named(options,
                                                            message):
    with pytest.raises(DwiMLUserError) as refused:
        _model(**options)
    assert message in str(refused.value)


def test_dropout_that_does_nothing_is_said(caplog):
    """One RNN layer stacked as the reference's: dropout is between layers,
    so there is none (training gave the same outputs for any seed)."""
    with caplog.at_level(logging.WARNING):
        model = _model(dropout=0.5)
        model.eval()  # tracking, evaluation: nothing to say
        assert "does nothing" not in caplog.text
        model.train()
        model.train()
    assert caplog.text.count("dropout 0.5 does nothing with one RNN "
                             "layer") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _model(dropout=0.5, rnn_stacking="plain").train()
        Learn2TrackModel("m", nb_features=4, rnn_layer_sizes=[8, 8],
                         dropout=0.5).train()
    assert "does nothing" not in caplog.text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained_experiment(tmp_path_factory.mktemp("model_io"))


def test_a_model_saved_again_in_its_folder_loads(trained, tmp_path):
    """The folder's manifest named the replaced files as corrupt."""
    best = tmp_path / "best_model"
    shutil.copytree(os.path.join(trained["experiment"], "best_model"), best)
    model = load_model_from_params_and_state(str(best))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_params_and_state(str(best))
    again = load_model_from_params_and_state(str(best))
    for got, saved in zip(again.parameters(), model.parameters()):
        assert torch.equal(got, saved)
    assert (best / "best_epoch.json").is_file()  # still in the manifest


def test_a_model_is_never_saved_over_an_experiment(trained, tmp_path):
    """It replaced the experiment's parameters.json: no resume after."""
    experiment = tmp_path / "exp"
    shutil.copytree(trained["experiment"], experiment)
    before = (experiment / "parameters.json").read_bytes()
    model = load_model_from_params_and_state(str(experiment / "best_model"))
    with pytest.raises(DwiMLUserError, match=(
            r"model folder '.*exp' is an experiment \(its parameters.json "
            r"would be replaced, or written among its run's folders\); "
            r"expected a folder of its own")):
        model.save_params_and_state(str(experiment))
    assert (experiment / "parameters.json").read_bytes() == before
    # A trainer built in Python writes no parameters.json or marker.
    (experiment / "parameters.json").unlink()
    (experiment / ".dwi_ml_output.json").unlink(missing_ok=True)
    with pytest.raises(DwiMLUserError, match="is an experiment"):
        model.save_params_and_state(str(experiment))
    assert not (experiment / "parameters.json").exists()


def _define(name, module):
    """A model class of ``name`` defined in ``module`` (as a notebook cell
    or a file would)."""
    namespace = {"Learn2TrackModel": Learn2TrackModel, "__name__": module}
    exec(f"class {name}(Learn2TrackModel):\n    pass\n", namespace)
    cls = namespace[name]
    cls.__qualname__ = name
    return cls


def test_model_class_names_are_not_taken_over():
    """A class of your own named Learn2TrackModel replaced the real one
    for every load; a cell run twice made earlier instances unsavable with
    a message saying 'not registered'."""
    with pytest.raises(DwiMLUserError, match=(
            r"model class name 'Learn2TrackModel' is taken by "
            r"dwi_ml.models.learn2track.Learn2TrackModel, found another in "
            r"notebook.Learn2TrackModel; rename your class")):
        register_model(_define("Learn2TrackModel", "notebook"))
    assert MODEL_REGISTRY["Learn2TrackModel"] is Learn2TrackModel
    first = register_model(_define("CellModel", "__main__"))
    model = first("m", nb_features=4, rnn_layer_sizes=[8])
    try:
        register_model(_define("CellModel", "__main__"))  # the cell again
        with pytest.raises(DwiMLUserError, match=(
                "an instance of an earlier definition of the class")):
            model.save_params_and_state("unused")
    finally:
        del MODEL_REGISTRY["CellModel"]


def test_a_tracking_step_that_breaks_the_contract_is_named():
    """Wrong widths and counts were shape errors from inside torch; a
    Transformer step whose streamlines missed the last step's point ran,
    reading the wrong positions."""
    model = _model().eval()
    seeds = [torch.rand(1, 3) + 1.0 for _ in range(2)]
    with pytest.raises(DwiMLUserError, match=(
            r"^forward_step: expected step_inputs of shape \(N, 4\) "
            r"\(nb_features \* nb_neighbours\), found shape \(2, 5\)")):
        model.forward_step(torch.rand(2, 5), seeds)
    with pytest.raises(DwiMLUserError, match=(
            r"expected partial_streamlines of the 2 streamlines of "
            r"step_inputs.*found 1 streamlines, the first of shape \(1, 3\)")):
        model.forward_step(torch.rand(2, 4), seeds[:1])
    transformer = TransformerSrcOnlyModel(
        "t", nb_features=4, d_model=8, nheads=2, max_len=10).eval()
    with torch.no_grad():
        _, cache = transformer.forward_step(torch.rand(2, 4), seeds)
        with pytest.raises(DwiMLUserError, match=(
                "expected streamlines of 2 points at this step .*append "
                "each step's new point.*found 1")):
            transformer.forward_step(torch.rand(2, 4), seeds, cache)


def test_model_folder_arguments_are_named(trained, tmp_path):
    """None was a TypeError of os.path; a file in place of the folder a
    FileExistsError; a value the model refuses did not name the file."""
    with pytest.raises(DwiMLUserError, match=(
            r"^model folder: expected a path .*found NoneType None")):
        load_model_from_params_and_state(None)
    model = load_model_from_params_and_state(
        os.path.join(trained["experiment"], "best_model"))
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(DwiMLUserError, match=(
            r"model folder '.*a_file': expected a folder \(or none\), found "
            r"a file")):
        model.save_params_and_state(str(tmp_path / "a_file"))
    assert (tmp_path / "a_file").read_text() == "mine"
    folder = tmp_path / "saved"
    model.save_params_and_state(str(folder))
    params = json.loads((folder / "parameters.json").read_text())
    params["dropout"] = 1.5
    (folder / "parameters.json").write_text(json.dumps(params))
    with pytest.raises(DwiMLUserError, match=(
            r"^.*saved.parameters.json: argument 'dropout': expected")):
        load_model_from_params_and_state(str(folder))


def test_transformers_compute_in_their_dtype_as_learn2track():
    """float64 inputs to a float32 Transformer (or float32 batches to a
    model.double()) failed 13 frames deep; Learn2track casts them."""
    streamlines = _streamlines()
    inputs = [torch.rand(len(s), 4) for s in streamlines]
    model = TransformerSrcOnlyModel("t", nb_features=4, d_model=8, nheads=2,
                                    max_len=10).eval()
    with torch.no_grad():
        expected = model(inputs, streamlines)
        # float32 values in float64: cast back exactly, the same outputs.
        as_float64 = model([x.double() for x in inputs], streamlines)
        assert as_float64.dtype == torch.float32
        assert torch.equal(as_float64, expected)
        doubled = model.double()(inputs, streamlines)
    assert doubled.dtype == torch.float64


@pytest.mark.parametrize("model_class", ["learn2track", "transformer"])
@pytest.mark.parametrize("open_ends, found", [
    (torch.tensor([True, False, True]), "shape (3,) torch.bool"),
    (torch.tensor([False]), "shape (1,) torch.bool"),
    (torch.tensor([[True, False]]), "shape (1, 2) torch.bool"),
    # Integers were read as indices of streamlines: a silent wrong loss.
    (torch.tensor([0, 1]), "shape (2,) torch.int64"),
    ([True, False], "list"),
])
def test_compute_loss_refuses_open_ends_that_are_not_one_flag_per_streamline(
        model_class, open_ends, found):
    """A wrong length was an IndexError from inside torch (or ignored when
    all False), a list an AttributeError."""
    dg_args = {"add_eos": True, "eos_only_at_fibre_ends": True}
    torch.manual_seed(0)
    model = (_model(dg_args=dg_args) if model_class == "learn2track" else
             TransformerSrcOnlyModel("t", nb_features=4, d_model=8, nheads=2,
                                     dg_args=dg_args))
    streamlines = _streamlines()
    outputs = torch.randn(8, model.output_size)  # 5 + 3 predictions (EOS)
    name = type(model).__name__
    with pytest.raises(DwiMLUserError) as refused:
        model.compute_loss(outputs, streamlines, open_ends=open_ends)
    assert str(refused.value) == (
        f"{name}.compute_loss: expected open_ends of shape (2,), bool (one "
        f"flag per streamline), found {found}.")
    # The same, bit for bit, from a NumPy array of flags.
    flags = torch.tensor([True, False])
    expected = model.compute_loss(outputs, streamlines, open_ends=flags)
    from_numpy = model.compute_loss(outputs, streamlines,
                                    open_ends=flags.numpy())
    assert expected[1] == from_numpy[1] == 7
    for term in ("direction", "eos"):
        assert torch.equal(expected[0][term], from_numpy[0][term])


def test_a_batch_that_breaks_the_contract_is_one_line():
    """NumPy arrays, lists and None were TypeErrors or AttributeErrors from
    inside torch; a wrong row count blamed the streamline."""
    model = _model()
    streamlines = _streamlines()
    inputs = [torch.rand(5, 4), torch.rand(3, 4)]
    model(inputs, streamlines)  # the contract
    cases = [
        (None, streamlines, "batch: expected lists of as many inputs as "
         "streamlines (>= 1), found NoneType and 2 streamlines."),
        ([x.numpy() for x in inputs], streamlines, "batch inputs: expected "
         "tensors of shape (n_i, 4) (nb_features * nb_neighbours), found "
         "ndarray at streamline 0."),
        ([inputs[0], inputs[1].tolist()], streamlines, "batch inputs: "
         "expected tensors of shape (n_i, 4) (nb_features * nb_neighbours), "
         "found list at streamline 1."),
        ([inputs[0], torch.rand(3, 5)], streamlines, "batch inputs: expected "
         "tensors of shape (n_i, 4) (nb_features * nb_neighbours), found "
         "a tensor of 5 columns at streamline 1."),
        (inputs, [streamlines[0], streamlines[1][:, :2]], "batch "
         "streamlines: expected tensors of shape (n_i, 3) (points), found "
         "a tensor of 2 columns at streamline 1."),
        (inputs, [s.numpy() for s in streamlines], "batch streamlines: "
         "expected tensors of shape (n_i, 3) (points), found ndarray at "
         "streamline 0."),
        ([inputs[0][:4], inputs[1]], streamlines, "batch inputs: expected "
         "one row per point of each streamline, found 4 rows for the 5 "
         "points of streamline 0."),
    ]
    for batch_inputs, batch_streamlines, message in cases:
        with pytest.raises(DwiMLUserError) as refused:
            model(batch_inputs, batch_streamlines)
        assert str(refused.value) == message


@pytest.mark.parametrize("nb_previous_dirs", [0, 2])
def test_a_list_of_partial_streamlines_of_other_shapes_is_one_line(
        nb_previous_dirs):
    """Only the first was checked: a later one of 2 columns (or 1-D) was a
    RuntimeError of torch.cat."""
    transformer = TransformerSrcOnlyModel(
        "t", nb_features=4, d_model=8, nheads=2,
        nb_previous_dirs=nb_previous_dirs).eval()
    learn2track = _model(nb_previous_dirs=2).eval()
    good = torch.rand(1, 3)
    for model in (transformer, learn2track):
        for bad, found in ((torch.rand(4, 2), "a tensor of 2 columns"),
                           (torch.rand(3), "a 1-D tensor")):
            with torch.no_grad(), pytest.raises(DwiMLUserError) as refused:
                model.forward_step(torch.rand(2, 4), [good, bad])
            assert str(refused.value) == (
                f"streamlines: expected tensors of shape (n_i, 3) (points), "
                f"found {found} at streamline 1.")
