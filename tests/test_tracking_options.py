"""The reference's tracking options: --max_invalid_nb_points,
--mask_interp, --discard_last_point, --eos_stop max and --compress_th.

Stops are exact with the constant models of test_tracking: +x, one voxel
(2 mm) per step from x = 3.25, in a mask of voxels x in [2, 10).
"""
import math
import os

import numpy as np
import pytest
import torch
from dipy.io.streamline import load_tractogram
from test_tracking import SEED, SHAPE, box_mask, constant_model, make_tracker
from training_data import make_training_hdf5

from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.cli.dwiml_train_model import main as train_main
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import Learn2TrackModel
from dwi_ml.tracking.stopping import StopReason, TrackingMask


def gap_mask():
    """box_mask plus voxels x in [12, 14): a gap of voxels 10 and 11."""
    mask = box_mask()
    mask[12:14] = box_mask()[2:4]
    return mask


def forward_points(tracker):
    result = tracker.track(SEED)
    return result.streamlines[0][:, 0], result.forward_stops[0]


@pytest.mark.parametrize("max_invalid, append, expected_end, stop", [
    # Trilinear values at x = 10.25 and 11.25 are 0.25 and 0: two points
    # out; 12.25 is back in (0.75), 14.25 out of the volume.
    (0, False, 9.25, StopReason.MASK),
    (0, True, 10.25, StopReason.MASK),
    (1, False, 10.25, StopReason.MASK),
    (1, True, 11.25, StopReason.MASK),
    (2, False, 13.25, StopReason.MASK),
    (5, True, 13.25, StopReason.MASK),   # the volume's border: no point
])
def test_max_invalid_nb_points_and_last_point(max_invalid, append,
                                              expected_end, stop):
    tracker = make_tracker(constant_model(), gap_mask(),
                           track_forward_only=True,
                           max_invalid_nb_points=max_invalid,
                           append_last_point=append)
    xs, reason = forward_points(tracker)
    # Steps of exactly 1 voxel: every sum is exact in float32.
    np.testing.assert_array_equal(xs, np.arange(3.25, expected_end + 0.5))
    assert reason == stop


def test_max_invalid_points_are_counted_in_total():
    mask = gap_mask()
    mask[6] = 0          # a second 1-voxel gap: 6.25 is out (value 0.25)
    tracker = make_tracker(constant_model(), mask, track_forward_only=True,
                           max_invalid_nb_points=2)
    xs, _ = forward_points(tracker)
    # Out at 6.25 (1), then 10.25 (2), then 11.25 (3 > 2): stop. The
    # count is a total, not a run of consecutive points.
    np.testing.assert_array_equal(xs, np.arange(3.25, 10.5))


def test_mask_interp_nearest_vs_trilinear_at_a_boundary():
    # Voxel 10 holds 0.4: nearest reads 0.4 at x = 10.25 (out), trilinear
    # 0.25 * 1 + 0.75 * 0.4 = 0.55 (in); 11.25 is out for both (0.1 / 0).
    mask = box_mask()
    mask[10, 2:8, 2:6] = 0.4
    ends = {}
    for interp in ("nearest", "trilinear"):
        tracker = make_tracker(constant_model(), None,
                               track_forward_only=True)
        tracker.tracking_mask = TrackingMask(SHAPE, mask, interp=interp)
        ends[interp] = forward_points(tracker)[0][-1]
    assert ends == {"nearest": 9.25, "trilinear": 10.25}
    corner = torch.tensor([[9.9, 7.9, 5.9]])    # in voxel (9, 7, 5)
    assert TrackingMask(SHAPE, box_mask(), interp="nearest").contains(corner)
    assert not TrackingMask(SHAPE, box_mask()).contains(corner)  # 0.6 ** 3
    with pytest.raises(DwiMLUserError, match="mask_interp"):
        TrackingMask(SHAPE, box_mask(), interp="cubic")


