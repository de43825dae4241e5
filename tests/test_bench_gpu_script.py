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
        header = next((line for line in lines
                       if line.startswith("workers")), None)
        if header is None:
            continue  # a case that prints why it is N/A here
        rows = [[None if cell == "N/A" else float(cell.rstrip("%"))
                 for cell in line.split()]
                for line in lines if re.match(r"\s+\d+\s", line)]
        title = re.sub(r"\s*\(\d+ s so far\)$", "", lines[0].strip())
        tables.append((title, header.split(), rows))
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
    # fp32 and bf16, with 0 and 1 workers. Interpolating in the workers is
    # what the CPU runs do already: that case says so instead of a table.
    assert [title for title, _, _ in tables] == [", fp32", ", bf16"]
    assert [[row[0] for row in rows] for _, _, rows in tables] == [
        [0, 1], [0, 1]]
    for precision in ("fp32", "bf16"):
        case = bench_output.split(
            f"== training, {precision}, interpolation in the workers")[1]
        assert case.splitlines()[1].startswith(
            "interpolation on the device vs in the workers: N/A on CPU")
    for _, header, rows in tables:
        assert " ".join(header).startswith(
            "workers streamlines/s points/s epoch (s) valid (s) data wait "
            "peak RSS MiB worker RSS MiB GPU peak MiB")
        for row in rows:
            workers, streamlines_s, points_s, epoch_s, valid_s, wait = row[:6]
            assert streamlines_s > 0 and epoch_s > 0 and valid_s > 0
            # Every streamline has more than one point.
            assert points_s > streamlines_s
            assert 0 <= wait <= 100
            # Main process RSS; a worker's only with workers; no GPU.
            assert row[6] > 0
            assert (row[7] is None) == (workers == 0)
            assert row[8] is None


def test_tracking_at_the_bench_batch_tracks_every_seed(bench_output):
    tracking = bench_output.split("== tracking, batch 100")[1]
    assert "on CPU to stay short (the GPU run uses batch 10000)" in tracking
    row = re.search(r"batch\s+100:\s+(\d+) streamlines,\s+([\d.]+) points "
                    r"each \|\s+([\d.]+) streamlines/s", tracking)
    assert row is not None, tracking
    assert int(row.group(1)) == 100
    assert float(row.group(2)) > 1 and float(row.group(3)) > 0
    assert re.search(r"== bench_gpu.sh done in \d+ s", bench_output)


def test_the_transformer_step_prints_each_variant_and_its_ratio(
        bench_output):
    step = bench_output.split("== transformer tracking step")[1]
    for variant in ("transformer_original", "transformer_src_only",
                    "transformer_src_tgt"):
        block = step.split(variant)[1]
        cached = [float(ms) for ms in re.findall(
            r"length\s+\d+: cached step\s+([\d.]+) ms", block)[:2]]
        assert len(cached) == 2 and min(cached) > 0, block
        ratio = re.search(r"cached step at 60 / at 20: ([\d.]+)", block)
        # The ratio is printed to 2 decimals (0.005) from the unrounded
        # steps; each printed step is within 0.005 ms of its own, which
        # moves their ratio by at most (0.005 + ratio * 0.005) / (c0 - 0.005).
        assert ratio is not None, block
        printed = cached[1] / cached[0]
        assert abs(float(ratio.group(1)) - printed) <= 0.005 + (
            0.005 * (1 + printed) / (cached[0] - 0.005)) + 1e-9
