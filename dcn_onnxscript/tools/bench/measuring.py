"""Measuring a case's models: latency in interleaved rounds in this process, session creation and peak
memory each in a fresh process, the error against torchvision eager.

* **Session s** and **peak memory**: each ONNX model is loaded in a fresh process holding only numpy and
  onnxruntime. After the imports and the inputs it resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) and reads its RSS; it times ``InferenceSession`` creation (default session
  options), then runs the model three times. Peak = VmHWM minus that RSS: weights, arena and
  intermediates. Eager's peak comes the same way from a process that rebuilds the torch module. Linux.
* **Latency**: one process holds every model of a case and runs them interleaved (every path, eager, the
  floors, then again), so that drift of the machine hits all alike; the median of ``--repeat`` rounds is
  reported, after two warm-up rounds. Every onnxruntime session gets ``--threads`` intra-op threads with
  spinning off (a spinning pool would steal the cores of the next model in the round), and torch gets the
  same number of threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime
import torch

from dcn_onnxscript.rewrite.seed import relative_difference
from dcn_onnxscript.tools.bench import progress
from dcn_onnxscript.tools.bench.cases import Case, build_module
from dcn_onnxscript.tools.bench.catalog import BIREFNET, EAGER, FLOORS

NAN = float("nan")
#: Runs of a model in the fresh process that measures its peak memory.
PEAK_RUNS = 3
#: Untimed rounds before the timed ones.
WARMUP_ROUNDS = 2


@dataclasses.dataclass
class Result:
    """One row of the table; NaN where not measured, ``note`` instead of numbers for a model that failed."""

    case: str
    model: str
    nodes_per_layer: float = NAN
    nodes: float = NAN
    export_s: float = NAN
    session_s: float = NAN
    latency_ms: float = NAN
    peak_mb: float = NAN
    max_error: float = NAN
    note: str = ""
    #: A rewritten file's row: the row it was rewritten from, and the largest difference from that file's
    #: output relative to max(1, max |output|).
    source: str = ""
    source_error: float = NAN


def session(path: pathlib.Path, threads: int, disabled_optimizers: Sequence[str] = ()) -> onnxruntime.InferenceSession:
    """A CPU session with ``threads`` intra-op threads, one inter-op thread and no spinning (and onnxruntime's
    graph optimizers ``disabled_optimizers`` off)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(disabled_optimizers))


def onnx_runner(path: pathlib.Path, inputs: Sequence, threads: int) -> Callable[[], np.ndarray]:
    """A closure running the ONNX model at ``path`` on ``inputs`` (tensors or arrays, in input order)."""
    sess = session(path, threads)
    feeds = {arg.name: np.asarray(value) for arg, value in zip(sess.get_inputs(), inputs)}
    return lambda: sess.run(None, feeds)[0]


def eager_runner(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], np.ndarray]:
    """A closure running ``module`` on ``inputs`` without autograd (a list output: its first tensor)."""

    def run_module() -> np.ndarray:
        with torch.inference_mode():
            output = module(*inputs)
        return (output[0] if isinstance(output, (list, tuple)) else output).numpy()

    return run_module


def runners(case: Case, threads: int) -> dict[str, Callable[[], np.ndarray]]:
    """Row -> closure, in the order of the rounds; an ONNX model onnxruntime refuses moves to
    ``case.failures``."""
    result = {}
    for name in [n for n in case.paths if n in case.onnx_paths]:
        try:
            result[name] = onnx_runner(case.onnx_paths[name], case.inputs, threads)
            result[name]()
        except Exception as error:  # noqa: BLE001  (reported in the model's row)
            result.pop(name, None)
            case.failures[name] = f"onnxruntime: {type(error).__name__}: {' '.join(str(error).split())}"[:200]
            progress(f"{case.name}: {name}: {case.failures[name]}")
    result[EAGER] = eager_runner(case.module, case.inputs)
    for name in [n for n in FLOORS if n in case.onnx_paths]:
        result[name] = onnx_runner(case.onnx_paths[name], case.floor_inputs[name], threads)
    return result


def interleaved_medians(run: dict[str, Callable[[], Any]], repeat: int,
                        warmup: int = WARMUP_ROUNDS) -> dict[str, float]:
    """Median seconds per kind over ``repeat`` rounds that run every kind once, in turn."""
    times: dict[str, list[float]] = {kind: [] for kind in run}
    for round_index in range(warmup + repeat):
        for kind, function in run.items():
            start = time.perf_counter()
            function()
            if round_index >= warmup:
                times[kind].append(time.perf_counter() - start)
    return {kind: float(np.median(values)) for kind, values in times.items()}


def max_errors(run: dict[str, Callable[[], np.ndarray]], reference: np.ndarray) -> dict[str, float]:
    """Max |output - reference| of every kind but the floors."""
    return {kind: float(np.abs(function() - reference).max()) for kind, function in run.items() if kind not in FLOORS}


