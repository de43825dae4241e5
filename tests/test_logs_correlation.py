"""dwiml_visualize_logs_correlation.py: correlations of two logs over epochs,
on experiment folders with known logs, and a real PNG figure."""
import io
import json
import os

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

import dwi_ml
from dwi_ml.cli.dwiml_visualize_logs_correlation import main
from dwi_ml.monitoring.log_correlation import correlate_logs, draw_correlation
from dwi_ml.monitoring.log_reading import read_experiments
from dwi_ml.monitoring.plotting import DPI


def _experiment(folder, name, **logs):
    logs_dir = os.path.join(folder, name, "logs")
    os.makedirs(logs_dir)
    for log, values in logs.items():
        np.save(os.path.join(logs_dir, f"{log}.npy"),
                np.asarray(values, dtype=np.float64))
    return os.path.join(folder, name)


def test_correlations_per_experiment_and_pooled(tmp_path, capsys):
    # a: tracking_f1 falls exactly as valid_loss rises (r = rho = -1); its
    # NaN epoch (no tracking yet) is left out. b: a monotonic, non-linear
    # relation (rho = 1, r < 1). c: a constant log (no correlation).
    a = _experiment(tmp_path, "a", valid_loss=[4, 1, 2, 3, 5],
                    tracking_f1=[np.nan, 0.9, 0.8, 0.7, 0.5])
    b = _experiment(tmp_path, "b", valid_loss=[1, 2, 3, 4],
                    tracking_f1=[1, 4, 9, 100])
    c = _experiment(tmp_path, "c", valid_loss=[1, 2, 3],
                    tracking_f1=[0.5, 0.5, 0.5])
    out, out_json = tmp_path / "corr.png", tmp_path / "corr.json"
    main([a, b, c, "valid_loss", "tracking_f1", "--out", str(out),
          "--out_json", str(out_json)])
    saved = json.loads(out_json.read_text())
    assert saved["argv"][3:5] == ["valid_loss", "tracking_f1"]
    assert saved["options"]["experiments"] == [a, b, c]
    assert saved["dwi_ml_version"] == dwi_ml.__version__
    assert saved["experiments"]["a"]["nb_epochs"] == 4
    assert saved["experiments"]["a"]["pearson"] == pytest.approx(-1)
    assert saved["experiments"]["a"]["spearman"] == pytest.approx(-1)
    assert saved["experiments"]["b"]["spearman"] == pytest.approx(1)
    x, y = np.array([1., 2, 3, 4]), np.array([1., 4, 9, 100])
    r = float(np.corrcoef(x, y)[0, 1])
    assert saved["experiments"]["b"]["pearson"] == pytest.approx(r)
    assert r < 0.9
    assert saved["experiments"]["c"] == {"nb_epochs": 3, "pearson": None,
                                         "spearman": None}
    # Pooled: the 11 paired epochs of all three, and their line.
    px = np.array([1., 2, 3, 5, 1, 2, 3, 4, 1, 2, 3])
    py = np.array([0.9, 0.8, 0.7, 0.5, 1, 4, 9, 100, 0.5, 0.5, 0.5])
    assert saved["all"]["nb_epochs"] == 11
    assert saved["all"]["pearson"] == pytest.approx(np.corrcoef(px, py)[0, 1])
    assert saved["all"]["spearman"] == pytest.approx(
        stats.spearmanr(px, py)[0])
    slope, intercept = np.polyfit(px, py, 1)
    assert saved["fit"] == pytest.approx({"slope": slope,
                                          "intercept": intercept})
    image = matplotlib.image.imread(str(out))
    assert image.shape[:2] == (1000, 640)
    printed = capsys.readouterr().out.splitlines()
    assert printed[3].split() == ["c", "3", "n/a", "n/a"]
    assert printed[4].split()[:2] == ["all", "11"]


def _figure_inputs(experiment, first_epoch):
    """What the script draws for train_loss and valid_loss."""
    per_experiment, pooled, fit, pairs = correlate_logs(
        read_experiments([experiment]), "train_loss", "valid_loss",
        first_epoch)
    return (pairs, ("train_loss", "valid_loss"), per_experiment, pooled,
            fit)


