"""visualize_logs.py: computed curves, per-graph y ranges, outliers,
figures per file, figure size, y labels and best-epoch markers."""
import io
import os
import re
import warnings

import matplotlib.image
import numpy as np
import pytest

from dwi_ml.cli.visualize_logs import main, parse_ylims
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.monitoring.log_expressions import (
    LogExpression,
    add_expression_logs,
    parse_log_expression,
)
from dwi_ml.monitoring.log_reading import read_experiments
from dwi_ml.monitoring.plotting import (
    DPI,
    Panel,
    PlotOptions,
    build_figures,
    default_panels,
    moving_average,
    remove_outliers,
)
from tests.test_visualize_logs import read_csv, run_error, write_experiment

LOGS = {
    "train_loss": [3.0, 2.0, 1.5, 1.4, 1.3],
    "valid_loss": [3.5, 2.5, 1.9, 2.0, 2.2],
    "grad_norm_before_clip": [5.0, 4.0, 3.0, 2.0, 1.0],
    "learning_rate": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
    "train_time": [10.0, 11.0, 9.5, 10.2, 10.0],
    "valid_time": [1.0, 1.1, 0.9, 1.0, 1.0],
    "valid_angle_deg": [40.0, 30.0, 20.0, 25.0, 26.0],
    "train_loss_per_batch": [2.0, 2.1, 1.9, 50.0, 2.0, 1.8, 2.2, 1.9],
}
BEST_EPOCH = 2


@pytest.fixture
def experiment(tmp_path):
    return write_experiment(tmp_path / "run", LOGS, best_epoch=BEST_EPOCH)


@pytest.fixture
def short_run(tmp_path):
    """A run in progress: its valid_loss has one epoch less."""
    return write_experiment(tmp_path / "short", {
        "train_loss": [4.0, 3.0, 2.0], "valid_loss": [5.0, 3.5]})


def axes_by_title(figures):
    return {ax.get_title(): ax for figure in figures for ax in figure.axes
            if ax.get_visible()}


