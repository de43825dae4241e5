"""Reading an experiment's model while its run saves a new one.

A run in progress swaps in a new checkpoint/ (and best_model/) folder at
each save. Tracking, evaluating or plotting that experiment at the same
time read files of two versions, and the manifest check called the
checkpoint corrupt, or a file of the removed version missing.
"""
import multiprocessing
import os

import numpy as np
import pytest
import torch

from dwi_ml.io_utils.atomic import (
    atomic_output_folder,
    read_replaced_folder,
    write_json_atomic,
)
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import checkpoint_model_dir
from dwi_ml.io_utils.manifest import write_manifest
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.monitoring.log_reading import read_experiment_logs
from dwi_ml.tracking.tracking_io import load_experiment_model

# Enough saves that reads overlap several of them: without reading again
# after a swap, the test failed 4 runs in 4.
NB_SAVES = 300
# The writer saves in bursts, then waits for one whole read, as a run
# pauses between its saves. Without the pause a reader slower than a save
# (a loaded machine) met a swap in every attempt and gave up: each failed
# attempt overlaps its own swap, so a read now takes BURST + 1 attempts at
# most, whatever the speeds.
BURST = 5
WAIT_FOR_READ_S = 60


def seeded_model(seed):
    torch.manual_seed(seed)
    return Learn2TrackModel("m", nb_features=4, rnn_layer_sizes=[64])


def save_checkpoint(model, experiment_dir):
    """What the trainer's save_checkpoint does to the folder."""
    with atomic_output_folder(os.path.join(experiment_dir,
                                           "checkpoint")) as tmp_dir:
        model.save_params_and_state(os.path.join(tmp_dir, "model"))
        write_manifest(tmp_dir)


def in_bursts(save, started, read_done):
    """save(index) for every index, pausing for a read after each burst."""
    started.set()
    for index in range(NB_SAVES):
        if index % BURST == 0 and index > 0:
            read_done.clear()
            read_done.wait(WAIT_FOR_READ_S)
        save(index)


def keep_saving(experiment_dir, started, read_done):
    models = [seeded_model(0), seeded_model(1)]
    in_bursts(lambda index: save_checkpoint(models[index % 2],
                                            experiment_dir),
              started, read_done)


def test_the_latest_model_loads_while_the_run_saves_checkpoints(tmp_path):
    experiment_dir = str(tmp_path / "exp")
    os.makedirs(experiment_dir)
    expected = [seeded_model(0).state_dict(), seeded_model(1).state_dict()]
    save_checkpoint(seeded_model(0), experiment_dir)
    context = multiprocessing.get_context("fork")
    started, read_done = context.Event(), context.Event()
    writer = context.Process(
        target=keep_saving, args=(experiment_dir, started, read_done))
    writer.start()
    started.wait()
    errors, nb_loads = [], 0
    while writer.is_alive():
        try:
            weights = load_experiment_model(experiment_dir,
                                            use_latest_epoch=True).state_dict()
        except Exception as error:  # noqa: BLE001 - every failure counts
            errors.append(str(error))
            continue
        nb_loads += 1
        read_done.set()
        # One saved version, whole.
        assert any(all(torch.equal(weights[key], version[key])
                       for key in version) for version in expected)
    writer.join()
    assert writer.exitcode == 0
    assert errors == []
    assert nb_loads > 0


