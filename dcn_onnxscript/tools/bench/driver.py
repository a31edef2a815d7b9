"""The bench's run: every case in turn (build, export every path, measure), then the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import tempfile
import time

import torch

from dcn_onnxscript.lowering import table
from dcn_onnxscript.tools.bench import progress
from dcn_onnxscript.tools.bench.cases import Case, build_case
from dcn_onnxscript.tools.bench.catalog import (
    BIREFNET,
    CORE_RUNTIMES,
    CORES,
    LAYERS,
    NETWORK,
    PLAIN,
    STATIC_EXPORTERS,
    Unavailable,
)
from dcn_onnxscript.tools.bench.exports import export_case
from dcn_onnxscript.tools.bench.floors import add_floors
from dcn_onnxscript.tools.bench.measuring import WARMUP_RUNS, Result, measure
from dcn_onnxscript.tools.bench.reporting import (
    document,
    floor_line,
    format_paths,
    format_repairs,
    format_runtime_table,
    format_table,
    plot,
    versions,
)
from dcn_onnxscript.tools.bench.runtimes import RuntimeResult, other_runtimes


def bench(args: argparse.Namespace) -> int:
    """Run the cases of ``args.layers`` and print the tables (models in ``args.workdir`` or a temporary
    folder removed at the end)."""
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dcn_bench_")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        return _bench(args, workdir)


def _bench(args: argparse.Namespace, workdir: pathlib.Path) -> int:
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    results: list[Result] = []
    runtime_results: list[RuntimeResult] = []
    core_runtime_results: list[RuntimeResult] = []
    cases: list[Case] = []
    floors: list[str] = []
    for name in args.layers:
        progress(f"{name}: building the model")
        try:
            case = build_case(name, args)
        except Unavailable as error:
            progress(f"{name}: {error}")
            results.append(Result(name, "-", note=str(error)))
            continue
        export_case(case, workdir, args)
        if name in LAYERS:
            add_floors(case, LAYERS[name], workdir, args.seed)
        case_results = measure(case, workdir, args)
        results += case_results
        floors += filter(None, [floor_line(case, case_results)])
        if name == NETWORK:
            runtime_results = other_runtimes(case, args)
        if name in CORES:
            core_runtime_results += other_runtimes(case, args, CORE_RUNTIMES)
        cases.append(case)
        progress(f"{name}: done")
    wall_s, load_after = time.perf_counter() - start, os.getloadavg()[0]
    found = versions()
    opset = next((opset for case in cases for name, opset in case.opsets.items() if name in table.LOWERINGS), None)
    auto = table.resolve(table.DEFAULT, opset) if opset else "-"
    rounds = f"{args.repeat}" + (f" ({BIREFNET}: {args.birefnet_repeat})" if BIREFNET in args.layers else "")
    default = f"; '{table.DEFAULT}' at torch's default opset {opset}: {auto}" if opset else ""
    how = (f"runs after {WARMUP_RUNS} warm-up run, each model in a process of its own" if args.one_at_a_time
           else "interleaved rounds") + ("; onnxruntime's threads spin" if args.spinning else "")
    print(f"\n{', '.join(f'{k} {v}' for k, v in found.items())}; {args.threads} threads, median of "
          f"{rounds} {how}{default}\n")
    if any(r.case not in CORES for r in results):
        print(format_table([r for r in results if r.case not in CORES]))
    if any(r.case in CORES for r in results):
        print(f"\nDCNv3 and DCNv4 cores (3x3, channels last, batch 1; '{PLAIN}': InternImage's pure-PyTorch core "
              f"exported by plain torch.onnx, DCNv3 only):\n")
        print(format_table([r for r in results if r.case in CORES], PLAIN))
    if any(r.source for r in results):
        print("\nRewritten files against the files they were rewritten from (rel. err: max |difference| / "
              "max(1, max |before|) on the bench's inputs):\n")
        print(format_repairs(results))
    if cases:
        print("\nHow each model was exported (opset and sampling ops as the file holds them):\n")
        print(format_paths(cases))
    if floors:
        print("\n" + "\n".join(floors))
    if runtime_results:
        print(f"\n{NETWORK} 1x3x{args.image_size}x{args.image_size} on other runtimes (OpenVINO CPU f32, tract):\n")
        print(format_runtime_table(runtime_results, auto))
    if core_runtime_results:
        print("\nThe cores on other runtimes (OpenVINO CPU f32):\n")
        print(format_runtime_table(core_runtime_results, PLAIN))
    if any(case.name not in LAYERS and case.name not in CORES for case in cases):
        print(f"\nnetworks: nodes/layer = (nodes - nodes of the same export with one node per deformable layer "
              f"+ L) / L; Constant nodes not counted; a function call counts as its body; {NETWORK}'s exports "
              f"dynamic (batch, height, width) but the peers' ({', '.join(STATIC_EXPORTERS)}); {BIREFNET}'s "
              f"static, as its tutorial's")
    print(f"\nbench wall time {wall_s:.0f} s; 1-min load average {load_before:.2f} at the start, {load_after:.2f} "
          f"at the end on {os.cpu_count()} cores (other busy processes distort the timings, torch eager's most)")
    if args.plot:
        plot(results, args.plot)
        print(f"chart: {args.plot}")
    if args.json:
        facts = dict(versions=found, threads=args.threads, repeat=args.repeat,
                     birefnet_repeat=args.birefnet_repeat, image_size=args.image_size,
                     birefnet_size=args.birefnet_size, one_at_a_time=args.one_at_a_time, spinning=args.spinning,
                     wall_s=wall_s,
                     load_average=[load_before, load_after],
                     floors=floors)
        document_ = document(results, runtime_results + core_runtime_results, cases, **facts)
        args.json.write_text(json.dumps(document_, indent=1) + "\n")
        print(f"json: {args.json}")
    return 0
