"""``python -m dcn_onnxscript bench`` (dcn_onnxscript.tools.bench), smoke-run on the tiny layer without
deform_conv2d_onnx_exporter, the network and the other runtimes. A benchmark prints figures: no timing is
asserted, only that every model runs, agrees with eager and lands in the table, the JSON and the chart."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

from dcn_onnxscript.lowering.table import LOWERINGS

COLUMNS = ["case", "model", "nodes/layer", "nodes", "export s", "session s", "median ms", "x native", "peak MB",
           "x native", "max abs err vs eager"]
ONNX_MODELS = [*LOWERINGS, "native"]
MODELS = [*ONNX_MODELS, "eager", "gemm floor", "sampling floor"]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_bench_prints_a_row_per_model_and_writes_the_json_and_the_chart(tmp_path) -> None:
    chart, dump, temp = tmp_path / "bench.png", tmp_path / "bench.json", tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dcn_onnxscript", "bench", "--layers", "tiny", "--repeat", "1", "--threads", "1",
         "--skip", "deform_conv2d_onnx_exporter", "openvino", "tract", "--plot", str(chart), "--json", str(dump)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(temp)},
    )
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert cells(table[0]) == COLUMNS
    rows = {cells(line)[1]: cells(line) for line in table[2:]}
    assert list(rows) == MODELS and all(row[0] == "tiny" for row in rows.values())
    numbers = {model: [float(cell) if cell != "-" else None for cell in row[2:]] for model, row in rows.items()}
    for model, (per_layer, nodes, export_s, session_s, ms, x_ms, mb, x_mb, error) in numbers.items():
        assert math.isfinite(ms) and ms > 0 and math.isfinite(x_ms)
        if model in ONNX_MODELS:
            assert per_layer == nodes and nodes >= 1 and export_s > 0 and session_s > 0
        if "floor" not in model:
            assert math.isfinite(mb) and mb > 0 and math.isfinite(x_mb)
            assert error < 1e-4
    assert numbers["native"][1] == 1 and numbers["native"][5] == 1.0 and numbers["native"][7] == 1.0
    assert "GFLOP/s" in result.stdout and "sampling every tap with one GridSample" in result.stdout
    assert "tiny: exporting" in result.stderr and "latency" in result.stderr  # progress
    assert chart.stat().st_size > 0
    document = json.loads(dump.read_text())
    assert [r["model"] for r in document["results"]] == MODELS and document["runtimes"] == []
    # the models' temporary directory is gone (torch keeps its compile cache torchinductor_<user> there on purpose)
    assert [p.name for p in temp.iterdir() if p.is_dir() and not p.name.startswith("torchinductor_")] == []


def test_a_missing_exporter_is_reported_in_its_row(monkeypatch) -> None:
    from dcn_onnxscript.tools import bench

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == bench.DCOE else find_spec(name, *args))
    case = bench.Case("tiny", module=None, inputs=())
    assert not bench._try(case, bench.DCOE, lambda: bench._export_torchscript(None, (), pathlib.Path("unused")))
    assert case.failures == {bench.DCOE: "not installed"}
    row = cells(bench.format_table([bench.Result("tiny", bench.DCOE, note="not installed")]).splitlines()[-1])
    assert row[:3] == ["tiny", bench.DCOE, "not installed"] and len(row) == len(COLUMNS)


def test_the_sampling_floor_samples_every_tap_where_the_layer_does() -> None:
    """The sampling floor's GridSample reads X at the layer's own positions: its samples, multiplied by the
    weights as im2col columns, give torchvision's DCNv1 output."""
    import numpy as np
    import onnxruntime
    import torch
    from torchvision.ops import deform_conv2d

    from dcn_onnxscript.tools import bench

    layer = bench.Layer(batch=2, channels=3, size=7)
    x, offset, _ = bench.layer_inputs(layer, seed=0)
    session = onnxruntime.InferenceSession(bench.sampling_model().SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    grid = bench.tap_grid(offset.numpy())
    samples = session.run(None, {"x": x.numpy(), "grid": grid})[0]  # (N, C, 9·H, W)
    columns = samples.reshape(2, 3, 9, 7, 7)
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    ours = np.einsum("ock,nckhw->nohw", weight.reshape(4, 3, 9).numpy(), columns)
    expected = deform_conv2d(x, offset, weight, padding=1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