#: The fresh process that times an onnxruntime session's creation and measures its peak memory (numpy
#: and onnxruntime only, so that it starts fast): argv = model path, inputs .npz, runs.
_ORT_WORKER = """
import json, sys, time
import numpy as np, onnxruntime

def rss_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

inputs = np.load(sys.argv[2])
arrays = [inputs[f"arr_{i}"] for i in range(len(inputs.files))]
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
baseline = rss_mb("VmRSS")
start = time.perf_counter()
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
session_s = time.perf_counter() - start
feeds = {arg.name: array for arg, array in zip(session.get_inputs(), arrays)}
for _ in range(int(sys.argv[3])):
    session.run(None, feeds)
print(json.dumps({"session_s": session_s, "peak_mb": rss_mb("VmHWM") - baseline}))
"""


def rss_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure_own_peak(start: Callable[[], Callable[[], object]], runs: int = PEAK_RUNS) -> float:
    """Peak RSS growth (MB) of this process while ``start()`` builds a model and its result runs
    ``runs`` times; the peak mark is reset first (Linux ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = rss_mb("VmRSS")
    run = start()
    for _ in range(runs):
        run()
    return rss_mb("VmHWM") - baseline


def eager_memory_worker(args: argparse.Namespace) -> int:
    """In a fresh process: print {"peak_mb": ...} of the eager model of case ``args.case`` (memory does not
    depend on the weights' values)."""
    torch.set_num_threads(args.threads)
    inputs = np.load(args.workdir / f"{args.case}_inputs.npz")
    tensors = [torch.from_numpy(inputs[f"arr_{i}"]) for i in range(len(inputs.files))]
    module = build_module(args.case, args)
    print(json.dumps({"peak_mb": measure_own_peak(lambda: eager_runner(module, tensors))}))
    return 0


def _worker(command: list[str]) -> dict[str, float]:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def onnx_figures(path: pathlib.Path, inputs: pathlib.Path) -> dict[str, float]:
    """{"session_s", "peak_mb"} of the ONNX model at ``path`` on onnxruntime's CPU provider, from a fresh process:
    session creation, then PEAK_RUNS runs on the arrays of the .npz ``inputs`` (arr_0, arr_1, ...)."""
    return _worker([sys.executable, "-c", _ORT_WORKER, str(path), str(inputs), str(PEAK_RUNS)])


def fresh_process_figures(case: Case, kind: str, workdir: pathlib.Path, args: argparse.Namespace) -> dict[str, float]:
    """{"session_s", "peak_mb"} of an ONNX model, {"peak_mb"} of eager, each from a fresh process."""
    inputs = workdir / f"{case.name}_inputs.npz"
    if kind != EAGER:
        return onnx_figures(case.onnx_paths[kind], inputs)
    return _worker([sys.executable, "-m", "dcn_onnxscript", "bench", "--memory-of", EAGER, "--case", case.name,
                    "--workdir", str(workdir), "--threads", str(args.threads), "--seed", str(args.seed),
                    *(["--birefnet", str(args.birefnet)] if args.birefnet else [])])


def source_errors(case: Case, run: dict[str, Callable[[], np.ndarray]]) -> dict[str, float]:
    """Row -> its difference from the row it was rewritten from (rewritten rows whose source runs)."""
    sources = {kind: path.source for kind, path in case.paths.items() if path.source in run and kind in run}
    return {kind: relative_difference(run[kind](), run[source]()) for kind, source in sources.items()}


def measure(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> list[Result]:
    """Every row of ``case``: nodes, export and session seconds, latency, peak memory, max error (and a
    rewritten row's difference from its source)."""
    np.savez(workdir / f"{case.name}_inputs.npz", *[t.numpy() for t in case.inputs])
    run = runners(case, args.threads)
    fresh: dict[str, dict[str, float]] = {}
    for kind in [*(k for k in case.paths if k in run), *([] if args.no_memory else [EAGER])]:
        what = "peak memory" if kind == EAGER else "session time" + ("" if args.no_memory else " and peak memory")
        progress(f"{case.name}: {kind}: {what} in a fresh process")
        fresh[kind] = fresh_process_figures(case, kind, workdir, args)
    repeat = args.birefnet_repeat if case.name == BIREFNET else args.repeat
    progress(f"{case.name}: latency, {repeat} interleaved rounds after {WARMUP_ROUNDS} warm-up rounds")
    errors, from_source = max_errors(run, run[EAGER]()), source_errors(case, run)
    medians = interleaved_medians(run, repeat)
    del run
    results = []
    for kind in [*(k for k in case.paths if k not in args.skip), EAGER, *FLOORS]:
        source = (case.paths[kind].source if kind in case.paths else None) or ""
        if kind in case.failures:
            results.append(Result(case.name, kind, note=case.failures[kind], source=source))
        elif kind in medians:
            per_layer, total = case.nodes.get(kind, (NAN, NAN))
            figures = fresh.get(kind, {})
            results.append(Result(
                case.name, kind, per_layer, total, case.export_s.get(kind, NAN), figures.get("session_s", NAN),
                1e3 * medians[kind], NAN if args.no_memory else figures.get("peak_mb", NAN),
                errors.get(kind, NAN), source=source, source_error=from_source.get(kind, NAN)))
    return results
