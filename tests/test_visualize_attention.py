"""dwiml_visualize_attention.py: heatmaps per layer and head, and a
tractogram of per-point attention summaries."""
import glob
import io
import os
import signal
import subprocess
import sys
import time

import matplotlib.image
import numpy as np
import pytest
import torch
from dipy.io.streamline import load_tractogram
from error_checks import assert_user_error
from file_tree import snapshot
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.cli.dwiml_visualize_attention import TRACTOGRAM_NAME
from dwi_ml.cli.dwiml_visualize_attention import main as attention_main
from dwi_ml.io_utils.errors import EXIT_STATUS_SIGTERM
from dwi_ml.io_utils.output_folders import MARKER_FILE
from dwi_ml.models import load_model_from_params_and_state
from dwi_ml.monitoring.attention_views import (
    draw_heatmap,
    heatmap_names,
    subject_attention,
)
from tests.tolerances import rounding_atol

IDS = ["0", "3", "5"]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention")
    hdf5_file = make_training_hdf5(str(folder), nb_streamlines=30)
    common = [hdf5_file, "input", "streamlines", "--max_epochs", "1",
              "--step_size", "1.5", "--nb_previous_dirs", "1",
              "-v", "WARNING"]
    train_main([str(folder), "original", *common, "--model_type",
                "transformer_original", "--d_model", "8", "--nheads", "2",
                "--n_layers_e", "2", "--n_layers_d", "1"])
    train_main([str(folder), "src_only", *common, "--model_type",
                "transformer_src_only", "--d_model", "8", "--nheads", "2",
                "--n_layers_e", "1", "--add_eos"])
    train_main([str(folder), "l2t", *common, "--rnn_layer_sizes", "8"])
    return {"hdf5": hdf5_file, "folder": folder}


def _read(out_dir):
    pngs = sorted(name for name in os.listdir(out_dir)
                  if name.endswith(".png"))
    sft = load_tractogram(str(out_dir / TRACTOGRAM_NAME), "same")
    return pngs, sft


def _assert_heatmaps(attention, out_dir):
    """Each PNG of ``out_dir`` is the heatmap of its layer and head: one
    panel per streamline drawing that map (causal: upper triangle 0, rows
    of softmax weights summing to 1), as the script saved it."""
    names = heatmap_names(attention)
    assert sorted(file_name for *_, file_name in names) == sorted(
        name for name in os.listdir(out_dir) if name.endswith(".png"))
    for name, layer, head, file_name in names:
        figure = draw_heatmap(attention, name, layer, head)
        panels = [ax for ax in figure.axes if ax.images]
        assert len(panels) == len(IDS)
        for row, (ax, count) in enumerate(zip(panels, attention.counts)):
            drawn = np.asarray(ax.images[0].get_array())
            weights = attention.maps[name][layer, row, head].numpy()
            np.testing.assert_array_equal(drawn, weights[:count, :count])
            np.testing.assert_array_equal(np.triu(drawn, 1), 0)
            # float64 sums of count (< 64) float32 softmax outputs.
            np.testing.assert_allclose(drawn.sum(axis=1), 1, rtol=0,
                                       atol=rounding_atol(1, 64))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        buffer.seek(0)
        image = matplotlib.image.imread(str(out_dir / file_name))
        # Three panels (one per streamline) side by side, with colour bars.
        assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]
        np.testing.assert_array_equal(image, matplotlib.image.imread(buffer))


