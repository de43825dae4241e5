"""The Python snippets of README.md and docs/*.md run as written.

Each page's ```python blocks run in order, in one namespace, from a folder
holding a small demo output (``dwiml_run_demo.py`` with 60 streamlines per
subject and 1 + 1 epochs), as the pages ask the reader to. The checks are
the values the pages print or state in their comments. docs/own_model.md
has its own test (tests/test_docs_own_model.py); the blocks of
docs/architecture.md are signatures, not a program.
"""
import glob
import json
import math
import os
import re
import shlex
import shutil

import h5py
import numpy as np
import pytest
import torch
from dipy.io.stateful_tractogram import Origin, Space
from dipy.io.streamline import load_tractogram

from dwi_ml.cli import dwiml_compute_connectivity_matrix_from_blocs as blocs_cli
from dwi_ml.cli import dwiml_compute_connectivity_matrix_from_labels as labels_cli
from dwi_ml.cli import dwiml_compute_loss_copy_previous as copy_previous_cli
from dwi_ml.cli import dwiml_divide_volume_into_blocs as divide_cli
from dwi_ml.cli import dwiml_hdf5_extract_data as extract_cli
from dwi_ml.cli import dwiml_run_demo, dwiml_score_tractogram, dwiml_train_model
from dwi_ml.cli import dwiml_send_logs_to_comet as send_logs_cli
from dwi_ml.cli import dwiml_track_from_model as track_cli
from dwi_ml.cli import dwiml_visualize_noise_on_streamlines as noise_cli
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.processing.augmentation import count_from_ratio
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.training.evaluation import evaluate_model_folder
from tests.test_comet import archive_metrics, read_archive
from tests.tolerances import rounding_atol

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
NB_STREAMLINES = 60
DEMO_EPOCHS = 2


def page(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def python_blocks(name):
    return re.findall(r"```python\n(.*?)```", page(name), re.DOTALL)


def run_page(name):
    """Run every Python block of a page in one namespace; return it."""
    namespace = {}
    for index, block in enumerate(python_blocks(name)):
        exec(compile(block, f"{name}, block {index}", "exec"), namespace)
    return namespace


def documented_command(name, script, containing=None):
    """The arguments of the first command of a page's bash blocks that runs
    ``script`` (with the word ``containing``), continuation lines joined."""
    for block in re.findall(r"```bash\n(.*?)```", page(name), re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line)
            if (words and words[0] == f"{script}.py"
                    and (containing is None or containing in words)):
                return words[1:]
    raise AssertionError(f"{name} runs no {script}.py {containing or ''}")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        dwiml_run_demo.main(["demo_output", "--nb_streamlines",
                             str(NB_STREAMLINES), "--epochs", "1",
                             str(DEMO_EPOCHS)])
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def in_demo_folder(demo_folder, monkeypatch):
    monkeypatch.chdir(demo_folder)
    return demo_folder


def printed_lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines()
            if not line.startswith(("Experiment ", "COMET"))]


def test_readme_python(in_demo_folder):
    # The README's pipeline writes example/data.hdf5.
    os.makedirs("example", exist_ok=True)
    shutil.copy("demo_output/dataset.hdf5", "example/data.hdf5")
    namespace = run_page("README.md")
    sft_data = namespace["subject"].sft_data_list[0]
    expected = sft_data.get_streamlines([3])[0]
    np.testing.assert_array_equal(namespace["streamlines"][0], expected)
    assert len(namespace["streamlines"]) == 3
    assert len(namespace["sft"]) == sft_data.nb_streamlines
    assert namespace["volume"].dtype == torch.float32
    assert namespace["volume"].shape == (24, 24, 16, 45)