def test_eos_stop_max_for_a_getter_without_classes():
    # EOS against one "continue" class: stops where p > 0.5.
    for probability, stops in ((0.45, False), (0.55, True)):
        tracker = make_tracker(constant_model(eos_probability=probability),
                               box_mask(), eos_threshold="max",
                               track_forward_only=True)
        _, reason = forward_points(tracker)
        assert (reason == StopReason.EOS) == stops


def sphere_model(eos_logit, class_logits):
    torch.manual_seed(0)
    model = Learn2TrackModel("sphere", nb_features=4, step_size=2.0,
                             rnn_layer_sizes=[8],
                             dg_key="sphere-classification",
                             dg_args={"add_eos": True,
                                      "sphere": "repulsion100"})
    last = model.direction_getter.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([*class_logits, eos_logit]))
    return model


def test_eos_stop_max_against_the_direction_classes():
    # p = sigmoid(-1) = 0.27. Uniform classes (q = 1 / 100): EOS wins
    # though p is below 0.5. One class of logit 10 (q = 0.9955): it wins.
    uniform = sphere_model(-1.0, [0.0] * 100)
    peaked = sphere_model(-1.0, [10.0] + [0.0] * 99)
    outputs = torch.stack([uniform.direction_getter.layers[-1].bias,
                           peaked.direction_getter.layers[-1].bias])
    assert uniform.eos_is_most_likely(outputs).tolist() == [True, False]
    # The rule is p > (1 - p) * max q, i.e. logit > log max q.
    q_peaked = math.exp(10) / (math.exp(10) + 99)
    for eos_logit in (math.log(q_peaked) - 1e-3, math.log(q_peaked) + 1e-3):
        row = torch.tensor([[10.0] + [0.0] * 99 + [eos_logit]],
                           dtype=torch.float64)
        p = 1 / (1 + math.exp(-eos_logit))
        assert peaked.eos_is_most_likely(row).item() == (
            p > (1 - p) * q_peaked)
    stopped = make_tracker(uniform, box_mask(), eos_threshold="max")
    assert stopped.track(SEED).forward_stops[0] == StopReason.EOS
    going = make_tracker(peaked, box_mask(), eos_threshold="max",
                         track_forward_only=True)
    assert going.track(SEED).forward_stops[0] != StopReason.EOS


# ----------------------------------------------------------------------
# The script
@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("track_options")
    hdf5_file = make_training_hdf5(str(folder))
    (folder / "experiments").mkdir()
    train_main([str(folder / "experiments"), "exp", hdf5_file, "input", "streamlines",
                "--max_epochs", "2", "--nb_previous_dirs", "1",
                "--rnn_layer_sizes", "16", "--reverse_ratio", "0.5",
                "--step_size", "1.0", "--add_eos", "--seed", "0",
                "-v", "WARNING"])
    return {"experiment": str(folder / "experiments" / "exp"),
            "hdf5": hdf5_file,
            "folder": folder}


def track(experiment, name, *options):
    out = experiment["folder"] / f"{name}.trk"
    track_main([experiment["experiment"], experiment["hdf5"], "subj-02",
                "input", str(out), "--tracking_mask_group", "wm_mask",
                "--nt", "40", "--min_length", "0", "--seed", "3", "-f",
                "-v", "WARNING", *options])
    return load_tractogram(str(out), "same", bbox_valid_check=True)


def distances_to_polyline(points, polyline):
    """Distance of each point (P, 3) to the polyline (K, 3), same units."""
    starts, ends = polyline[:-1], polyline[1:]
    segments = ends - starts
    ratio = np.einsum("pkj,kj->pk", points[:, None] - starts[None],
                      segments) / np.sum(segments ** 2, axis=1)
    closest = starts[None] + np.clip(ratio, 0, 1)[..., None] * segments[None]
    return np.min(np.linalg.norm(points[:, None] - closest, axis=2), axis=1)