@pytest.mark.parametrize("name, expected_pngs", [
    # 2 encoder layers, 1 decoder layer (self and cross), 2 heads each.
    ("original", ["cross_layer0_head0.png", "cross_layer0_head1.png",
                  "decoder_layer0_head0.png", "decoder_layer0_head1.png",
                  "encoder_layer0_head0.png", "encoder_layer0_head1.png",
                  "encoder_layer1_head0.png", "encoder_layer1_head1.png"]),
    ("src_only", ["encoder_layer0_head0.png", "encoder_layer0_head1.png"]),
])
def test_heatmaps_and_tractogram(experiments, tmp_path, name,
                                 expected_pngs):
    experiment = str(experiments["folder"] / name)
    out_dir = tmp_path / "views"
    attention_main([experiment, experiments["hdf5"], "subj-03",
                    str(out_dir), "--streamline_ids", *IDS])
    pngs, sft = _read(out_dir)
    assert pngs == expected_pngs

    model = load_model_from_params_and_state(experiment + "/best_model")
    expected = subject_attention(model.eval(), experiments["hdf5"],
                                 "subj-03", "input", "streamlines",
                                 [int(i) for i in IDS])
    _assert_heatmaps(expected, out_dir)
    lengths = expected.streamlines._lengths
    assert len(sft) == len(IDS)
    np.testing.assert_array_equal(sft.streamlines._lengths, lengths)
    assert set(sft.data_per_point) == {"attention_received",
                                       "most_attended_from"}
    received = sft.data_per_point["attention_received"]
    attended_from = sft.data_per_point["most_attended_from"]
    weights = torch.cat([expected.maps[key] for key in ("encoder", "decoder")
                         if key in expected.maps]).mean(dim=(0, 2))
    for row, (n, count) in enumerate(zip(lengths, expected.counts)):
        values = np.asarray(received[row]).ravel()
        sources = np.asarray(attended_from[row]).ravel()
        assert len(values) == n and len(sources) == n
        assert count == n - 1 + model.add_eos
        assert np.all((values >= 0) & (values <= 1))
        # Causal: a point is attended from itself or a later point.
        assert np.all(sources[:count] >= np.arange(count))
        assert np.all(sources < n)
        # The first point: seen by every query, mean of its column.
        column = weights[row, :count, 0].numpy()
        assert values[0] == pytest.approx(column.mean(), rel=1e-6)
        assert sources[0] == np.argmax(column)
        # The last query sees only the past: its own weight, alone.
        assert values[count - 1] == pytest.approx(
            float(weights[row, count - 1, count - 1]), rel=1e-6)
        if count < n:
            assert values[count] == 0 and sources[count] == count


def test_overwrite_and_refusals(experiments, tmp_path, capsys):
    hdf5 = experiments["hdf5"]
    original = str(experiments["folder"] / "original")
    out_dir = tmp_path / "views"
    capsys.readouterr()
    attention_main([original, hdf5, "subj-03", str(out_dir),
                    "--streamline_ids", "1"])
    assert (out_dir / MARKER_FILE).is_file()
    nb_heatmaps = len(_read(out_dir)[0])
    assert capsys.readouterr().out == (
        f"Saved {nb_heatmaps} heatmaps and streamlines_attention.trk in "
        f"{out_dir}.\n")
    assert_user_error(attention_main, [original, hdf5, "subj-03", out_dir],
                      capsys, tmp_path, "already exists", "-f")
    # -f replaces the folder: the new run's two streamlines.
    attention_main([original, hdf5, "subj-03", str(out_dir),
                    "--streamline_ids", "2", "4", "-f"])
    assert len(_read(out_dir)[1]) == 2
    # A figure of the user's saved there: -f deleted it (any *.png).
    (out_dir / "my_figure_for_paper.png").write_text("mine")
    assert_user_error(attention_main, [original, hdf5, "subj-03", out_dir,
                                       "-f"],
                      capsys, tmp_path, "also holds 'my_figure_for_paper.png'")
    (out_dir / "my_figure_for_paper.png").unlink()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_user_error(attention_main, [original, hdf5, "subj-03", foreign,
                                       "-f"],
                      capsys, tmp_path, "not empty", "refused")
    assert_user_error(
        attention_main, [experiments["folder"] / "l2t", hdf5, "subj-03",
                         tmp_path / "new"],
        capsys, tmp_path, "expected a Transformer model",
        "Learn2TrackModel")
    assert_user_error(
        attention_main, [original, hdf5, "subj-03", tmp_path / "new",
                         "--streamline_ids", "0", "999"],
        capsys, tmp_path, "--streamline_ids", "999")
    assert not (tmp_path / "new").exists()


def test_attention_received_counts_the_queries_of_the_window():
    from dwi_ml.models.transformer_attention import point_attention_values
    # One layer and head, 4 points; window 2: query q sees q - 1 and q.
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                            [0.25, 0.75, 0.0, 0.0],
                            [0.0, 0.5, 0.5, 0.0],
                            [0.0, 0.0, 0.9, 0.1]], dtype=torch.float64)
    maps = {"encoder": weights[None, None, None]}
    values = point_attention_values(maps, [4], [5], window=2)
    # Point k is seen by queries k and k + 1 (the last one by itself).
    np.testing.assert_allclose(values["attention_received"][0].ravel(),
                               [1.25 / 2, 1.25 / 2, 1.4 / 2, 0.1, 0.0])
    np.testing.assert_array_equal(values["most_attended_from"][0].ravel(),
                                  [0, 1, 3, 3, 4])
    # Without the window, point 0 would count 4 viewers.
    unbounded = point_attention_values(maps, [4], [5])
    assert unbounded["attention_received"][0][0, 0] == np.float32(1.25 / 4)


