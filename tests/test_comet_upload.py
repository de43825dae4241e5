"""dwiml_send_logs_to_comet.py: an experiment's logs sent to Comet after its
run, into real offline archives (the network is closed)."""
import glob
import os
import socket

import numpy as np
import pytest

from dwi_ml.cli.dwiml_send_logs_to_comet import main as send_main
from dwi_ml.io_utils.experiment_layout import read_parameters
from dwi_ml.io_utils.experiment_lock import ExperimentLock
from dwi_ml.monitoring.comet_logger import CometCallback
from tests.test_comet import (  # noqa: F401
    DUMMY_API_KEY,
    EPOCH_LOGS,
    archive_metrics,
    archive_parameters,
    comet_env,
    flatten,
    make_tiny_trainer,
    read_archive,
    tiny_hdf5,
    train_offline,
)


def _archives(folder):
    return sorted(glob.glob(os.path.join(folder, "*.zip")))


def _warnings(err):
    """Our warning lines (Comet prints its own)."""
    return [line for line in err.splitlines() if line.startswith("WARNING:")]


def test_a_run_without_comet_goes_to_a_new_experiment(tiny_hdf5,  # noqa: F811
                                                      tmp_path, capsys):
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "plain", max_epochs=3)
    trainer.save_parameters()
    trainer.train_and_validate()
    out = tmp_path / "comet"
    send_main([trainer.experiment_dir, "--comet_workspace", "ws",
               "--comet_project", "proj", "--comet_offline_dir", str(out)])
    [archive] = _archives(out)
    experiment, messages, raw = read_archive(archive)
    assert (experiment["workspace"], experiment["project_name"]) == \
        ("ws", "proj")
    assert DUMMY_API_KEY.encode() not in raw
    metrics = archive_metrics(messages)
    logs_dir = os.path.join(trainer.experiment_dir, "logs")
    for name in EPOCH_LOGS:
        assert metrics[name][0] == [0, 1, 2], name
        np.testing.assert_array_equal(
            metrics[name][1], np.load(os.path.join(logs_dir, f"{name}.npy")))
    # Per-batch values only on request.
    assert "train_loss_per_batch" not in metrics
    assert archive_parameters(messages) == flatten(
        read_parameters(trainer.experiment_dir))
    names = [m["payload"]["value"] for m in messages
             if m["type"] == "log_other" and m["payload"]["key"] == "Name"]
    assert names == ["plain"]
    key = os.path.basename(archive)[:-len(".zip")]
    assert f"to a new Comet experiment {key} (offline" in capsys.readouterr().out

    # Chosen logs and epochs into another experiment, then the per-batch
    # log (all its rows: it has no epochs) into a third. Only the logs
    # named are read: a user's malformed .npy beside them does not matter.
    np.save(os.path.join(logs_dir, "twod.npy"), np.zeros((5, 2)))
    send_main([trainer.experiment_dir, "--comet_offline_dir", str(out),
               "--logs", "valid_loss", "--epochs", "1", "2"])
    [second] = [path for path in _archives(out) if path != archive]
    metrics = archive_metrics(read_archive(second)[1])
    valid_loss = np.load(os.path.join(logs_dir, "valid_loss.npy"))
    assert metrics == {"valid_loss": ([1, 2], list(valid_loss[1:]))}
    send_main([trainer.experiment_dir, "--comet_offline_dir", str(out),
               "--logs", "train_loss_per_batch"])
    [third] = [path for path in _archives(out)
               if path not in (archive, second)]
    metrics = archive_metrics(read_archive(third)[1])
    per_batch = np.load(os.path.join(logs_dir, "train_loss_per_batch.npy"))
    assert metrics == {"train_loss_per_batch": (list(range(len(per_batch))),
                                                list(per_batch))}


