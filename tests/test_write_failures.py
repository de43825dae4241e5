"""A write the disk refuses (here a file size limit, as a full disk or a
quota would): one line, exit 2, the last complete folder kept whole."""
import errno
import json
import os
import resource
import subprocess
import sys

import pytest
from hdf5_test_data import CONFIG, write_dataset, write_subject_lists
from training_data import make_training_hdf5

from dwi_ml.io_utils.atomic import write_failures_named
from dwi_ml.io_utils.errors import DwiMLUserError

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "scripts_python", "dwiml_train_model.py")
# Above best_model/'s largest file (the LSTM [64]'s weights, ~134 kB) and
# below the checkpoint's state (the weights and Adam's two moments,
# ~289 kB).
FILE_SIZE_LIMIT = 200_000


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"),
                    reason="needs RLIMIT_FSIZE")
def test_a_refused_checkpoint_write_is_one_line(tmp_path):
    # It was a 31-line traceback ending in torch's "basic_ios::clear:
    # iostream error", exit 1.
    hdf5_file = make_training_hdf5(str(tmp_path))
    experiments = tmp_path / "exps"
    experiments.mkdir()
    process = subprocess.run(
        [sys.executable, SCRIPT, str(experiments), "run", hdf5_file, "input",
         "streamlines", "--max_epochs", "2", "--step_size", "1.5",
         "--rnn_layer_sizes", "64", "-v", "WARNING"],
        capture_output=True, text=True, timeout=600,
        preexec_fn=_limit_file_size)
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1
    head, tail = lines[0].split(" (RuntimeError: ", 1)
    assert head == ("dwiml_train_model.py: error: cannot write the checkpoint "
                    f"'{experiments / 'run' / 'checkpoint'}'")
    # The run's first checkpoint, of its start, is small enough.
    assert tail.endswith(
        "); the last one written, if any, is kept whole: free some space (or "
        "raise the limit), then resume with: resume_training_from_checkpoint"
        f".py {experiments} run")
    # best_model/ was written whole before; no temporary folder is left.
    assert sorted(os.listdir(experiments / "run")) == [
        ".dwi_ml_output.json", ".lock", "best_model", "checkpoint", "logs",
        "parameters.json", "runs.json"]
    # The run's history says how it ended.
    (segment,) = json.loads(
        (experiments / "run" / "runs.json").read_text())["segments"]
    assert segment["end"] == "error"
    assert segment["end_detail"].startswith(
        "DwiMLUserError: cannot write the checkpoint")
    assert sorted(os.listdir(experiments / "run" / "best_model")) == [
        "MANIFEST.sha256", "best_epoch.json", "model_state.pt",
        "model_type.txt", "parameters.json"]
    # Its latest model is the run's start: refused, not evaluated.
    evaluate = os.path.join(HERE, "..", "scripts_python",
                            "dwiml_evaluate_model.py")
    process = subprocess.run(
        [sys.executable, evaluate, str(experiments / "run"), hdf5_file,
         "--use_latest_epoch"], capture_output=True, text=True, timeout=600)
    assert process.returncode == 2
    assert process.stderr.strip() == (
        f"dwiml_evaluate_model.py: error: experiment '{experiments / 'run'}'"
        ": its checkpoint was saved before its first training batch; its "
        "model is untrained: resume the run first.")


@pytest.mark.parametrize("error, remedy", [
    (PermissionError(errno.EACCES, "Permission denied"),
     "make the folder writable"),
    (OSError(errno.EROFS, "Read-only file system"), "make the folder writable"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "free some space (or raise the limit)"),
])
def test_the_remedy_follows_the_refusal(error, remedy):
    # A folder made read-only was told to free some space.
    with pytest.raises(DwiMLUserError) as raised:
        with write_failures_named("the checkpoint", "exp/checkpoint {x}",
                                  "kept: {remedy}, then resume {x}"):
            raise error
    assert str(raised.value) == (
        f"cannot write the checkpoint 'exp/checkpoint {{x}}' "
        f"({type(error).__name__}: {error}); kept: {remedy}, then resume "
        "{x}")


def test_a_refused_hdf5_write_is_one_line_and_keeps_the_old_file(tmp_path):
    # It was 144 lines of h5py tracebacks (chunk writes failing inside its
    # object cleanup), then a segmentation fault (exit 139).
    root = str(tmp_path / "ready")
    subjects = ["sub-01", "sub-02", "sub-03"]
    write_dataset(root, subjects)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out" / "data.hdf5"
    out.parent.mkdir()
    args = [root, str(out), str(config),
            *write_subject_lists(tmp_path, subjects[:2], subjects[2:])]
    create = os.path.join(HERE, "..", "scripts_python",
                          "dwiml_create_hdf5_dataset.py")
    subprocess.run([sys.executable, create, *args, "-v", "WARNING"],
                   check=True, capture_output=True, timeout=600)
    before = out.read_bytes()
    # Less than the file: its writes fail half way, as on a full disk.
    limit = len(before) // 2

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = subprocess.run(
        [sys.executable, create, *args, "--step_size", "1", "-f",
         "-v", "WARNING"], capture_output=True, text=True, timeout=600,
        preexec_fn=limit_file_size)
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr[-3000:]
    assert lines[0].startswith(
        "dwiml_create_hdf5_dataset.py: error: cannot write the HDF5 file "
        f"'{out}' (OSError: [Errno 27] ")
    assert lines[0].endswith(
        "); any file there before is kept: free some space (or raise the "
        "limit), then run the command again")
    assert os.listdir(out.parent) == ["data.hdf5"]
    assert out.read_bytes() == before
