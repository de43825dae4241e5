"""A model of your own in the scripts: DWIML_MODEL_MODULES.

The model's module is a real file, imported by real script processes (a
class registered in the test process would change the registry that other
tests' messages list).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from training_data import make_training_hdf5

from tests.tolerances import rounding_atol

MODULE = '''\
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.model_io import register_model


@register_model
class MyLearn2Track(Learn2TrackModel):
    """Learn2track under a name of its own: a model the scripts lack."""
'''

# Trained from Python, as docs/extending.md says a new model is.
TRAIN = '''\
import os, sys
import my_model
from dwi_ml.training.distributed import init_distributed
from dwi_ml.training.experiment_builder import run_experiment
from dwi_ml.training.random_states import seed_everything

experiments, hdf5_file = sys.argv[1:3]
model_params = {"step_size": 1.5, "rnn_layer_sizes": [8]}
params = {
    "dataset": {"hdf5_file": os.path.abspath(hdf5_file), "lazy": False},
    "sampler": {"streamline_group": "streamlines",
                "batch_size_units": "nb_streamlines",
                "batch_size_training": 20, "batch_size_validation": 20,
                "seed": 3},
    "loader": {"streamline_group": "streamlines", "input_group": "input",
               "seed": 3},
    "model_type": "MyLearn2Track", "model": model_params,
    "trainer": {"max_epochs": 1, "seed": 3}}


def make_model(dataset):
    seed_everything(3)
    return my_model.MyLearn2Track("mine", nb_features=dataset.nb_features[0],
                                  **model_params)


distributed, device = init_distributed("cpu")
os.makedirs(os.path.join(experiments, "mine"))
run_experiment(params, make_model, experiments, "mine", device, distributed,
               [], lambda trainer: "trained", False)
'''


def _script(name):
    return os.path.join(os.path.dirname(__file__), "..", "scripts_python",
                        f"{name}.py")


def _run(args, env):
    return subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "my_model.py").write_text(MODULE)
    (folder / "train.py").write_text(textwrap.dedent(TRAIN))
    hdf5_file = make_training_hdf5(str(folder), nb_streamlines=40)
    process = _run([str(folder / "train.py"), str(folder), hdf5_file],
                   {"PYTHONPATH": str(folder)})
    assert process.returncode == 0, process.stderr[-3000:]
    return folder, hdf5_file


def test_a_run_from_python_records_the_files_fingerprint(experiment):
    # Before, only dwiml_train_model.py recorded it: a resume of a run
    # trained from Python warned "no fingerprint" and checked nothing.
    from dwi_ml.data.hdf5.fingerprint import compute_hdf5_fingerprint
    folder, hdf5_file = experiment
    saved = json.loads((folder / "mine" / "parameters.json").read_text())
    assert saved["dataset"]["fingerprint"] == json.loads(json.dumps(
        compute_hdf5_fingerprint(hdf5_file)))


def _evaluate(folder, hdf5_file, env, *extra):
    return _run([_script("dwiml_evaluate_model"), str(folder / "mine"),
                 hdf5_file, "--subset", "validation", *extra], env)


def test_scripts_load_a_model_named_in_dwiml_model_modules(experiment):
    folder, hdf5_file = experiment
    # Before: "expected one of [...], found 'MyLearn2Track'", and no way to
    # make the scripts import its module.
    process = _evaluate(folder, hdf5_file, {})
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1] == (
        f"dwiml_evaluate_model.py: error: {folder / 'mine'}/best_model/"
        "model_type.txt: expected one of ['Learn2TrackModel', "
        "'OriginalTransformerModel', 'TransformerSrcAndTgtModel', "
        "'TransformerSrcOnlyModel'], found 'MyLearn2Track'; for a model of "
        "your own, name its module in DWIML_MODEL_MODULES (e.g. "
        "DWIML_MODEL_MODULES=my_model, or a .py file).")
    best = json.loads((folder / "mine" / "best_model" /
                       "best_epoch.json").read_text())
    out = folder / "mine" / "evaluation_validation_best.json"
    results = []
    # A .py file, or a module name on the Python path.
    for env in ({"DWIML_MODEL_MODULES": str(folder / "my_model.py")},
                {"DWIML_MODEL_MODULES": "my_model",
                 "PYTHONPATH": str(folder)}):
        out.unlink(missing_ok=True)
        process = _evaluate(folder, hdf5_file, env)
        assert process.returncode == 0, process.stderr[-3000:]
        evaluation = json.loads(out.read_text())
        assert evaluation["subset"] == "validation"
        assert evaluation["model"] == "best"
        scores = evaluation["results"]
        # The run's best validation loss, up to float32 rounding (other
        # batch shapes take other kernels; the bound of
        # tests/test_evaluate_model.py: one rounding per term of dot
        # products of fan-in < 64, per step < 100).
        assert scores["all"]["loss"] == pytest.approx(
            best["loss"], rel=rounding_atol(1, 100 * 64))
        results.append(scores)
    # The same model, data and thread count: the same numbers.
    assert results[0] == results[1]


def test_a_module_that_cannot_be_imported_is_one_line(experiment):
    folder, hdf5_file = experiment
    for value, found in (
            ("no_such_module", "could not import it (ModuleNotFoundError: No "
                               "module named 'no_such_module')."),
            (str(folder / "missing.py"), "file not found.")):
        process = _evaluate(folder, hdf5_file, {"DWIML_MODEL_MODULES": value})
        assert process.returncode == 2
        assert process.stderr.strip().splitlines()[-1] == (
            "dwiml_evaluate_model.py: error: environment variable "
            f"DWIML_MODEL_MODULES: module '{value}': {found}")


def test_a_parameter_json_cannot_hold_is_named():
    """A numpy number in params_for_checkpoint: json's TypeError traceback
    from deep in the first save, naming no key."""
    import numpy as np

    from dwi_ml.io_utils.errors import DwiMLUserError
    from dwi_ml.models.learn2track import Learn2TrackModel
    from dwi_ml.models.model_io import model_params

    class NumpyOption(Learn2TrackModel):
        @property
        def params_for_checkpoint(self):
            return {**super().params_for_checkpoint,
                    "hidden_size": np.int64(16)}

    model = NumpyOption("m", nb_features=4, step_size=1.5,
                        rnn_layer_sizes=[8])
    with pytest.raises(DwiMLUserError) as error:
        model_params(model)
    assert str(error.value) == (
        "NumpyOption.params_for_checkpoint['hidden_size']: expected a JSON "
        "value (int, float, str, bool, None, or a list or dict of them; no "
        "NaN), found int64 np.int64(16); convert it (e.g. int(...)) in the "
        "constructor.")


def test_tracking_refuses_step_outputs_of_another_width():
    """A model of one's own whose forward_step returned one column too
    many tracked with exit status 0 (the column read as an EOS logit)."""
    import torch

    from dwi_ml.io_utils.errors import DwiMLUserError
    from dwi_ml.models.learn2track import Learn2TrackModel
    from dwi_ml.tracking.propagation import check_step_outputs

    model = Learn2TrackModel("m", nb_features=4, step_size=1.5,
                             rnn_layer_sizes=[8], dg_key="fisher-von-mises",
                             dg_args={"add_eos": True})
    width = model.direction_getter.output_size
    check_step_outputs(model, torch.zeros(5, width), 5)
    for shape in ((5, width + 1), (6, width), (5,)):
        with pytest.raises(DwiMLUserError) as error:
            check_step_outputs(model, torch.zeros(shape), 5)
        assert str(error.value) == (
            f"Learn2TrackModel.forward_step: expected outputs of shape "
            f"(5, {width}) (one row per streamline, the direction getter's "
            f"outputs), found {shape}.")