def test_compress_th_keeps_points_within_the_threshold(experiment):
    plain = track(experiment, "plain", "--eos_stop", "0.99")
    compressed = track(experiment, "compressed", "--eos_stop", "0.99",
                       "--compress_th", "0.5")
    assert len(plain) == len(compressed) > 10
    assert (compressed.streamlines._data.shape[0]
            < plain.streamlines._data.shape[0])
    for original, short in zip(plain.streamlines, compressed.streamlines):
        assert len(short) <= len(original)
        np.testing.assert_array_equal(short[[0, -1]], original[[0, -1]])
        # RAS mm on both sides; float32 storage adds its rounding.
        assert np.max(distances_to_polyline(original, short)) <= 0.5 + 1e-4


def test_discard_last_point_removes_the_point_out_of_the_mask(experiment):
    options = ("--track_forward_only", "--eos_stop", "0.99")
    kept = track(experiment, "kept", *options, "--no-discard_last_point")
    discarded = track(experiment, "discarded", *options)
    assert len(discarded) == len(track(experiment, "default", *options,
                                       "--discard_last_point"))
    # Same seeds; a seed whose first step left the mask has one point
    # with --discard_last_point, and single points are not saved.
    by_seed = {tuple(seed): streamline for seed, streamline in zip(
        kept.data_per_streamline["seeds"], kept.streamlines)}
    assert len(kept) >= len(discarded) > 10
    extra = []
    for seed, b in zip(discarded.data_per_streamline["seeds"],
                       discarded.streamlines):
        a = by_seed[tuple(seed)]
        extra.append(len(a) - len(b))
        np.testing.assert_array_equal(a[:len(b)], b)
    # One point more where the mask stopped the streamline inside the
    # volume, none elsewhere (EOS, angle, the volume's border).
    assert set(extra) == {0, 1}


def test_eos_stop_max_and_bad_values_from_the_script(experiment, capsys):
    assert len(track(experiment, "max", "--eos_stop", "max")) > 0
    for options, match in ((("--eos_stop", "most"), "'max'"),
                           (("--max_invalid_nb_points", "-1"),
                            "--max_invalid_nb_points"),
                           (("--compress_th", "0"), "--compress_th"),
                           # Named --max_length ('at least one step of inf
                           # mm'): the step is the wrong one.
                           (("--step_size", "inf"), "argument --step_size: "
                            "expected a finite number > 0 mm, found inf."),
                           (("--max_length", "inf"), "--max_length"),
                           # 'prob' draws read it modulo 2 ** 64.
                           (("--seed", str(2 ** 64)), "argument '--seed': "
                            "expected an integer < 2 ** 64, got "
                            f"{2 ** 64}."),
                           (("--mask_interp", "cubic"), "--mask_interp")):
        with pytest.raises(SystemExit) as exit_info:
            track(experiment, "bad", *options)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err


def test_mask_options_without_a_tracking_mask_and_a_step_too_small(
        experiment, capsys):
    """Both gave no clear line: the mask options were ignored without a
    word, and a 1e-9 mm step asked torch for 18 TB (its allocator's
    RuntimeError, a traceback)."""
    out = str(experiment["folder"] / "refused.trk")
    base = [experiment["experiment"], experiment["hdf5"], "subj-02", "input",
            out, "--nt", "5", "-v", "WARNING"]
    cases = [
        (["--seeding_mask_group", "wm_mask", "--mask_interp", "nearest",
          "--max_invalid_nb_points", "2", "--no-discard_last_point"], 2,
         "arguments --mask_interp, --max_invalid_nb_points, "
         "--[no-]discard_last_point: expected "
         "--tracking_mask_group, which they apply to, found none (without "
         "it, tracking stops only at the volume's border)."),
        # Petabytes: more than any address space, whatever the kernel's
        # overcommit.
        (["--tracking_mask_group", "wm_mask", "--step_size", "1e-12"], 1,
         "error: out of memory ("),
    ]
    for options, status, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            track_main([*base, *options])
        assert exit_info.value.code == status
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert "Traceback" not in err
    assert not os.path.exists(out)