def test_first_epochs_left_out_and_default_output(tmp_path):
    a = _experiment(tmp_path, "a", train_loss=[9, 1, 2, 3, 4],
                    valid_loss=[0, 2, 4, 6, 8.5])
    main([a, "train_loss", "valid_loss", "--ignore_first_epochs", "1",
          "--out_json", str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["all"]["nb_epochs"] == 4
    assert saved["all"]["spearman"] == pytest.approx(1)
    # The figure of epochs 1 to 4: each log against the epochs, then
    # valid_loss against train_loss.
    figure = Figure(figsize=(6.4, 10.0), dpi=DPI)
    draw_correlation(figure, *_figure_inputs(a, 1))
    by_epoch_1, by_epoch_2, scatter = figure.axes
    for ax, values in ((by_epoch_1, [1, 2, 3, 4]),
                       (by_epoch_2, [2, 4, 6, 8.5])):
        np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(ax.lines[0].get_ydata(), values)
    np.testing.assert_array_equal(scatter.collections[0].get_offsets(),
                                  [[1, 2], [2, 4], [3, 6], [4, 8.5]])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    image = matplotlib.image.imread(
        os.path.join(a, "logs_correlation_train_loss_valid_loss.png"))
    assert image.shape[:2] == (1000, 640)
    np.testing.assert_array_equal(image, matplotlib.image.imread(buffer))


def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    a = _experiment(tmp_path, "a", valid_loss=[1, 2, 3], train_loss=[3, 2, 1],
                    train_loss_per_batch=[1, 2, 3, 4])
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"mine")
    cases = [
        ([a, "valid_loss", "nope"], "no log 'nope'"),
        ([a, "valid_loss", "train_loss_per_batch"], "per-batch"),
        ([a, "valid_loss", "train_loss", "--out", str(kept)], str(kept)),
        ([a, "valid_loss", "train_loss", "--ignore_first_epochs", "-1"],
         "--ignore_first_epochs"),
        ([str(tmp_path / "missing"), "valid_loss", "train_loss"], "missing"),
        # The option whose value is wrong is named.
        ([a, "valid_loss", "train_loss", "--out", str(tmp_path / "c.png"),
          "--out_json", str(tmp_path / "d.png")],
         f"--out_json '{tmp_path / 'd.png'}': expected the extension .json"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as raised:
            main(argv)
        err = capsys.readouterr().err
        assert raised.value.code != 0 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    assert kept.read_bytes() == b"mine"


def test_only_the_two_logs_are_read(tmp_path, capsys):
    # A malformed log that is not correlated (a user's own 2-D array) is
    # not opened; a malformed one that is named is refused in one line.
    a = _experiment(tmp_path, "a", train_loss=[4, 3, 2, 1],
                    valid_loss=[5, 4, 3, 2])
    np.save(os.path.join(a, "logs", "twod.npy"), np.zeros((5, 2)))
    main([a, "train_loss", "valid_loss", "--out_json",
          str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["experiments"]["a"]["nb_epochs"] == 4
    assert saved["experiments"]["a"]["pearson"] == pytest.approx(1)
    capsys.readouterr()
    for argv, message in (
            ([a, "train_loss", "twod"], "twod.npy': expected a 1-D numeric"),
            # The logs not read are still named as found.
            ([a, "train_loss", "nope"],
             "no log 'nope' with a value (found: train_loss, twod, "
             "valid_loss)")):
        with pytest.raises(SystemExit) as raised:
            main([*argv, "--out", str(tmp_path / "d.png")])
        err = capsys.readouterr().err
        assert raised.value.code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d.png").exists()


def test_no_epoch_left_is_refused_and_an_empty_experiment_named(tmp_path,
                                                                capsys):
    a = _experiment(tmp_path, "a", train_loss=[5, 4, 3, 2, 1],
                    valid_loss=[6, 5, 4, 3, 1])
    b = _experiment(tmp_path, "b", train_loss=[3, 2, 1],
                    valid_loss=[3, 1, 0])
    out = tmp_path / "c.png"
    for experiments, nb_ignored, message in (
            ([a, b], "10",
             "--ignore_first_epochs: expected fewer than the epochs of the "
             "experiments, found 10 while they have 5 epochs at most with "
             "both train_loss and valid_loss: no epoch is left"),
            ([a], "5", "found 5 while they have 5")):
        with pytest.raises(SystemExit) as raised:
            main([*experiments, "train_loss", "valid_loss",
                  "--ignore_first_epochs", nb_ignored, "--out", str(out)])
        err = capsys.readouterr().err
        assert raised.value.code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    # b has no epoch left, a has 2: the correlation is a's, b is named.
    main([a, b, "train_loss", "valid_loss", "--ignore_first_epochs", "3",
          "--out", str(out), "--out_json", str(tmp_path / "c.json")])
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["experiments"]["b"]["nb_epochs"] == 0
    assert saved["all"]["nb_epochs"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "WARNING: No epoch to correlate after --ignore_first_epochs 3 in b "
        "(3 epochs with both train_loss and valid_loss): they add nothing "
        "to the figure or the pooled correlation."]
    assert out.exists()
