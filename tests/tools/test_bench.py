"""``python -m dcn_onnxscript bench`` (dcn_onnxscript.bench), smoke-run on the tiny layer; no timing is
asserted, only that every model runs, agrees with eager and lands in the table and the chart."""

from __future__ import annotations

import subprocess
import sys

COLUMNS = ["case", "model", "median ms", "x native", "peak MB", "x native", "max abs err vs eager"]
MODELS = ["portable", "grid_sample", "native", "eager", "gemm floor"]


def test_bench_prints_a_row_per_model_and_writes_the_chart(tmp_path) -> None:
    chart = tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "dcn_onnxscript", "bench", "--layers", "tiny", "--repeat", "1", "--threads", "1",
         "--workdir", str(tmp_path), "--plot", str(chart)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == COLUMNS
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[:2] for row in rows] == [["tiny", model] for model in MODELS]
    for row in rows:
        assert float(row[2]) > 0
    native = rows[MODELS.index("native")]
    assert float(native[3]) == 1.0 and float(native[5]) == 1.0
    for row in rows[:4]:  # the four deformable models: measured memory, same output as eager
        assert float(row[4]) > 0
        assert float(row[6]) < 1e-4
    assert "floor" in result.stdout and "GFLOP/s" in result.stdout
    assert chart.stat().st_size > 0