def test_dataset_page(in_demo_folder, capsys):
    namespace = run_page("docs/dataset.md")
    assert printed_lines(capsys) == [
        "['input', 'wm_mask'] [45, 1] ['streamlines']", "2.0 None None",
        "['subj-01']", "(4, 4) [2.  2.5 3. ]"]
    assert namespace["volume"].shape == (24, 24, 16, 45)
    assert namespace["lengths"].dtype == np.int64
    assert namespace["lengths_mm"].dtype == np.float32
    assert len(namespace["lengths"]) == NB_STREAMLINES
    # Points in the order of the ids, and the sft holds the same ones.
    sft_data = namespace["sft_data"]
    for row, streamline_id in enumerate([5, 0, 2]):
        np.testing.assert_array_equal(
            namespace["streamlines"][row],
            sft_data.get_streamlines([streamline_id])[0])
    sft = namespace["sft"]
    assert sft.space == Space.RASMM and sft.origin == Origin.NIFTI
    assert len(sft) == 3
    # RAS mm as nibabel gives them: affine @ (p - 0.5) of the corner-origin
    # voxel points (to_rasmm() alone left them half a voxel off). float32
    # points of at most ~100 mm, a few roundings per coordinate.
    affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
    for corner, rasmm in zip(namespace["streamlines"], sft.streamlines):
        expected = (corner.astype(np.float64) - 0.5) @ affine[:3, :3].T \
            + affine[:3, 3]
        np.testing.assert_allclose(rasmm, expected, rtol=0,
                                   atol=rounding_atol(100, 8))


def test_batching_page(in_demo_folder, capsys):
    namespace = run_page("docs/batching.md")
    nb_batches, batch_line = printed_lines(capsys)
    assert int(nb_batches) == math.ceil(NB_STREAMLINES / 100)
    batch = namespace["batch"]
    # The first batch holds min(100, N) streamlines; 20 % of them are cut
    # in two (all are long enough: at least 5 points at 1 mm).
    nb_read = min(100, NB_STREAMLINES)
    assert batch.nb_streamlines == nb_read + count_from_ratio(0.2, nb_read)
    nb_points = batch.target_points.shape[0]
    assert batch.inputs.shape == (nb_points, 45 * 7)
    assert batch_line == (f"{batch.nb_streamlines} torch.Size([{nb_points}, 3])"
                          f" torch.Size([{nb_points}, 315])")


def test_hdf5_layout_page(in_demo_folder, capsys):
    run_page("docs/hdf5_layout.md")
    assert printed_lines(capsys) == [
        "{'subj-01': {'streamlines': 0}, 'subj-02': {'streamlines': 0}, "
        "'subj-03': {'streamlines': 0}}"]
    with h5py.File("out.hdf5", "r") as f:
        assert f.attrs["step_size"] == 0.5
        assert list(f.attrs["validation_subjs"]) == ["subj-03"]
        assert f["subj-01/streamlines/lengths"].shape == (NB_STREAMLINES,)


def test_models_page(in_demo_folder, capsys):
    namespace = run_page("docs/models.md")
    assert printed_lines(capsys) == [
        "['direction', 'eos'] 17", "torch.Size([2, 3]) torch.Size([2])"]
    assert namespace["outputs"].shape == (17, 5)
    np.testing.assert_allclose(namespace["directions"].norm(dim=1), 1,
                               atol=rounding_atol(1, 3))
    assert ((namespace["eos_probs"] >= 0) & (namespace["eos_probs"] <= 1)).all()


def test_monitoring_page(in_demo_folder, capsys):
    run_page("docs/monitoring.md")
    valid_loss = np.load("demo_output/experiments/demo/logs/valid_loss.npy")
    assert printed_lines(capsys) == [f"{DEMO_EPOCHS} {valid_loss.argmin()}"]


def test_extending_page(in_demo_folder, capsys):
    run_page("docs/extending.md")
    assert printed_lines(capsys)[-1] == "PreviousDirsMLP 32"
    logs = os.path.join("demo_output", "experiments", "mlp", "logs")
    for phase in ("train", "valid"):
        total = np.load(os.path.join(logs, f"{phase}_loss.npy"))
        named = (np.load(os.path.join(logs, f"{phase}_loss_direction.npy"))
                 + np.load(os.path.join(logs, f"{phase}_loss_weights.npy")))
        assert total.shape == (2,)
        # Each batch's total is the float32 sum of its two positive terms.
        np.testing.assert_allclose(total, named, rtol=rounding_atol(1, 1))


