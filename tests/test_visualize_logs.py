"""visualize_logs.py: PNG and CSV from experiments' logs/*.npy."""
import csv
import json
import os

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from dwi_ml.cli.visualize_logs import main
from dwi_ml.monitoring.log_reading import experiment_labels, read_experiment_logs
from dwi_ml.monitoring.plotting import DPI, PANEL_SIZE_INCHES, moving_average
from tests.test_comet import make_tiny_trainer, tiny_hdf5  # noqa: F401
from tests.tolerances import EPS64, rounding_atol

PANEL_PX = (round(PANEL_SIZE_INCHES[1] * DPI), round(PANEL_SIZE_INCHES[0] * DPI))
# matplotlib's first three cycle colours: one per experiment, in order.
EXPERIMENT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def write_experiment(folder, logs, best_epoch=None, parameters=True):
    """An experiment folder written by hand: logs/NAME.npy (float64)."""
    os.makedirs(os.path.join(folder, "logs"))
    for name, values in logs.items():
        np.save(os.path.join(folder, "logs", f"{name}.npy"),
                np.asarray(values, dtype=np.float64))
    if parameters:
        with open(os.path.join(folder, "parameters.json"), "w") as f:
            json.dump({"trainer": {}}, f)
    if best_epoch is not None:
        os.makedirs(os.path.join(folder, "best_model"))
        with open(os.path.join(folder, "best_model", "best_epoch.json"),
                  "w") as f:
            json.dump({"epoch": best_epoch,
                       "loss": float(logs["valid_loss"][best_epoch])}, f)
    return str(folder)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, tiny_hdf5):  # noqa: F811
    """A real 2-epoch run, a complete hand-written run and one in progress."""
    root = tmp_path_factory.mktemp("experiments")
    trainer = make_tiny_trainer(tiny_hdf5, root, "real_run")
    trainer.save_parameters()
    trainer.train_and_validate()
    rng = np.random.default_rng(3)
    complete = write_experiment(root / "complete", {
        "train_loss": [3.0, 2.0, 1.5, 1.4],
        "valid_loss": [3.5, 2.5, 1.9, 2.0],
        "grad_norm_before_clip": [5.0, 4.0, 3.0, 2.0],
        "grad_norm_after_clip": [1.0, 1.0, 1.0, 1.0],
        "learning_rate": [1e-2, 1e-3, 1e-4, 1e-5],
        "train_time": [10.0, 11.0, 9.5, 10.2],
        "valid_time": [1.0, 1.1, 0.9, 1.0],
        "train_loss_per_batch": rng.uniform(1, 3, size=40),
    }, best_epoch=2)
    in_progress = write_experiment(root / "in_progress", {
        "train_loss": [2.5, 2.0, 1.8],
        "valid_loss": [2.7, 2.2],
        "learning_rate": [1e-3, 1e-3, 1e-3],
    })
    return [trainer.experiment_dir, complete, in_progress]


def read_png(path):
    image = matplotlib.image.imread(path)
    assert image.dtype == np.float32 and image.shape[2] in (3, 4)
    return image[..., :3]


def has_colour(image, colour, tolerance=0.02):
    rgb = np.asarray(matplotlib.colors.to_rgb(colour), dtype=np.float32)
    return bool((np.abs(image - rgb).max(axis=2) < tolerance).any())


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {(row[0], row[1]): [float(v) for v in row[2:] if v]
                     for row in rows[1:]}


def run_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_default_figure_overlays_all_experiments_and_csv_matches_npy(
        experiments, tmp_path, capsys):
    csv_path = str(tmp_path / "values.csv")
    capsys.readouterr()
    main([*experiments, "--save_to_csv", csv_path])
    png = os.path.join(experiments[0], "logs_plot.png")
    # Written into the first experiment by default: the one line says so.
    captured = capsys.readouterr()
    assert captured.out == (f"Saved the figure in {png} and the values in "
                            f"{csv_path}.\n")
    image = read_png(png)
    # 5 default panels (loss, grad norm, LR, times, per batch): 3 rows of 2.
    assert image.shape[:2] == (3 * PANEL_PX[0], 2 * PANEL_PX[1])
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    assert all(has_colour(image, colour) for colour in EXPERIMENT_COLOURS)
    # set_verbosity replaces the logging handlers: warnings go to stderr.
    assert captured.err == (
        "WARNING: experiment 'in_progress' has no log grad_norm_before_clip, "
        "grad_norm_after_clip, train_time, valid_time, "
        "train_loss_per_batch: not drawn for it.\n")

    header, rows = read_csv(csv_path)
    assert header[:3] == ["experiment", "metric", "0"]
    expected_rows = 0
    for folder, label in zip(experiments, experiment_labels(experiments)):
        for path in sorted(os.listdir(os.path.join(folder, "logs"))):
            values = np.load(os.path.join(folder, "logs", path))
            if np.isfinite(values).any():
                expected_rows += 1
                np.testing.assert_array_equal(rows[(label, path[:-4])], values)
    assert len(rows) == expected_rows
    assert rows[("in_progress", "valid_loss")] == [2.7, 2.2]
    assert len(rows[("real_run", "train_loss_per_batch")]) == 8