def png_pixels(figure):
    """The figure saved as the script saves it, read back."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return matplotlib.image.imread(buffer)


def star_markers(ax):
    return [line for line in ax.lines if line.get_marker() == "*"]


def test_expressions_are_parsed_without_eval():
    assert parse_log_expression("train_loss") is None
    assert parse_log_expression("diff(valid_loss, train_loss)") == \
        LogExpression("diff", ("valid_loss", "train_loss"))
    assert parse_log_expression(" sum( a,b ,c ) ") == \
        LogExpression("sum", ("a", "b", "c"))
    bad = {"diff(a)": "diff takes 2 logs, found 1",
           "diff(a, b, c)": "diff takes 2 logs, found 3",
           "sum(a)": "sum takes at least 2 logs, found 1",
           "mul(a, b)": "unknown operator 'mul'",
           "sum(a, diff(b, c))": "expressions do not nest",
           "__import__('os')": "unknown operator '__import__'",
           "diff(a, 'os')": "expected log names as arguments",
           "a + b": "expected a log name or OPERATOR(LOG, LOG, ...)"}
    for text, message in bad.items():
        with pytest.raises(DwiMLUserError, match=re.escape(message)):
            parse_log_expression(text)


def test_diff_and_sum_values_over_shared_epochs(experiment, short_run):
    experiments = read_experiments([experiment, short_run])
    diff, total = "diff(valid_loss, train_loss)", \
        "sum(train_loss,valid_loss,grad_norm_before_clip)"
    add_expression_logs(experiments, ["train_loss", diff, total,
                                      "diff(valid_loss, missing)"])
    full, short = experiments
    np.testing.assert_allclose(full.logs[diff], [0.5, 0.5, 0.4, 0.6, 0.9])
    np.testing.assert_allclose(full.logs[total], [11.5, 8.5, 6.4, 5.4, 4.5])
    # The run in progress: over the 2 epochs both logs have.
    np.testing.assert_allclose(short.logs[diff], [1.0, 0.5])
    assert total not in short.logs  # it has no gradient norm
    assert "diff(valid_loss, missing)" not in full.logs


def test_expression_panel_in_png_and_csv(experiment, short_run, tmp_path):
    out, csv_path = str(tmp_path / "gap"), str(tmp_path / "gap.csv")
    main([experiment, short_run, "--graph", "Gap",
          "diff(valid_loss, train_loss)", "--out", out,
          "--save_to_csv", csv_path])
    assert matplotlib.image.imread(out + ".png").shape[:2] == (400, 640)
    _, rows = read_csv(csv_path)
    np.testing.assert_allclose(rows[("run", "diff(valid_loss, train_loss)")],
                               [0.5, 0.5, 0.4, 0.6, 0.9])
    np.testing.assert_allclose(
        rows[("short", "diff(valid_loss, train_loss)")], [1.0, 0.5])


def test_y_labels_and_best_epoch_only_on_losses_and_metrics(experiment):
    experiments = read_experiments([experiment])
    panels = default_panels(experiments) + [
        Panel("Gap", ("diff(valid_loss, train_loss)",))]
    add_expression_logs(experiments, ["diff(valid_loss, train_loss)"])
    axes = axes_by_title(build_figures(panels, experiments))
    expected_labels = {
        "Loss": "loss", "Gradient norm": "gradient norm",
        "Learning rate": "learning rate", "Epoch time (s)": "seconds",
        "Training loss per batch": "loss", "valid_angle_deg": "value",
        "Gap": "loss difference"}
    assert {title: ax.get_ylabel() for title, ax in axes.items()} == \
        expected_labels
    # One star per loss curve, at the best epoch's value.
    stars = star_markers(axes["Loss"])
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [
        ([BEST_EPOCH], [LOGS["train_loss"][BEST_EPOCH]]),
        ([BEST_EPOCH], [LOGS["valid_loss"][BEST_EPOCH]])]
    assert [list(s.get_ydata()) for s in star_markers(
        axes["valid_angle_deg"])] == [[20.0]]
    for title in ("Learning rate", "Epoch time (s)", "Gradient norm",
                  "Training loss per batch"):
        assert star_markers(axes[title]) == [], title


def test_ylim_per_graph_and_for_every_panel(experiment):
    every, per_panel = parse_ylims([["0.5", "10"], ["Loss", "1", "4"],
                                    ["Loss", "1.2", "3"]])
    assert every == (0.5, 10.0) and per_panel == {"Loss": (1.2, 3.0)}
    experiments = read_experiments([experiment])
    panels = default_panels(experiments)
    axes = axes_by_title(build_figures(panels, experiments, PlotOptions(
        ylim=every, panel_ylims=per_panel)))
    assert axes["Loss"].get_ylim() == (1.2, 3.0)
    assert axes["Epoch time (s)"].get_ylim() == (0.5, 10.0)
    # Without any --ylim, matplotlib's automatic range.
    axes = axes_by_title(build_figures(panels, experiments, PlotOptions(
        panel_ylims={"Loss": (1.2, 3.0)})))
    assert axes["Loss"].get_ylim() == (1.2, 3.0)
    low, high = axes["Epoch time (s)"].get_ylim()
    assert low < 0.9 and 11.0 < high < 12.0
    # A range from 0 of every panel: the log-scaled learning rate keeps its
    # own (matplotlib warned, then ignored the 0).
    automatic = axes["Learning rate"].get_ylim()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        axes = axes_by_title(build_figures(panels, experiments, PlotOptions(
            ylim=(0.0, 10.0))))
    assert axes["Epoch time (s)"].get_ylim() == (0.0, 10.0)
    assert axes["Learning rate"].get_ylim() == automatic


def test_remove_outliers_uses_3_iqr_fences():
    values = np.array([2.0, 2.1, 1.9, 50.0, 2.0, 1.8, 2.2, 1.9, -40.0])
    q1, q3 = np.percentile(values, [25, 75])
    cleaned = remove_outliers(values)
    keep = (values >= q1 - 3 * (q3 - q1)) & (values <= q3 + 3 * (q3 - q1))
    assert list(keep) == [True, True, True, False, True, True, True, True,
                          False]
    np.testing.assert_array_equal(cleaned[keep], values[keep])
    assert np.isnan(cleaned[~keep]).all()
    # Q1 = 1, Q3 = 3: the fences are -5 and 9, themselves kept.
    on_fences = np.array([-5.0, 1, 1, 1, 1, 3, 3, 3, 3, 9.0])
    np.testing.assert_array_equal(remove_outliers(on_fences), on_fences)
    beyond = on_fences + np.r_[-0.01, np.zeros(8), 0.01]
    assert np.isnan(remove_outliers(beyond)[[0, -1]]).all()
    # The moving average skips removed values.
    np.testing.assert_allclose(moving_average(
        np.array([1.0, np.nan, 3.0, 5.0]), 2), [1.0, 3.0, 4.0])


def test_remove_outliers_in_drawn_curves(experiment):
    experiments = read_experiments([experiment])
    panel = Panel("Batches", ("train_loss_per_batch",))
    for option, expected_max in ((False, 50.0), (True, 2.2)):
        ax = build_figures([panel], experiments, PlotOptions(
            remove_outliers=option))[0].axes[0]
        assert np.nanmax(ax.lines[0].get_ydata()) == expected_max
        assert len(ax.lines[0].get_ydata()) == len(LOGS[
            "train_loss_per_batch"])


def test_remove_outliers_keeps_the_best_epoch_and_the_learning_rate(
        tmp_path):
    """The best epoch, far below the others, was removed with its star; a
    decaying learning rate lost its first value."""
    valid_loss = [0.9, 0.02, 0.9, 0.91, 0.92, 0.93, 0.9, 0.95]
    learning_rate = [5e-3] + [1e-4] * 7
    run = write_experiment(tmp_path / "run", {
        "valid_loss": valid_loss, "learning_rate": learning_rate},
        best_epoch=1)
    experiments = read_experiments([run])
    figures = build_figures(
        [Panel("Loss", ("valid_loss",)), Panel("LR", ("learning_rate",))],
        experiments, PlotOptions(remove_outliers=True))
    loss, rate = axes_by_title(figures).values()
    assert remove_outliers(valid_loss)[1] != remove_outliers(valid_loss)[1]
    np.testing.assert_array_equal(loss.lines[0].get_ydata(), valid_loss)
    [star] = star_markers(loss)
    assert list(star.get_xdata()) == [1] and list(star.get_ydata()) == [0.02]
    assert np.isnan(remove_outliers(learning_rate)[0])
    np.testing.assert_array_equal(rate.lines[0].get_ydata(), learning_rate)


def test_nb_plots_per_fig_and_fig_size_in_pngs(experiment, tmp_path):
    out = str(tmp_path / "plots")
    main([experiment, "--nb_plots_per_fig", "4", "--fig_size", "5", "3",
          "--out", out])
    # 6 default panels (loss, grad norm, LR, times, per batch, the metric).
    assert sorted(os.listdir(tmp_path)) == ["plots_1.png", "plots_2.png",
                                            "run"]
    for name in ("plots_1.png", "plots_2.png"):
        image = matplotlib.image.imread(str(tmp_path / name))
        assert image.shape[:2] == (3 * DPI, 5 * DPI)
    experiments = read_experiments([experiment])
    figures = build_figures(default_panels(experiments), experiments,
                            PlotOptions(nb_plots_per_fig=4))
    assert [len([ax for ax in figure.axes if ax.get_visible()])
            for figure in figures] == [4, 2]
    # One figure: PREFIX.png, as before; the 6 panels drawn.
    main([experiment, "--nb_plots_per_fig", "6", "--out", out])
    [figure] = build_figures(default_panels(experiments), experiments,
                             PlotOptions(nb_plots_per_fig=6))
    np.testing.assert_array_equal(
        matplotlib.image.imread(out + ".png"), png_pixels(figure))


def test_figures_of_an_earlier_call_are_named(experiment, tmp_path, capsys):
    """-f with fewer figures left the earlier call's last ones beside the
    new ones, showing other panels, unsaid."""
    out = str(tmp_path / "p")
    main([experiment, "--nb_plots_per_fig", "2", "--out", out])
    assert capsys.readouterr().err == ""
    main([experiment, "--nb_plots_per_fig", "3", "--out", out, "-f"])
    assert capsys.readouterr().err == (
        f"WARNING: {tmp_path}: figure(s) of this prefix from an earlier "
        "call, not written now (they show other panels): p_3.png.\n")
    main([experiment, "--out", out, "-f"])
    assert capsys.readouterr().err.endswith(": p_1.png, p_2.png, p_3.png.\n")
    # Kept: they may be a user's.
    assert sorted(os.listdir(tmp_path)) == ["p.png", "p_1.png", "p_2.png",
                                            "p_3.png", "run"]


def test_new_options_refuse_bad_values(experiment, tmp_path, capsys):
    out = ["--out", str(tmp_path / "plot")]
    existing = tmp_path / "taken_2.png"
    existing.write_text("keep me")
    cases = [
        (["--ylim", "1"], "--ylim: expected MIN MAX or GRAPH MIN MAX, got 1"),
        (["--ylim", "Loss", "a", "2"], "--ylim: expected a number for MIN"),
        (["--ylim", "Loss", "3", "2"], "--ylim Loss: expected MIN < MAX"),
        (["--ylim", "Typo", "0", "2"], "--ylim Typo: no panel titled 'Typo'"),
        (["--graph", "G", "diff(train_loss)"], "diff takes 2 logs"),
        (["--graph", "G", "diff(nothing, none)"],
         "none of the logs diff(nothing, none) has a finite value"),
        (["--graph", "G", "diff(train_loss, train_loss_per_batch)"],
         "cannot mix per-batch and per-epoch"),
        (["--nb_plots_per_fig", "0"], "--nb_plots_per_fig: expected at least 1"),
        (["--fig_size", "0", "3"], "--fig_size: expected positive inches"),
    ]
    for argv, message in cases:
        error = run_error([experiment, *argv, *out], capsys)
        assert message in error, error
        assert error.count("\n") == 1, error
    error = run_error([experiment, "--nb_plots_per_fig", "3", "--out",
                       str(tmp_path / "taken")], capsys)
    assert "taken_2.png' already exists" in error
    assert sorted(os.listdir(tmp_path)) == ["run", "taken_2.png"]


def test_values_without_a_neighbour_are_drawn_as_dots(tmp_path):
    """A line through one point draws nothing: the panels of an experiment
    after its first epoch were empty."""
    one_epoch = write_experiment(tmp_path / "one", {
        "train_loss": [2.0], "valid_loss": [2.5],
        "train_loss_per_batch": [3.0, np.nan, 1.0, 2.0]})
    experiments = read_experiments([one_epoch])
    figure = build_figures([Panel("Loss", ("train_loss", "valid_loss")),
                            Panel("Batches", ("train_loss_per_batch",))],
                           experiments)[0]

    def dots(ax, marker="o"):
        return [(line.get_xdata().tolist(), line.get_ydata().tolist())
                for line in ax.lines if line.get_marker() == marker]

    # Training and validation differ by their dots' marker (both were
    # circles of the experiment's colour), and the legend says which.
    assert dots(figure.axes[0]) == [([0], [2.0])]
    assert dots(figure.axes[0], "s") == [([0], [2.5])]
    box = figure.axes[0].get_legend()
    legend = {text.get_text(): handle.get_marker() for text, handle in zip(
        box.get_texts(), getattr(box, "legend_handles", None)
        or box.legendHandles)}  # matplotlib < 3.7
    assert legend["train_loss"] == "o" and legend["valid_loss"] == "s"
    # Epoch ticks are integers (they were -0.045, -0.030, ...).
    figure.canvas.draw()
    ticks = [tick for tick in figure.axes[0].get_xticks()
             if figure.axes[0].get_xlim()[0] <= tick
             <= figure.axes[0].get_xlim()[1]]
    assert ticks == [-1, 0, 1]
    # Batch 0 is alone; batches 2 and 3 make a line.
    assert dots(figure.axes[1]) == [([0], [3.0])]


def legend_entries(ax):
    """Legend text -> its handle's dash pattern (offset, on-off lengths),
    in the legend's order. get_linestyle() says '--' for every custom
    pattern: the pattern is what is drawn."""
    box = ax.get_legend()
    handles = getattr(box, "legend_handles", None) or box.legendHandles
    return {text.get_text(): handle._unscaled_dash_pattern
            for text, handle in zip(box.get_texts(), handles)}


def test_default_panels_name_only_logs_some_experiment_has(tmp_path, capsys):
    # Without a bundle key, tracking validation writes no tracking_vc/ic/nc:
    # the bundles panel's legend still listed them, tracking_nc with the
    # same solid line as tracking_f1, and every experiment was warned
    # about these logs that none has.
    losses = {"train_loss": [3.0, 2.0, 1.0], "valid_loss": [3.5, 2.5, 1.5]}
    tracked = write_experiment(tmp_path / "tracked", {
        **losses, "tracking_f1": [0.2, 0.4, 0.3],
        "tracking_ol": [0.3, 0.5, 0.4], "tracking_or": [0.1, 0.2, 0.2]},
        best_epoch=1)
    plain = write_experiment(tmp_path / "plain", losses)
    out = str(tmp_path / "compared")
    main([tracked, plain, "--out", out])
    assert capsys.readouterr().err == (
        "WARNING: experiment 'plain' has no log tracking_f1, tracking_ol, "
        "tracking_or: not drawn for it.\n")
    # Loss, bundles and overreach: 2 rows of 2 panels.
    image = matplotlib.image.imread(out + ".png")
    assert image.shape[:2] == (2 * 400, 2 * 640)

    experiments = read_experiments([tracked, plain])
    panels = default_panels(experiments)
    assert [(panel.title, panel.log_names) for panel in panels] == [
        ("Loss", ("train_loss", "valid_loss")),
        ("Tracking: bundles", ("tracking_f1", "tracking_ol")),
        ("Tracking: overreach", ("tracking_or",))]
    axes = axes_by_title(build_figures(panels, experiments))
    assert list(legend_entries(axes["Tracking: bundles"])) == [
        "tracked", "tracking_f1", "tracking_ol", "best epoch"]


def test_loss_panel_of_a_run_without_validation_names_train_loss(tmp_path):
    # valid_loss all NaN (no validation subject) is left out: the Loss
    # panel held train_loss alone, and its legend said only 'best epoch'.
    run = write_experiment(tmp_path / "noval", {
        "train_loss": [3.0, 2.0, 2.5], "valid_loss": [np.nan] * 3,
        "learning_rate": [1e-3] * 3})
    os.makedirs(tmp_path / "noval" / "best_model")
    (tmp_path / "noval" / "best_model" / "best_epoch.json").write_text(
        '{"epoch": 1, "loss": 2.0, "metric": "train_loss"}')
    experiments = read_experiments([run])
    axes = axes_by_title(build_figures(default_panels(experiments),
                                       experiments))
    loss = axes["Loss"]
    assert list(legend_entries(loss)) == ["noval", "train_loss", "best epoch"]
    curves = [line.get_ydata().tolist() for line in loss.lines
              if line.get_marker() not in ("*", "o")]
    assert curves == [[3.0, 2.0, 2.5]]
    # A panel that is one log by definition does not repeat its name.
    assert list(legend_entries(axes["Learning rate"])) == ["noval"]


def test_the_logs_of_a_default_panel_have_distinct_line_styles(tmp_path):
    bundles = ("tracking_f1", "tracking_ol", "tracking_vc", "tracking_ic",
               "tracking_nc")
    run = write_experiment(tmp_path / "run", {
        name: [0.1 * index, 0.2] for index, name in enumerate(bundles)})
    experiments = read_experiments([run])
    axes = axes_by_title(build_figures(default_panels(experiments),
                                       experiments))
    styles = legend_entries(axes["Tracking: bundles"])
    assert [name for name in styles if name in bundles] == list(bundles)
    assert len({str(styles[name]) for name in bundles}) == len(bundles)


def test_smooth_longer_than_a_log_warns_once(experiment, tmp_path, capsys):
    # A window longer than the 8 batches drew the raw values only, silently.
    out = str(tmp_path / "batches")
    main([experiment, "--graph", "Batches", "train_loss_per_batch", "--graph",
          "Again", "train_loss_per_batch", "--smooth", "20", "--out", out])
    assert capsys.readouterr().err == (
        "WARNING: --smooth 20: experiment 'run', log train_loss_per_batch "
        "has only 8 values: drawn without smoothing.\n")
    figures = build_figures([Panel("Batches", ("train_loss_per_batch",))],
                            read_experiments([experiment]),
                            PlotOptions(smooth=20))
    lines = axes_by_title(figures)["Batches"].lines
    assert len(lines) == 1
    np.testing.assert_array_equal(lines[0].get_ydata(),
                                  LOGS["train_loss_per_batch"])
    main([experiment, "--graph", "Batches", "train_loss_per_batch",
          "--smooth", "8", "--out", out, "-f"])
    assert capsys.readouterr().err == ""


def test_log_y_names_the_values_it_leaves_out(tmp_path, capsys):
    run = write_experiment(tmp_path / "run", {
        "train_loss": [3.0, 2.0, 1.0, 0.5],
        "valid_gain": [0.5, 0.0, -0.2, 1.0],
        "learning_rate": [1e-2, 1e-3, 0.0, 0.0]})
    out = str(tmp_path / "plot")
    main([run, "--graph", "Gain", "valid_gain", "train_loss",
          "--graph", "Gain again", "valid_gain", "--log_y", "--out", out])
    assert capsys.readouterr().err == (
        "WARNING: experiment 'run', log valid_gain: 2 of 4 values are <= 0, "
        "left out on the log-scale y axis.\n")
    figures = build_figures([Panel("Gain", ("valid_gain", "train_loss")),
                             Panel("Gain again", ("valid_gain",))],
                            read_experiments([run]), PlotOptions(log_y=True))
    axes = axes_by_title(figures)
    assert [axes[title].get_yscale() for title in ("Gain", "Gain again")] \
        == ["log", "log"]
    np.testing.assert_array_equal(axes["Gain again"].lines[0].get_ydata(),
                                  [0.5, 0.0, -0.2, 1.0])
    np.testing.assert_array_equal(
        matplotlib.image.imread(out + ".png"), png_pixels(figures[0]))
    # The learning rate panel is always on a log scale.
    main([run, "--graph", "LR", "learning_rate", "--out", out, "-f"])
    assert capsys.readouterr().err == (
        "WARNING: experiment 'run', log learning_rate: 2 of 4 values are "
        "<= 0, left out on the log-scale y axis.\n")
    main([run, "--graph", "Gain", "valid_gain", "--out", out, "-f"])
    assert capsys.readouterr().err == ""


def test_an_experiment_given_twice_is_refused(experiment, tmp_path, capsys):
    # Two curves of one colour each, under two identical legend labels.
    error = run_error([experiment, experiment + os.sep, "--out",
                       str(tmp_path / "plot")], capsys)
    assert "\n" not in error.strip() and error.strip().endswith(
        f"experiment '{experiment}{os.sep}' is given twice (as "
        f"'{experiment}' too): give each experiment once.")
    assert not os.path.exists(tmp_path / "plot.png")