def test_training_page_callback_survives_resume(in_demo_folder, capsys):
    run_page("docs/training.md")
    counts = [int(re.match(r"epoch (\d+): (\d+) points", line).group(2))
              for line in printed_lines(capsys)]
    assert len(counts) == 3 and counts[0] > 0
    assert counts == [counts[0], 2 * counts[0], 3 * counts[0]]


def test_tracking_page(in_demo_folder, capsys):
    # getting_started.md's tracking command writes subj03.trk.
    track_cli.main(documented_command("docs/getting_started.md",
                                      "dwiml_track_from_model"))
    namespace = run_page("docs/tracking.md")
    nb_tracked = len(namespace["sft"])
    assert namespace["sft"].data_per_streamline["seeds"].shape == (nb_tracked, 3)
    scores = namespace["scores"]
    assert scores["nb_tracked"] == nb_tracked
    assert scores["nb_reference"] == NB_STREAMLINES
    assert scores["VC"] + scores["IC"] + scores["NC"] == pytest.approx(1)
    # The page's command line gives the same scores as its Python.
    dwiml_score_tractogram.main(documented_command("docs/tracking.md",
                                                   "dwiml_score_tractogram"))
    with open("subj03_scores.json") as f:
        saved = json.load(f)
    assert {key: saved[key] for key in scores} == pytest.approx(scores)


def test_demo_dataset_summary_is_the_documented_one(tmp_path):
    # getting_started.md: "The counts of the dataset summary depend only on
    # --seed" (the demo's default, 0, with 1000 streamlines per subject).
    documented = [line for line in page("docs/getting_started.md").splitlines()
                  if re.match(r"  (training|validation|testing) +subj-", line)]
    paths = make_synthetic_dataset(str(tmp_path / "synthetic"), nb_subjects=3,
                                   nb_streamlines=1000, seed=0)
    hdf5_file = str(tmp_path / "dataset.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, paths.config, paths.splits["training"],
                        paths.splits["validation"], paths.splits["testing"],
                        step_size=2.0)
    assert len(documented) == 3
    assert dwiml_run_demo.summarize_dataset(hdf5_file)[1:] == documented


def test_training_page_copy_previous_baseline(in_demo_folder, capsys):
    copy_previous_cli.main(documented_command(
        "docs/training.md", "dwiml_compute_loss_copy_previous"))
    header, subject, overall, summary = printed_lines(capsys)
    assert header.split() == ["subject", "loss", "angular_error_deg",
                              "n_points"]
    # One validation subject: its values are the subset's.
    assert subject.split()[0] == "subj-02" and overall.split()[0] == "all"
    assert subject.split()[1:] == overall.split()[1:]
    assert 0 < float(subject.split()[1]) < 2
    assert "cosine-regression" in summary and "step_size 2.0" in summary


def test_training_page_fine_tuning(in_demo_folder):
    argv = documented_command("docs/training.md", "dwiml_train_model",
                              containing="--pretrained")
    dwiml_train_model.main([*argv, "-v", "WARNING"])
    with open("demo_output/experiments/tuned/parameters.json") as f:
        params = json.load(f)
    with open("demo_output/experiments/demo/parameters.json") as f:
        demo = json.load(f)
    assert params["model"] == {**demo["model"], "experiment_name": "tuned"}
    assert params["trainer"]["learning_rate"] == 0.001
    start = params["pretrained"]["valid_loss"]
    logged = np.load("demo_output/experiments/tuned/logs/"
                     "pretrained_valid_loss.npy")
    assert logged.tolist() == [start, start]
    # The demo model's loss on the validation subject, as evaluated alone.
    assert start == evaluate_model_folder(
        "demo_output/experiments/demo/best_model", "demo_output/dataset.hdf5",
        "validation", "input", "streamlines")["all"]["loss"]
    assert params["pretrained"]["experiment"] == os.path.abspath(
        "demo_output/experiments/demo")


