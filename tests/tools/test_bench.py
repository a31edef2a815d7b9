"""``python -m dcn_onnxscript bench`` (dcn_onnxscript.tools.bench), smoke-run on the tiny layer with every
export path that needs nothing outside this repository, and its parts. A benchmark prints figures: no
timing is asserted, only that every model runs, agrees with eager and lands in the tables, the JSON and the
chart, and that each file holds what its path says."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from dcn_onnxscript.__main__ import main
from dcn_onnxscript.tools.bench import catalog, measuring

COLUMNS = ["case", "model", "nodes/layer", "nodes", "export s", "session s", "median ms", "x native", "peak MB",
           "x native", "max abs err vs eager"]
#: Left out of the smoke run: the peers (a pip package and a checkout) and the other runtimes.
SKIPPED = [catalog.DCOE, catalog.FORK, *catalog.RUNTIMES]
PATHS = [name for name in catalog.PATHS if name not in SKIPPED]
MODELS = [*PATHS, catalog.EAGER, *catalog.FLOORS]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(stdout: str) -> list[list[list[str]]]:
    """Every markdown table of ``stdout``, as rows of cells (header first, the rule left out)."""
    found, current = [], []
    for line in stdout.splitlines() + [""]:
        if line.startswith("|"):
            current.append(cells(line))
        elif current:
            found.append([row for row in current if not set(row[0]) <= {"-", ":"}])
            current = []
    return found


def test_bench_prints_a_row_per_export_path_and_writes_the_json_and_the_chart(tmp_path) -> None:
    chart, dump, temp = tmp_path / "bench.png", tmp_path / "bench.json", tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DCN_BENCH_FORK", "DCN_BENCH_BIREFNET")}
    result = subprocess.run(
        [sys.executable, "-m", "dcn_onnxscript", "bench", "--layers", "tiny", catalog.BIREFNET, "--repeat", "1",
         "--threads", "1", "--skip", *SKIPPED, "--plot", str(chart), "--json", str(dump)],
        capture_output=True, text=True, timeout=400, env={**env, "TMPDIR": str(temp)},
    )
    assert result.returncode == 0, result.stderr
    rows_table, paths_table, *_ = tables(result.stdout)
    assert rows_table[0] == COLUMNS
    rows = {row[1]: row for row in rows_table[1:] if row[0] == "tiny"}
    assert list(rows) == MODELS
    numbers = {model: [float(cell) if cell != "-" else None for cell in row[2:]] for model, row in rows.items()}
    for model, (per_layer, nodes, export_s, session_s, ms, x_ms, mb, x_mb, error) in numbers.items():
        assert math.isfinite(ms) and ms > 0 and math.isfinite(x_ms)
        if model in PATHS:
            assert per_layer == nodes and nodes >= 1 and export_s > 0 and session_s > 0
        if "floor" not in model:
            assert math.isfinite(mb) and mb > 0 and math.isfinite(x_mb)
            assert error < 1e-4
    assert numbers[catalog.NATIVE][1] == 1 and numbers[catalog.NATIVE][5] == 1.0 and numbers[catalog.NATIVE][7] == 1.0
    assert numbers[catalog.FUNCTION][1] > 1  # the function's body, counted per call
    (birefnet,) = [row for row in rows_table[1:] if row[0] == catalog.BIREFNET]
    assert birefnet[2].startswith("skipped: no BiRefNet checkout")
    # the files hold what their paths say: opset, DeformConv only where native
    assert paths_table[0] == ["model", "export", "samples with", "opset"]
    held = {row[0]: row for row in paths_table[1:]}
    assert list(held) == PATHS
    for name, (_, about, sampling, opset) in held.items():
        path = catalog.PATHS[name]
        assert about == path.about
        assert int(opset) == path.opset if path.opset else int(opset) >= 16
        assert ("DeformConv" in sampling) == (name == catalog.NATIVE)
    assert "GridSample" in held["grid_sample"][2] and "GridSample" not in held["gather"][2]
    assert "GFLOP/s" in result.stdout and "sampling every tap with one GridSample" in result.stdout
    assert "tiny: exporting" in result.stderr and "latency" in result.stderr  # progress
    assert chart.stat().st_size > 0
    document = json.loads(dump.read_text())
    assert [r["model"] for r in document["results"] if r["case"] == "tiny"] == MODELS
    assert [p["model"] for p in document["paths"]] == PATHS and document["runtimes"] == []
    # the models' temporary directory is gone (torch keeps its compile cache torchinductor_<user> there on purpose)
    assert [p.name for p in temp.iterdir() if p.is_dir() and not p.name.startswith("torchinductor_")] == []


def test_bench_of_the_cores_compares_the_lowerings_with_the_plain_export_and_eager_on_onnxruntime_and_openvino(
        tmp_path) -> None:
    """DCNv3: both lowerings, the plain export of the pure-PyTorch core and eager, ratios to the plain export;
    DCNv4: both lowerings and eager; every model agrees with eager on onnxruntime and on OpenVINO."""
    dump = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "dcn_onnxscript", "bench", "--layers", "dcnv3-tiny", "dcnv4-tiny", "--repeat", "1",
         "--threads", "1", "--json", str(dump)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    cores_table, paths_table, *rest = tables(result.stdout)
    assert cores_table[0] == [column.replace("native", catalog.PLAIN) for column in COLUMNS]
    rows = {(row[0], row[1]): row for row in cores_table[1:]}
    lowerings = sorted(catalog.CORE_PATHS.keys() - {catalog.PLAIN})
    assert list(rows) == ([("dcnv3-tiny", name) for name in [*lowerings, catalog.PLAIN, catalog.EAGER]]
                          + [("dcnv4-tiny", name) for name in [*lowerings, catalog.EAGER]])
    for (case, model), row in rows.items():
        per_layer, nodes, export_s, session_s, ms, x_ms, mb, x_mb, error = row[2:]
        assert float(ms) > 0 and float(mb) > 0 and float(error) < 1e-4
        if model != catalog.EAGER:
            assert int(nodes) > 1 and float(export_s) > 0 and float(session_s) > 0
        assert (x_ms == "-") == (case == "dcnv4-tiny")
    assert rows[("dcnv3-tiny", catalog.PLAIN)][7] == "1.00"
    held = {row[0]: row for row in paths_table[1:]}
    assert held[catalog.PLAIN][2:] == ["GridSample", str(catalog.PLAIN_OPSET)]
    assert held["grid_sample"][2] == "GridSample" and held["gather"][2] == "Gather"
    document = json.loads(dump.read_text())
    openvino = [r for r in document["runtimes"] if r["runtime"] == catalog.OPENVINO]
    if importlib.util.find_spec("openvino") is None:
        assert all(r["note"] == "openvino not installed" for r in openvino)
        return
    (runtime_table,) = rest
    assert len(runtime_table) - 1 == len(openvino) == len(rows) - 2  # every ONNX row, no eager
    assert all(r["max_error"] < 1e-4 and r["latency_ms"] > 0 for r in openvino)
def test_from_seed_one_at_a_time_prints_each_peer_file_before_and_after_rewrite(tmp_path) -> None:
    """``bench --from-seed --one-at-a-time --spinning``: the peers' files (the fork's where DCN_BENCH_FORK names
    a checkout), each followed by its rewrites, each measured in a process of its own (eager too; onnxruntime's
    threads spinning), run and agree with the file they came from; the native rewrite is one DeformConv at opset
    19, the default one keeps the file's opset and samples without GatherND."""
    fork = bool(os.environ.get("DCN_BENCH_FORK"))
    result = subprocess.run(
        [sys.executable, "-m", "dcn_onnxscript", "bench", "--from-seed", "--one-at-a-time", "--spinning", "--layers",
         "tiny", "--repeat", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "onnxruntime's threads spin" in result.stdout
    rows_table, repair_table, paths_table, *_ = tables(result.stdout)
    peers = [catalog.PATHS[catalog.DCOE], catalog.PATHS[catalog.FORK]]
    rewrites = {peer.name: [path.name for path in catalog.rewrites_of(peer)] for peer in peers}
    expected = [name for peer in peers for name in (peer.name, *rewrites[peer.name])] + [catalog.NATIVE]
    assert [row[1] for row in rows_table[1:] if row[0] == "tiny"][:len(expected)] == expected
    ran = [name for name in [*expected, catalog.EAGER] if not name.startswith(catalog.FORK) or fork]
    assert [line.split("tiny: ")[1].split(": session")[0] for line in result.stderr.splitlines()
            if "in a process of its own" in line] == ran
    eager = next(row for row in rows_table[1:] if row[1] == catalog.EAGER)
    assert float(eager[6]) > 0 and float(eager[8]) > 0 and float(eager[10]) == 0.0
    assert repair_table[0] == ["case", "model", "from", "nodes", "rewrite s", "session s", "median ms", "x before",
                               "peak MB", "x before", "rel. err vs before"]
    repaired = {row[1]: row for row in repair_table[1:]}
    assert list(repaired) == expected[:-1]
    held = {row[0]: row for row in paths_table[1:]}
    for peer in peers:
        if peer.name == catalog.FORK and not fork:
            assert repaired[peer.name][3].startswith("skipped: no checkout of the fork")
            assert all(repaired[name][3] == f"skipped: no {peer.name} file" for name in rewrites[peer.name])
            continue
        assert float(repaired[peer.name][7]) == 1.0 and "GatherND" in held[peer.name][2]
        for name, (suffix, impl, opset, _) in zip(rewrites[peer.name], catalog.REWRITES):
            _, _, source, nodes, rewrite_s, session_s, ms, x_ms, mb, x_mb, error = repaired[name]
            assert source == peer.name and float(rewrite_s) > 0 and float(session_s) > 0 and float(ms) > 0
            assert math.isfinite(float(x_ms)) and float(mb) > 0 and math.isfinite(float(x_mb))
            assert float(error) <= 1e-4
            assert "GatherND" not in held[name][2]
            assert int(held[name][3]) == (opset or int(held[peer.name][3]))
            assert (int(nodes) == 1) == (impl == catalog.NATIVE) == (held[name][2] == "DeformConv")


def test_birefnet_from_seed_rows_are_its_tutorial_file_and_its_rewrites() -> None:
    """``bench --from-seed --layers birefnet``: the file BiRefNet's tutorial writes (deform_conv2d_onnx_exporter
    with its patch, TorchScript, opset 17), then that file after each rewrite, and nothing else."""
    tutorial = catalog.BIREFNET_PATHS[catalog.DCOE_PATCHED]
    assert (tutorial.exporter, tutorial.opset) == (catalog.DCOE_PATCHED, 17)
    rows = catalog.paths_of(catalog.BIREFNET, from_seed=True)
    assert list(rows.values()) == [tutorial, *catalog.rewrites_of(tutorial)]
    assert {path.source for path in list(rows.values())[1:]} == {tutorial.name}
    assert [(path.impl, path.opset) for path in list(rows.values())[1:]] == [(None, None), (catalog.NATIVE, 19)]


def test_the_repair_table_gives_ratios_to_the_file_each_row_was_rewritten_from() -> None:
    from dcn_onnxscript.tools.bench import reporting

    before = reporting.Result("L1", "seed", nodes=67, session_s=0.02, latency_ms=100.0, peak_mb=110.0)
    after = reporting.Result("L1", "seed rewritten", nodes=45, export_s=0.5, session_s=0.01, latency_ms=20.0,
                             peak_mb=22.0, source="seed", source_error=3e-6)
    failed = reporting.Result("L1", "other rewritten", note="nothing rewritten", source="other")
    unrelated = reporting.Result("L1", catalog.NATIVE, nodes=1, latency_ms=15.0)
    results = [before, after, failed, unrelated, reporting.Result("L1", "other", note="failed")]
    _, _, *lines = reporting.format_repairs(results).splitlines()
    rows = [cells(line) for line in lines]
    assert [row[1] for row in rows] == ["seed", "seed rewritten", "other rewritten", "other"]
    assert rows[0][2:] == ["-", "67", "-", "0.020", "100.00", "1.00", "110.0", "1.00", "-"]
    assert rows[1][2:] == ["seed", "45", "0.50", "0.010", "20.00", "0.20", "22.0", "0.20", "3.0e-06"]
    assert rows[2][2:4] == ["other", "nothing rewritten"]


def test_a_missing_exporter_is_reported_in_its_row(monkeypatch, tmp_path) -> None:
    from dcn_onnxscript.tools.bench import cases, exports, reporting

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == catalog.DCOE else find_spec(name, *args))
    case = cases.Case("tiny", module=None, inputs=())
    path = catalog.PATHS[catalog.DCOE]
    assert not exports._try(case, catalog.DCOE, lambda: exports.export(path, case, tmp_path / "unused.onnx", None))
    assert case.failures == {catalog.DCOE: "not installed"}
    note = reporting.format_table([reporting.Result("tiny", catalog.DCOE, note="not installed")]).splitlines()[-1]
    assert cells(note)[:3] == ["tiny", catalog.DCOE, "not installed"] and len(cells(note)) == len(COLUMNS)


def test_the_optional_checkouts_are_skipped_with_the_option_that_names_them(tmp_path) -> None:
    from dcn_onnxscript.tools.bench import birefnet, peers

    with pytest.raises(catalog.Unavailable, match="--fork PATH"):
        peers.load_fork(None)
    with pytest.raises(catalog.Unavailable, match="no src/deform_conv2d_onnx_exporter"):
        peers.load_fork(tmp_path)
    with pytest.raises(catalog.Unavailable, match="--birefnet PATH"):
        birefnet.build(None, seed=0)
    with pytest.raises(catalog.Unavailable, match="not a BiRefNet checkout"):
        birefnet.build(tmp_path, seed=0)


def deform_conv_model(bias: bool, mask: bool, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A native ``DeformConv`` (opset 19; 3x3, stride 2, padding 1, dilation 1, 2 offset groups) with its
    weights as initializers, and random feeds."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float32)
    offset = (2 * rng.standard_normal((2, 2 * 2 * 9, 5, 4))).astype(np.float32)
    feeds = {"x": x, "offset": offset, **({"mask": rng.uniform(0, 1, (2, 2 * 9, 5, 4)).astype(np.float32)} if mask
                                          else {})}
    weights = [numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "w")]
    if bias:
        weights.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"))
    node = helper.make_node("DeformConv", ["x", "w", "offset", "b" if bias else "", *(["mask"] if mask else [])],
                            ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], offset_group=2)
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape) for name, value in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 5, 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), feeds


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask", [True, False])
def test_the_function_row_computes_what_native_deform_conv_does(bias: bool, mask: bool) -> None:
    """The function path's model (every DeformConv a call of the standalone function) gives native's output
    on onnxruntime, passes the full checker, and counts the function's body per call."""
    from dcn_onnxscript.tools.bench import exports

    native, feeds = deform_conv_model(bias, mask)
    expected = run(native, feeds)
    calling = exports.calling_functions(onnx.ModelProto.FromString(native.SerializeToString()))
    onnx.checker.check_model(calling, full_check=True)
    assert [node.domain for node in calling.graph.node] == ["dcn_onnxscript"]
    assert exports.count_nodes(calling) == sum(n.op_type != "Constant" for n in calling.functions[0].node) > 1
    np.testing.assert_allclose(run(calling, feeds), expected, rtol=1e-4, atol=1e-4)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_the_sampling_floor_samples_every_tap_where_the_layer_does() -> None:
    """The sampling floor's GridSample reads X at the layer's own positions: its samples, multiplied by the
    weights as im2col columns, give torchvision's DCNv1 output."""
    import torch
    from torchvision.ops import deform_conv2d

    from dcn_onnxscript.tools.bench import cases, floors

    layer = catalog.Layer(batch=2, channels=3, size=7)
    x, offset, _ = cases.layer_inputs(layer, seed=0)
    grid = floors.tap_grid(offset.numpy())
    samples = run(floors.sampling_model(), {"x": x.numpy(), "grid": grid})  # (N, C, 9·H, W)
    columns = samples.reshape(2, 3, 9, 7, 7)
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    ours = np.einsum("ock,nckhw->nohw", weight.reshape(4, 3, 9).numpy(), columns)
    expected = deform_conv2d(x, offset, weight, padding=1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_the_bench_package_has_small_modules_and_no_import_circle() -> None:
    """Every module of the package is at most 450 lines and imports only modules listed before it in a
    dependency order; the command line (``__init__``) imports only the plain data at module level."""
    import ast

    folder, package = pathlib.Path(catalog.__file__).parent, "dcn_onnxscript.tools.bench"
    order = ["catalog", "birefnet", "internimage", "cases", "floors", "peers", "exports", "measuring", "runtimes",
             "reporting", "driver"]
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(["__init__", *order])

    def imported(nodes) -> set[str]:
        return {node.module.removeprefix(package).lstrip(".") or "__init__" for node in nodes
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package)}

    for module in ["__init__", *order]:
        tree = ast.parse((folder / f"{module}.py").read_text())
        assert len((folder / f"{module}.py").read_text().splitlines()) <= 450, module
        if module == "__init__":
            assert imported(tree.body) == {"catalog"}
        else:
            assert imported(ast.walk(tree)) <= {"__init__", *order[: order.index(module)]}, module


def test_spinning_needs_one_at_a_time(capsys) -> None:
    """Spinning threads of interleaved sessions steal each other's cores: ``--spinning`` alone is refused."""
    assert main(["bench", "--spinning", "--layers", "tiny"]) == 2
    assert "--spinning needs --one-at-a-time" in capsys.readouterr().err



@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_interleaved_rounds_let_every_model_follow_every_other(count: int) -> None:
    """Every round runs every model once, and over the rounds every model runs right after every other one
    (the last of a round before the first of the next counted too) about as often: no model always follows
    the same one."""
    kinds = [f"model{i}" for i in range(count)]
    rounds = measuring.round_orders(kinds, 60 * count)
    assert all(sorted(order) == kinds for order in rounds)
    sequence = [kind for order in rounds for kind in order]
    follows = collections.Counter(zip(sequence, sequence[1:]))
    for after in kinds:
        before = {a: follows[a, after] for a in kinds if a != after}
        assert count == 1 or min(before.values()) >= 0.5 * max(before.values()) > 0