def test_a_read_is_done_again_after_a_swap_and_not_without(tmp_path):
    # A kill between the two renames of a save left .checkpoint.old only;
    # the next save, made while a reader had resolved that folder, removes
    # it: the reader's files are gone, and it reads the new folder.
    experiment_dir = str(tmp_path)
    save_checkpoint(seeded_model(0), experiment_dir)
    os.rename(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    folders, attempts = [], []

    def read():
        attempts.append(1)
        folders.append(checkpoint_model_dir(experiment_dir))
        if len(folders) == 1:
            save_checkpoint(seeded_model(1), experiment_dir)
        return load_model_from_params_and_state(folders[-1])

    model = read_replaced_folder(str(tmp_path / "checkpoint"), read)
    assert folders == [str(tmp_path / ".checkpoint.old" / "model"),
                       str(tmp_path / "checkpoint" / "model")]
    expected = seeded_model(1).state_dict()
    assert all(torch.equal(model.state_dict()[key], expected[key])
               for key in expected)

    # A file changed with no save going on is corrupt: said at once.
    state = tmp_path / "checkpoint" / "model" / "model_state.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")
    attempts.clear()
    with pytest.raises(DwiMLUserError, match="model_state.pt' is corrupt"):
        read_replaced_folder(str(tmp_path / "checkpoint"), read)
    assert len(attempts) == 1


def save_best_epoch(experiment_dir, index):
    """What save_best_model does to best_model/, epochs 0 and 1 in turn."""
    with atomic_output_folder(os.path.join(experiment_dir,
                                           "best_model")) as tmp_dir:
        write_json_atomic(os.path.join(tmp_dir, "best_epoch.json"),
                          {"epoch": index % 2, "loss": float(index % 2)})
        write_manifest(tmp_dir)


def keep_saving_best_epochs(experiment_dir, started, read_done):
    in_bursts(lambda index: save_best_epoch(experiment_dir, index),
              started, read_done)


def test_the_best_epoch_is_read_whole_while_the_run_saves_it(tmp_path):
    """visualize_logs reads best_model/best_epoch.json of a run in
    progress: always one saved version, never a missing-file error, and
    never no best epoch (between the two renames of a swap, no folder has
    the name)."""
    experiment_dir = str(tmp_path / "exp")
    os.makedirs(os.path.join(experiment_dir, "logs"))
    np.save(os.path.join(experiment_dir, "logs", "valid_loss.npy"),
            np.array([1.0, 0.5]))
    save_best_epoch(experiment_dir, 0)
    context = multiprocessing.get_context("fork")
    started, read_done = context.Event(), context.Event()
    writer = context.Process(target=keep_saving_best_epochs,
                             args=(experiment_dir, started, read_done))
    writer.start()
    started.wait()
    errors, seen = [], set()
    while writer.is_alive():
        try:
            logs = read_experiment_logs(experiment_dir)
        except Exception as error:  # noqa: BLE001 - every failure counts
            errors.append(str(error))
            continue
        read_done.set()
        seen.add((logs.best_epoch, logs.best_loss))
    writer.join()
    assert writer.exitcode == 0
    assert errors == []
    assert seen == {(0, 0.0), (1, 1.0)}


def test_the_same_weights_save_to_the_same_bytes(tmp_path):
    # torch.save given the temporary path named the archive's inner folder
    # after it: every save of the same weights hashed differently, and
    # MANIFEST.sha256 could not tell that two runs gave one model.
    for name in ("a", "b"):
        seeded_model(3).save_params_and_state(str(tmp_path / name))
        write_manifest(str(tmp_path / name))
    for name in ("model_state.pt", "MANIFEST.sha256"):
        assert (tmp_path / "a" / name).read_bytes() == \
            (tmp_path / "b" / name).read_bytes(), name


def test_an_experiment_caught_between_the_renames_of_a_save_loads(tmp_path):
    # Between the two renames of a save only .checkpoint.old is there: the
    # check that a folder is an experiment at all took that moment for "not
    # an experiment" (a reader racing a run failed under load).
    experiment_dir = str(tmp_path / "exp")
    os.makedirs(experiment_dir)
    save_checkpoint(seeded_model(0), experiment_dir)
    os.rename(tmp_path / "exp" / "checkpoint",
              tmp_path / "exp" / ".checkpoint.old")
    weights = load_experiment_model(experiment_dir,
                                    use_latest_epoch=True).state_dict()
    expected = seeded_model(0).state_dict()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)
