"""dwiml_create_hdf5_dataset.py: progress bar and the summary it prints."""
import json
import os
import re
import time

import h5py
import numpy as np
from hdf5_test_data import CONFIG, NB_STREAMLINES, write_dataset, write_subject_lists

from dwi_ml.cli.dwiml_create_hdf5_dataset import main as create_main
from tests.tolerances import EPS64, rounding_atol

SUBJECTS = ("sub-01", "sub-02", "sub-03")
SUMMARY = re.compile(
    r"Created (?P<path>\S+) in (?P<seconds>[\d.]+) s: (?P<subjects>\d+) "
    r"subjects \((?P<training>\d+) training, (?P<validation>\d+) validation, "
    r"(?P<testing>\d+) testing\), (?P<streamlines>\d+) streamlines, "
    r"(?P<points>\d+) points, (?P<mib>[\d.]+) MiB \((?P<bytes>\d+) bytes\)\.")


def test_summary_counts_subjects_streamlines_points_and_size(tmp_path, capsys):
    root = str(tmp_path / "dwi_ml_ready")
    written = write_dataset(root, SUBJECTS)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = str(tmp_path / "out.hdf5")
    subject_lists = write_subject_lists(tmp_path, SUBJECTS[:2], SUBJECTS[2:])
    start = time.perf_counter()
    create_main([root, out, str(config), *subject_lists])
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    # Under the default WARNING level, no progress bar is drawn.
    assert "Subjects" not in captured.err and "Checking" not in captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    match = SUMMARY.fullmatch(lines[0])
    assert match, lines[0]
    assert match["path"] == out
    assert (int(match["subjects"]), int(match["training"]),
            int(match["validation"]), int(match["testing"])) == (3, 2, 1, 0)
    # The config's streamline group gathers the .trk files of each subject.
    trk_names = [name for name in NB_STREAMLINES if name.endswith(".trk")]
    assert int(match["streamlines"]) == len(SUBJECTS) * sum(
        NB_STREAMLINES[name] for name in trk_names)
    assert int(match["points"]) == sum(
        len(streamline) for subject in written.values()
        for name in trk_names for streamline in subject["streamlines"][name])
    with h5py.File(out, "r") as hdf:
        assert int(match["points"]) == sum(
            int(np.sum(hdf[s]["streamlines"]["lengths"])) for s in SUBJECTS)
    assert int(match["bytes"]) == os.path.getsize(out)
    assert float(match["mib"]) == round(os.path.getsize(out) / 1024 ** 2, 2)
    # The script times a part of the call, printed to 0.1 s (rounding by up
    # to 0.05 s), read back from its decimal string (2 float64 roundings).
    upper = elapsed + 0.05
    assert 0 <= float(match["seconds"]) <= upper + rounding_atol(upper, 2,
                                                                 EPS64)


def test_summary_says_one_subject_not_one_subjects():
    from dwi_ml.cli.dwiml_create_hdf5_dataset import format_summary
    summary = {"subjects": {"training": 1, "validation": 0, "testing": 0},
               "nb_streamlines": 1, "nb_points": 2, "file_size_bytes": 2048}
    assert format_summary("a.hdf5", summary, 0.25) == (
        "Created a.hdf5 in 0.2 s: 1 subject (1 training, 0 validation, 0 "
        "testing), 1 streamline, 2 points, 0.00 MiB (2048 bytes).")