def test_real_run_logs_and_best_epoch_are_read(experiments):
    logs = read_experiment_logs(experiments[0])
    with open(os.path.join(experiments[0], "best_model",
                           "best_epoch.json")) as f:
        best = json.load(f)
    assert (logs.best_epoch, logs.best_loss) == (best["epoch"], best["loss"])
    assert logs.label == "real_run"
    assert {len(values) for name, values in logs.logs.items()
            if name != "train_loss_per_batch"} == {2}


def test_chosen_panels_limits_and_smoothing(experiments, tmp_path):
    out = str(tmp_path / "chosen")
    main([experiments[1], experiments[2], "--graph", "Losses", "train_loss",
          "valid_loss", "--graph", "LR", "learning_rate", "--log_y",
          "--xlim", "0", "3", "--ylim", "1e-6", "10", "--out", out])
    image = read_png(out + ".png")
    assert image.shape[:2] == (PANEL_PX[0], 2 * PANEL_PX[1])
    assert has_colour(image, EXPERIMENT_COLOURS[0])
    assert has_colour(image, EXPERIMENT_COLOURS[1])
    assert not has_colour(image, EXPERIMENT_COLOURS[2])

    main([experiments[1], "--graph", "Batches", "train_loss_per_batch",
          "--smooth", "5", "--out", str(tmp_path / "batches.png")])
    image = read_png(str(tmp_path / "batches.png"))
    assert image.shape[:2] == PANEL_PX
    assert has_colour(image, EXPERIMENT_COLOURS[0])


def test_moving_average_is_the_mean_of_each_window():
    values = np.array([1.0, 2.0, 6.0, 3.0, 8.0])
    # float64 means of 3 values: 3 roundings each.
    np.testing.assert_allclose(moving_average(values, 3), [3.0, 11 / 3, 17 / 3],
                               rtol=rounding_atol(1, 3, eps=EPS64))
    np.testing.assert_array_equal(moving_average(values, 1), values)


def test_existing_outputs_need_f(experiments, tmp_path, capsys):
    out = str(tmp_path / "plot")
    capsys.readouterr()
    main([experiments[1], "--out", out])
    assert capsys.readouterr().out == f"Saved the figure in {out}.png.\n"
    first = os.path.getsize(out + ".png")
    error = run_error([experiments[1], experiments[2], "--out", out], capsys)
    assert f"output '{out}.png' already exists; use -f" in error
    assert os.path.getsize(out + ".png") == first
    main([experiments[1], experiments[2], "--out", out, "-f"])
    assert os.path.getsize(out + ".png") != first

    csv_path = tmp_path / "values.csv"
    csv_path.write_text("keep me")
    error = run_error([experiments[1], "--out", str(tmp_path / "other"),
                       "--save_to_csv", str(csv_path)], capsys)
    assert "already exists" in error
    assert csv_path.read_text() == "keep me"
    assert not os.path.exists(tmp_path / "other.png")


