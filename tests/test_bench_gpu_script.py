"""bench/bench_gpu.sh --cpu: the GPU bench's steps run on the CPU, so that
the script cannot rot on machines without a GPU (issue 17).

Its figures are not checked (speed is measured in bench/, never in tests);
its tables are: every case it promises prints a row of sane values.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_gpu.sh")


def _training_rows(output):
    """(header, rows) of each training table: rows as lists of floats."""
    tables = []
    for block in output.split("== training")[1:]:
        lines = block.split("==")[0].splitlines()
        header = next(line for line in lines if line.startswith("workers"))
        rows = [[float(cell.rstrip("%")) for cell in line.split()]
                for line in lines if re.match(r"\s+\d+\s", line)]
        tables.append((lines[0].strip(), header.split(), rows))
    return tables


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_gpu")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    result = subprocess.run(["bash", SCRIPT, "--cpu", str(folder)],
                            capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_training_case_prints_a_row_of_sane_values(bench_output):
    tables = _training_rows(bench_output)
    # fp32 with interpolation in the main process (0 and 1 workers), then
    # with interpolation in the workers (1 worker).
    assert [title for title, _, _ in tables] == [
        ", fp32", ", fp32, interpolation in the workers (CPU)"]
    assert [[row[0] for row in rows] for _, _, rows in tables] == [
        [0, 1], [1]]
    for _, header, rows in tables:
        assert header[:4] == ["workers", "streamlines/s", "points/s",
                              "epoch"]
        for row in rows:
            workers, streamlines_s, points_s, epoch_s, wait = row[:5]
            assert streamlines_s > 0 and epoch_s > 0
            # Every streamline has more than one point.
            assert points_s > streamlines_s
            assert 0 <= wait <= 100
            # No GPU: its peak memory is reported as 0.
            assert row[6] == 0


def test_tracking_at_the_bench_batch_tracks_every_seed(bench_output):
    tracking = bench_output.split("== tracking, batch 100")[1]
    row = re.search(r"batch\s+100:\s+(\d+) streamlines,\s+([\d.]+) points "
                    r"each \|\s+([\d.]+) streamlines/s", tracking)
    assert row is not None, tracking
    assert int(row.group(1)) == 100
    assert float(row.group(2)) > 1 and float(row.group(3)) > 0
    assert re.search(r"== bench_gpu.sh done in \d+ s", bench_output)