def test_a_0_255_tracking_mask_is_warned_of(experiment, tmp_path, capsys):
    """Read by the trilinear rule (>= 0.5), such a mask reached about a
    voxel past its border, with no word."""
    import shutil

    import h5py
    hdf5_file = str(tmp_path / "m255.hdf5")
    shutil.copy(experiment["hdf5"], hdf5_file)
    with h5py.File(hdf5_file, "r+") as hdf:
        source = hdf["subj-02/wm_mask"]
        group = hdf["subj-02"].create_group("m255")
        group.create_dataset("data", data=source["data"][()] * 255)
        # As a reference-made file: no CRC-32 of the data to check.
        for key, value in source.attrs.items():
            if key != "data_crc32":
                group.attrs[key] = value
    out = str(tmp_path / "t.trk")
    base = [experiment["experiment"], hdf5_file, "subj-02", "input", out,
            "--tracking_mask_group", "m255", "--nt", "5", "-f"]
    for options, warned in (((), True), (("--mask_interp", "nearest"), False)):
        capsys.readouterr()
        track_main([*base, *options])
        err = capsys.readouterr().err
        assert err.count("tracking mask 'm255' holds values up to 255: the "
                         "trilinear rule") == int(warned), err
    # After every check: a refused run prints its one error line alone.
    with pytest.raises(SystemExit):
        track_main([*base, "--min_length", "0", "--max_length", "0.1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "error: argument --max_length: expected at least one step of 1.0 "
        "mm, found 0.1 mm."), lines


def test_logged_stop_reason_when_several_criteria_apply():
    """docs/tracking.md: a point out of the mask (inside the volume) is
    logged 'mask' before EOS; EOS before a point out of the volume."""
    model = constant_model(eos_probability=0.7)
    seeds = np.array([[9.25, 5.5, 4.5],     # next 10.25: out of the mask
                      [13.25, 5.5, 4.5],    # next 14.25: out of the volume
                      [5.25, 5.5, 4.5]],    # next 6.25: in the mask
                     dtype=np.float32)
    mask = box_mask()
    mask[12:14] = box_mask()[2:4]           # so that x = 13.25 is in it
    result = make_tracker(model, mask, eos_threshold=0.5,
                          track_forward_only=True).track(seeds)
    np.testing.assert_array_equal(
        result.forward_stops,
        [StopReason.MASK, StopReason.EOS, StopReason.EOS])
    np.testing.assert_array_equal(result.streamlines._lengths, [1, 1, 1])
    # --no-discard_last_point keeps the point out of the mask only if it
    # passed the other tests: here EOS ends every streamline at its seed
    # (the first seed's point out of the mask was kept, and turns sharper
    # than --theta were kept the same way).
    result = make_tracker(model, mask, eos_threshold=0.5,
                          track_forward_only=True,
                          append_last_point=True).track(seeds)
    np.testing.assert_array_equal(result.streamlines._lengths, [1, 1, 1])
    result = make_tracker(constant_model(), mask, track_forward_only=True,
                          append_last_point=True).track(seeds[:1])
    np.testing.assert_array_equal(result.streamlines._lengths, [2])


def test_no_streamline_kept_is_a_warning_naming_why(experiment, capsys):
    # Every streamline shorter than --min_length: the .trk was written
    # empty, exit 0, without a word unless -v.
    capsys.readouterr()
    assert len(track(experiment, "none_kept", "--min_length", "250")) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("WARNING: no streamline kept:")
    assert "none_kept.trk" in warnings[0]
    assert "0 of 40" in warnings[0] and "250 to 300 mm" in warnings[0]
    assert "stops of the halves" in warnings[0]
