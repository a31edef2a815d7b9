"""The bench's output: the markdown tables (rows, export paths, floors, other runtimes), the JSON document
and the chart."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import pathlib
from typing import Any, Optional, Sequence

from dcn_onnxscript.tools.bench.cases import Case
from dcn_onnxscript.tools.bench.catalog import DCOE, GEMM, NATIVE, SAMPLING
from dcn_onnxscript.tools.bench.measuring import Result
from dcn_onnxscript.tools.bench.runtimes import RuntimeResult

NAN = float("nan")
TABLE_COLUMNS = ("case", "model", "nodes/layer", "nodes", "export s", "session s", "median ms", "x native",
                 "peak MB", "x native", "max abs err vs eager")
PATH_COLUMNS = ("model", "export", "samples with", "opset")
REPAIR_COLUMNS = ("case", "model", "from", "nodes", "rewrite s", "session s", "median ms", "x before", "peak MB",
                  "x before", "rel. err vs before")
#: The chart's colour map (20 distinct colours: a bar per row, a dozen rows and more) and legend columns.
_COLOURS, _LEGEND_COLUMNS = "tab20", 7
#: The packages whose versions head the output.
PACKAGES = ("onnxruntime", "torch", DCOE, "openvino", "tract")


def runtime_columns(base: str) -> tuple[str, ...]:
    return ("runtime", "model", "shapes", "load s", "median ms", f"x {base}", "max abs err vs eager")


def _number(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _nodes(value: float) -> str:
    return _number(value, ".0f" if math.isfinite(value) and value == int(value) else ".1f")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(columns: Sequence[str], text_columns: int) -> list[str]:
    return [_row(columns), _row(["---"] * text_columns + ["---:"] * (len(columns) - text_columns))]


def table_columns(base: str) -> tuple[str, ...]:
    """:data:`TABLE_COLUMNS` with the ratios to row ``base``."""
    return tuple(f"x {base}" if column == "x native" else column for column in TABLE_COLUMNS)


def format_table(results: Sequence[Result], base_row: str = NATIVE) -> str:
    """The results as a markdown table, with ratios to row ``base_row`` of the same case ("-" where it has
    none)."""
    bases = {r.case: r for r in results if r.model == base_row and not r.note}
    columns = table_columns(base_row)
    lines = _header(columns, 2)
    for r in results:
        if r.note:
            lines.append(_row([r.case, r.model, r.note] + ["-"] * (len(columns) - 3)))
            continue
        base = bases.get(r.case, Result(r.case, base_row))
        lines.append(_row([
            r.case, r.model, _nodes(r.nodes_per_layer), _nodes(r.nodes), _number(r.export_s, ".2f"),
            _number(r.session_s, ".3f"), _number(r.latency_ms, ".2f"), _number(r.latency_ms / base.latency_ms, ".2f"),
            _number(r.peak_mb, ".1f"), _number(r.peak_mb / base.peak_mb, ".2f"), _number(r.max_error, ".1e"),
        ]))
    return "\n".join(lines)


def format_repairs(results: Sequence[Result]) -> str:
    """The rewritten rows and the rows they were rewritten from, as a markdown table, with ratios to and the
    difference from the file each was rewritten from."""
    sources = {(r.case, r.source) for r in results if r.source}
    before = {(r.case, r.model): r for r in results if (r.case, r.model) in sources and not r.note}
    lines = _header(REPAIR_COLUMNS, 3)
    for r in results:
        if not r.source and (r.case, r.model) not in sources:
            continue
        if r.note:
            lines.append(_row([r.case, r.model, r.source or "-", r.note] + ["-"] * (len(REPAIR_COLUMNS) - 4)))
            continue
        base = before.get((r.case, r.source or r.model), Result(r.case, r.source))
        lines.append(_row([
            r.case, r.model, r.source or "-", _nodes(r.nodes), _number(r.export_s if r.source else NAN, ".2f"),
            _number(r.session_s, ".3f"), _number(r.latency_ms, ".2f"), _number(r.latency_ms / base.latency_ms, ".2f"),
            _number(r.peak_mb, ".1f"), _number(r.peak_mb / base.peak_mb, ".2f"), _number(r.source_error, ".1e"),
        ]))
    return "\n".join(lines)


def format_paths(cases: Sequence[Case]) -> str:
    """One row per export path that wrote a file: the opset and sampling ops the file holds, and how it was
    exported (the first case that has it)."""
    lines = _header(PATH_COLUMNS, 3)
    seen = set()
    for case in cases:
        for name, path in case.paths.items():
            if name in case.opsets and name not in seen:
                seen.add(name)
                lines.append(_row([name, path.about, case.sampling_ops[name], str(case.opsets[name])]))
    return "\n".join(lines)


def format_runtime_table(results: Sequence[RuntimeResult], base: str) -> str:
    """The other runtimes' rows, with latency ratios to row ``base`` of the same case on the same runtime; rows
    of a named case (the cores) are named "case model"."""
    latency = {(r.case, r.runtime): r.latency_ms for r in results if r.model == base and not r.note}
    columns = runtime_columns(base)
    lines = _header(columns, 3)
    for r in results:
        model = f"{r.case} {r.model}" if r.case else r.model
        if r.note:
            lines.append(_row([r.runtime, model, r.note] + ["-"] * (len(columns) - 3)))
        else:
            ratio = r.latency_ms / latency.get((r.case, r.runtime), NAN)
            lines.append(_row([r.runtime, model, r.shapes, _number(r.load_s, ".2f"), _number(r.latency_ms, ".2f"),
                               _number(ratio, ".2f"), _number(r.max_error, ".1e")]))
    return "\n".join(lines)


def floor_line(case: Case, results: Sequence[Result]) -> Optional[str]:
    """The GEMM throughput and floor of a layer case, its sampling floor and both together against native
    (None for a case without floors)."""
    latency = {r.model: r.latency_ms for r in results if r.case == case.name and not r.note}
    if GEMM not in latency:
        return None
    gemm, sampling = latency[GEMM], latency.get(SAMPLING, NAN)
    return (f"{case.name}: GEMM {case.gemm_flops / 1e9:.2f} GFLOP at {case.gemm_flops / gemm / 1e6:.0f} "
            f"GFLOP/s (onnxruntime MatMul) -> floor {gemm:.2f} ms; sampling every tap with one GridSample "
            f"{sampling:.2f} ms; both {gemm + sampling:.2f} ms = "
            f"{_number((gemm + sampling) / latency.get(NATIVE, NAN), '.2f')} x native")


def versions() -> dict[str, str]:
    """Installed version of every package of :data:`PACKAGES`."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def plot(results: Sequence[Result], path: pathlib.Path) -> None:
    """Bar chart of latency and peak memory (log scale) per case, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    results = [r for r in results if not r.note]
    cases = list(dict.fromkeys(r.case for r in results))
    kinds = list(dict.fromkeys(r.model for r in results))
    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / len(kinds)
    colours = plt.get_cmap(_COLOURS)
    panels = ((axes[0], "latency_ms", "median latency (ms)"), (axes[1], "peak_mb", "peak memory (MB)"))
    for axis, field, label in panels:
        for i, kind in enumerate(kinds):
            values = [next((getattr(r, field) for r in results if r.case == c and r.model == kind), np.nan)
                      for c in cases]
            axis.bar(np.arange(len(cases)) + i * width, values, width, label=kind, color=colours(i % colours.N))
        axis.set_xticks(np.arange(len(cases)) + width * (len(kinds) - 1) / 2, cases)
        axis.set_yscale("log")
        axis.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(kinds), _LEGEND_COLUMNS), fontsize="small")
    figure.suptitle(f"deformable convolution on onnxruntime {versions()['onnxruntime']} CPU")
    figure.tight_layout(rect=(0, 0.12, 1, 1))  # the legend's band below the panels
    figure.savefig(path, dpi=120)


def document(results: Sequence[Result], runtime_results: Sequence[RuntimeResult], cases: Sequence[Case],
             **facts: Any) -> dict[str, Any]:
    """The JSON document: ``facts`` (versions, threads, ...), every row, the paths and the other runtimes;
    NaN as null."""
    paths = [{"case": case.name, "model": name, "opset": case.opsets[name], "samples_with": case.sampling_ops[name],
              "export": case.paths[name].about} for case in cases for name in case.opsets]
    return _jsonable({**facts, "results": [dataclasses.asdict(r) for r in results], "paths": paths,
                      "runtimes": [dataclasses.asdict(r) for r in runtime_results]})


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