def test_bad_inputs_are_one_line_errors(experiments, tmp_path, capsys):
    not_experiment = tmp_path / "not_experiment"
    not_experiment.mkdir()
    empty = write_experiment(tmp_path / "empty", {})
    only_nan = write_experiment(tmp_path / "only_nan",
                                {"valid_loss": [np.nan, np.nan]})
    matrix = write_experiment(tmp_path / "matrix", {"train_loss": [[1, 2]]})
    out = ["--out", str(tmp_path / "plot")]
    cases = [
        ([str(tmp_path / "missing")], "experiment '{}' does not exist".format(
            tmp_path / "missing")),
        ([str(not_experiment)], "is not a dwi_ml experiment: expected a logs/"),
        ([empty], "has no logs yet"),
        ([only_nan], "has no logs yet"),
        ([matrix], "expected a 1-D numeric array, found shape (1, 2)"),
        ([experiments[1], "--graph", "Loss"],
         "--graph: expected TITLE LOG [LOG ...], got only 'Loss'"),
        ([experiments[1], "--graph", "Typo", "trian_loss"],
         "--graph 'Typo': none of the logs trian_loss has a finite "
         "value in any experiment"),
        ([experiments[1], "--graph", "Mix", "train_loss",
          "train_loss_per_batch"], "cannot mix per-batch and per-epoch"),
        ([experiments[1], "--xlim", "5", "1"], "--xlim: expected MIN < MAX"),
        ([experiments[1], "--smooth", "0"], "--smooth: expected at least 1"),
    ]
    for argv, message in cases:
        error = run_error(argv + out, capsys)
        assert message in error, error
        assert error.count("\n") == 1, error
    assert not os.path.exists(tmp_path / "plot.png")


def test_show_without_display_warns_and_saves(experiments, tmp_path,
                                              monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    main([experiments[1], "--show", "--out", str(tmp_path / "shown")])
    assert "WARNING: --show: no display found" in capsys.readouterr().err
    assert read_png(str(tmp_path / "shown.png")).shape[:2] == \
        (3 * PANEL_PX[0], 2 * PANEL_PX[1])


def test_an_experiment_without_logs_yet_is_left_out_of_a_comparison(
        experiments, tmp_path, capsys):
    """A run still in its first epoch does not stop the others' plot; alone,
    or with only others like it, it is the one-line error above."""
    starting = write_experiment(tmp_path / "starting", {})
    out = str(tmp_path / "plot")
    main([experiments[1], starting, "--out", out,
          "--save_to_csv", str(tmp_path / "values.csv")])
    err = capsys.readouterr().err
    assert f"experiment '{starting}' has no logs yet" in err
    assert err.count("\n") == 1, err
    _, values = read_csv(tmp_path / "values.csv")
    assert {experiment for experiment, _ in values} == {"complete"}
    error = run_error([starting, write_experiment(tmp_path / "other", {}),
                       "--out", str(tmp_path / "none")], capsys)
    assert f"experiment '{starting}' has no logs yet" in error
    assert error.count("\n") == 1, error


def test_same_folder_names_are_told_apart(tmp_path):
    paths = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"),
             str(tmp_path / "c" / "other") + "/"]
    assert experiment_labels(paths) == [paths[0], paths[1], "other"]


def test_empty_log_file_is_a_one_line_error(tmp_path, capsys):
    """A 0-byte logs/NAME.npy (a copy cut short): numpy's EOFError went
    through as a traceback; a truncated one already gave one line."""
    folder = write_experiment(tmp_path / "cut", {"train_loss": [2.0, 1.0]})
    (tmp_path / "cut" / "logs" / "valid_loss.npy").write_bytes(b"")
    error = run_error([folder, "--out", str(tmp_path / "plot")], capsys)
    assert error.count("\n") == 1, error
    assert ("log '{}': expected a .npy array, found a file without the "
            ".npy header (0 bytes".format(
                tmp_path / "cut" / "logs" / "valid_loss.npy")) in error
    assert not os.path.exists(tmp_path / "plot.png")


@pytest.mark.parametrize("content, expected", [
    # numpy said it held pickled data and suggested allow_pickle=True.
    (b"garbage\n", "found a file without the .npy header (8 bytes"),
    (None, "expected an array of numbers, found Python objects (pickled); "
           "not loaded."),
])
def test_a_log_that_is_no_array_of_numbers_is_named(tmp_path, capsys,
                                                   content, expected):
    folder = write_experiment(tmp_path / "bad", {"train_loss": [2.0, 1.0]})
    path = tmp_path / "bad" / "logs" / "valid_loss.npy"
    if content is None:
        np.save(path, np.array([{"loss": 1}], dtype=object),
                allow_pickle=True)
    else:
        path.write_bytes(content)
    error = run_error([folder, "--out", str(tmp_path / "plot")], capsys)
    assert error.count("\n") == 1, error
    assert f"log '{path}': " in error and expected in error
    assert "allow_pickle" not in error