def test_training_page_shows_the_noise_on_streamlines(in_demo_folder,
                                                      capsys):
    noise_cli.main(documented_command(
        "docs/training.md", "dwiml_visualize_noise_on_streamlines"))
    extract_cli.main(documented_command("docs/training.md",
                                        "dwiml_hdf5_extract_data"))
    summary = capsys.readouterr().out
    assert re.fullmatch(r"50 streamlines in, 50 out, \d+ points; noise "
                        r"displacement: mean 0\.\d{4} mm, max \d\.\d{4} mm\.\n"
                        r"Group 'streamlines' of subject 'subj-01' written to "
                        r"stored\.trk\.\n", summary), summary
    noisy = load_tractogram("noise_0.5mm.trk", "same",
                            bbox_valid_check=False)
    stored = load_tractogram("stored.trk", "same", bbox_valid_check=False)
    # Each point is its stored one (half of the streamlines reversed),
    # moved by at most 2 sigma = 1 mm along each axis.
    sources = noisy.data_per_streamline["source_id"].ravel().astype(int)
    for streamline, source in zip(noisy.streamlines, sources):
        original = stored.streamlines[source]
        moved = min(np.abs(streamline - points).max()
                    for points in (original, original[::-1]))
        assert moved <= 2 * 0.5 + rounding_atol(np.abs(original).max(), 4)


def test_tracking_page_blocs_are_the_matrix_rows(in_demo_folder, tmp_path):
    mask = re.search(r"^MASK=(\S+)$", page("docs/tracking.md"),
                     re.MULTILINE).group(1)
    argv = documented_command("docs/tracking.md",
                              "dwiml_divide_volume_into_blocs")
    divide_cli.main([mask if word == "$MASK" else word for word in argv])
    tractogram = sorted(glob.glob(
        "demo_output/synthetic/dwi_ml_ready/subj-03/bundles/*.trk"))[0]
    from_blocs, from_labels = tmp_path / "blocs.npy", tmp_path / "labels.npy"
    blocs_cli.main([tractogram, mask, "4", str(from_blocs)])
    labels_cli.main([tractogram, "blocs_4.nii.gz", str(from_labels)])
    # 4 divides each axis of the demo's 24 x 24 x 16 grid: no voxel is
    # shared by two blocs, and the endpoints are inside the volume.
    matrix = np.load(from_blocs)
    np.testing.assert_array_equal(np.load(from_labels), matrix)
    assert matrix.shape == (64, 64) and matrix.sum() > 0


def test_monitoring_page_sends_logs_to_comet(in_demo_folder, capsys,
                                             monkeypatch, tmp_path):
    # Offline: no API key, no user config, no network needed.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    before = set(glob.glob("comet_archives/*.zip"))
    argv = documented_command("docs/monitoring.md",
                              "dwiml_send_logs_to_comet")
    send_logs_cli.main(argv)
    [archive] = set(glob.glob("comet_archives/*.zip")) - before
    key = os.path.basename(archive)[:-len(".zip")]
    assert f"logs to a new Comet experiment {key}" in capsys.readouterr().out
    # Every epoch log (not the per-batch one), each epoch a step, its
    # value as saved (Comet takes no NaN: those epochs are left out).
    logs_dir = os.path.join(argv[0], "logs")
    logs = {name[:-len(".npy")]: np.load(os.path.join(logs_dir, name))
            for name in os.listdir(logs_dir)
            if not name.endswith("_per_batch.npy")}
    assert "train_loss" in logs and "valid_loss" in logs
    metrics = archive_metrics(read_archive(archive)[1])
    assert sorted(metrics) == sorted(logs)
    for name, values in logs.items():
        finite = np.isfinite(values)
        assert metrics[name] == (np.flatnonzero(finite).tolist(),
                                 values[finite].tolist()), name