def test_a_run_that_had_comet_is_continued(tiny_hdf5, tmp_path,  # noqa: F811
                                           capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    trainer, callback = train_offline(tiny_hdf5, tmp_path, max_epochs=2,
                                      log_every=0)
    out = str(tmp_path / "comet")
    first = _archives(out)
    send_main([trainer.experiment_dir, "--comet_offline_dir", out,
               "--epochs", "1", "1"])
    [added] = [path for path in _archives(out) if path not in first]
    experiment, messages, _ = read_archive(added)
    assert experiment["offline_id"] == callback.experiment_key
    assert experiment["resume_strategy"] == "get"
    metrics = archive_metrics(messages)
    train_loss = np.load(os.path.join(trainer.experiment_dir, "logs",
                                      "train_loss.npy"))
    assert metrics["train_loss"] == ([1], [train_loss[1]])
    # A continued experiment keeps its hyper-parameters: none sent again.
    assert archive_parameters(messages) == {}

    # While a run holds the experiment, it logs to that Comet experiment
    # itself: refused; a new Comet experiment is not.
    with ExperimentLock(trainer.experiment_dir) as lock:
        lock.acquire()
        with pytest.raises(SystemExit) as raised:
            send_main([trainer.experiment_dir, "--comet_offline_dir", out])
        assert raised.value.code == 2
        assert (f"is in use by process {os.getpid()} on host "
                f"{socket.gethostname()}, which logs to its Comet"
                f" experiment {callback.experiment_key}") in \
            capsys.readouterr().err
        send_main([trainer.experiment_dir, "--comet_offline_dir", out,
                   "--new_comet_experiment"])
    [new] = [path for path in _archives(out)
             if path not in first and path != added]
    assert not os.path.basename(new).startswith(callback.experiment_key)


def test_bad_requests_are_refused_in_one_line(tiny_hdf5, tmp_path,  # noqa: F811
                                              capsys):
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "plain", max_epochs=2)
    trainer.save_parameters()
    trainer.train_and_validate()
    exp = trainer.experiment_dir
    offline = ["--comet_offline_dir", str(tmp_path / "comet")]
    cases = [
        ([exp], "found none"),
        ([exp, "--comet_workspace", "ws"], "needs both"),
        ([exp, *offline, "--logs", "nope"], "no log 'nope'"),
        ([exp, *offline, "--epochs", "1", "5"], "0 <= FIRST <= LAST < 2"),
        # --per_batch adds to the default logs; --logs names them all.
        *[([exp, *offline, "--logs", "valid_loss", "--per_batch", *more],
           "--per_batch: expected without --logs (it adds "
           "train_loss_per_batch to the default logs), found --logs "
           "valid_loss; with --logs, name train_loss_per_batch there.")
          for more in ([], ["--epochs", "1", "1"])],
        # Per-batch rows have no epochs: all were sent, twice for some.
        *[([exp, *offline, *chosen, "--epochs", "0", "0"],
           "--epochs: selects epochs of the epoch logs; "
           "'train_loss_per_batch' has a row per batch")
          for chosen in (["--per_batch"],
                         ["--logs", "train_loss_per_batch"])],
        ([str(tmp_path / "missing"), *offline], "missing"),
        ([str(tmp_path), *offline], "not a dwi_ml experiment"),
        # A resume swaps checkpoint/ whole: the archive went with it.
        *[([exp, "--comet_offline_dir", os.path.join(exp, folder)],
           "a folder of experiment") for folder in ("checkpoint", "logs")],
        # Online, Comet refuses at once (a closed port): nothing is sent.
        ([exp, "--comet_workspace", "ws", "--comet_project", "p"],
         "could not be reached"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as raised:
            send_main(argv)
        err = capsys.readouterr().err
        assert raised.value.code != 0, argv
        last = err.strip().splitlines()[-1]
        assert message in last and "Traceback" not in err, (argv, err)
        # Nothing goes on: a training run's words are not said.
        assert "goes on without Comet" not in err
    assert _archives(tmp_path / "comet") == []


def test_what_the_run_logged_to_comet_is_not_sent_again(
        tiny_hdf5, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # Two epochs logged to Comet (every 3rd of their 8 batches too).
    trainer, callback = train_offline(tiny_hdf5, tmp_path, max_epochs=2,
                                      log_every=3)
    key, exp = callback.experiment_key, trainer.experiment_dir
    out = str(tmp_path / "comet")
    archives = _archives(out)
    capsys.readouterr()
    send_main([exp, "--comet_offline_dir", out])
    printed = capsys.readouterr()
    assert printed.out.strip() == (
        f"Nothing sent: the saved Comet experiment {key} already has all "
        f"{2 * len(EPOCH_LOGS)} values, logged during training "
        "(--epochs sends chosen epochs again).")
    assert _warnings(printed.err) == [] and _archives(out) == archives

    # Resumed to epoch 3 without Comet: epoch 2 and its batches missed it.
    resumed = make_tiny_trainer(tiny_hdf5, tmp_path, "exp", max_epochs=3)
    resumed.load_checkpoint()
    resumed.train_and_validate()
    logs_dir = os.path.join(exp, "logs")
    send_main([exp, "--comet_offline_dir", out, "--per_batch"])
    [added] = [path for path in _archives(out) if path not in archives]
    experiment, messages, _ = read_archive(added)
    assert experiment["offline_id"] == key
    metrics = archive_metrics(messages)
    for name in EPOCH_LOGS:
        values = np.load(os.path.join(logs_dir, f"{name}.npy"))
        assert metrics[name] == ([2], [values[2]]), name
    per_batch = np.load(os.path.join(logs_dir, "train_loss_per_batch.npy"))
    rows = [row for row in range(12) if row not in (0, 3, 6)]
    assert metrics["train_loss_per_batch"] == (rows, list(per_batch[rows]))
    assert len(per_batch) == 12
    assert f"left out {2 * len(EPOCH_LOGS) + 3} values it has from " \
        "training." in capsys.readouterr().out

    # Chosen epochs go even when Comet has them, named in a warning.
    send_main([exp, "--comet_offline_dir", out, "--epochs", "1", "2",
               "--logs", "valid_loss"])
    assert _warnings(capsys.readouterr().err) == [
        f"WARNING: --epochs 1 2: Comet experiment {key} (saved "
                   "in the checkpoint) already has epochs 1, logged during "
                   "training: they will show twice."]


def test_a_checkpoint_without_the_record_sends_all_and_warns(
        tiny_hdf5, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # As the resume of an older checkpoint (its Comet key, no record of
    # what reached Comet) continues its experiment.
    key = "0123456789abcdef0123456789abcdef"
    out = str(tmp_path / "comet")
    callback = CometCallback(offline_dir=out, experiment_key=key)
    trainer = make_tiny_trainer(tiny_hdf5, tmp_path, "old", max_epochs=2,
                                callbacks=[callback])
    trainer.save_parameters()
    trainer.train_and_validate()
    archives = _archives(out)
    capsys.readouterr()
    send_main([trainer.experiment_dir, "--comet_offline_dir", out])
    printed = capsys.readouterr()
    assert _warnings(printed.err) == [
        f"WARNING: Comet experiment {key} (saved in the checkpoint) already "
        "has what the run logged during training, but this checkpoint, "
        "from an older dwi_ml, does not say which epochs: those will show "
        "twice; send only the missing ones with --epochs FIRST LAST, or all "
        "to a new experiment with --new_comet_experiment."]
    [added] = [path for path in _archives(out) if path not in archives]
    metrics = archive_metrics(read_archive(added)[1])
    assert metrics["train_loss"][0] == [0, 1]
    assert f"to the saved Comet experiment {key}" in printed.out