@pytest.mark.parametrize("count", [5, 14, 40])
def test_heatmap_axes_tick_whole_positions(count):
    # Short streamlines had ticks at 2.5, 7.5, ... positions.
    from dwi_ml.monitoring.attention_views import SubjectAttention, draw_heatmap
    weights = torch.eye(count, dtype=torch.float64)[None, None, None]
    attention = SubjectAttention(
        streamline_ids=np.array([3]), streamlines=None,
        maps={"encoder": weights}, counts=np.array([count]),
        affine=np.eye(4), dimensions=(4, 4, 4))
    figure = draw_heatmap(attention, "encoder", 0, 0)
    ax = figure.axes[0]
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        assert len(ticks) >= 2
        np.testing.assert_array_equal(ticks, np.round(ticks))
    assert ax.get_xlabel() == "key position (point attended to)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_of_a_model_on_cuda_equal_the_cpu_ones(experiments, tmp_path):
    # The maps come back to the CPU for the figures and the tractogram.
    experiment = str(experiments["folder"] / "original")
    views = {}
    for device in ("cpu", "cuda"):
        out_dir = tmp_path / device
        attention_main([experiment, experiments["hdf5"], "subj-03",
                        str(out_dir), "--streamline_ids", *IDS,
                        "--device", device])
        views[device] = _read(out_dir)
    assert views["cuda"][0] == views["cpu"][0]
    cpu_sft, cuda_sft = views["cpu"][1], views["cuda"][1]
    np.testing.assert_array_equal(cuda_sft.streamlines._lengths,
                                  cpu_sft.streamlines._lengths)
    # The scores (< 10) come through the embedding (fan-in < 64) and two
    # layers (fan-in < 16, a few products each): fewer than 256 float32
    # roundings on each device; the softmax is 1-Lipschitz.
    np.testing.assert_allclose(
        cuda_sft.data_per_point["attention_received"].get_data(),
        cpu_sft.data_per_point["attention_received"].get_data(), rtol=0,
        atol=2 * rounding_atol(10, 256))


SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                      "scripts_python", "dwiml_visualize_attention.py")


def test_a_stopped_overwrite_keeps_the_previous_views(experiments, tmp_path):
    """SIGTERM while -f writes the new views: the previous folder stays
    whole (it was emptied first, then written file by file)."""
    original = str(experiments["folder"] / "original")
    out_dir = tmp_path / "views"
    first = [original, experiments["hdf5"], "subj-03", str(out_dir),
             "--streamline_ids", "1"]
    attention_main(first)
    before = snapshot(out_dir)
    temporaries = str(tmp_path / ".views.*.tmp")
    for _ in range(5):
        process = subprocess.Popen(
            [sys.executable, SCRIPT, *first[:4], "--streamline_ids", "2",
             "4", "5", "-f"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        while process.poll() is None and not glob.glob(temporaries):
            time.sleep(0.0005)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
        if process.returncode != 0:
            break
        attention_main([*first, "-f"])  # it finished first: again
        before = snapshot(out_dir)
    assert process.returncode == EXIT_STATUS_SIGTERM, stderr[-3000:]
    assert snapshot(out_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["views"]


def test_f_refuses_a_figure_saved_under_a_heatmap_s_name(experiments,
                                                         tmp_path, capsys):
    """A user's figure saved over one of the views: -f replaced it."""
    original = str(experiments["folder"] / "original")
    out_dir = tmp_path / "views"
    attention_main([original, experiments["hdf5"], "subj-03", str(out_dir),
                    "--streamline_ids", "1"])
    (out_dir / "encoder_layer0_head0.png").write_bytes(b"my figure")
    # assert_user_error also checks that no file changed.
    assert_user_error(attention_main, [original, experiments["hdf5"],
                                       "subj-03", out_dir, "-f"],
                      capsys, tmp_path, "'encoder_layer0_head0.png' changed "
                      "since dwi_ml wrote it")


def test_views_through_a_link_keep_the_link_and_the_folder_s_mode(
        experiments, tmp_path):
    """'lnk/' (a link to a user's empty, private folder): the trailing
    slash hid the link, which was renamed then removed as a folder (a
    traceback); the folder's mode became the umask's."""
    real = tmp_path / "private"
    real.mkdir()
    real.chmod(0o700)
    os.symlink(real, tmp_path / "lnk")
    attention_main([str(experiments["folder"] / "original"),
                    experiments["hdf5"], "subj-03", str(tmp_path / "lnk") + "/",
                    "--streamline_ids", "1"])
    assert os.path.islink(tmp_path / "lnk")
    assert sorted(os.listdir(tmp_path)) == ["lnk", "private"]
    assert TRACTOGRAM_NAME in os.listdir(real)
    assert real.stat().st_mode & 0o777 == 0o700
