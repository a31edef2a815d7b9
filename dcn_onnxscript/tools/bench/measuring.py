"""Measuring a case's models: latency in interleaved rounds in this process, session creation and peak
memory each in a fresh process, the error against torchvision eager.

* **Session s** and **peak memory**: each ONNX model is loaded in a fresh process holding only numpy and
  onnxruntime. After the imports and the inputs it resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) and reads its RSS; it times ``InferenceSession`` creation (default session
  options), then runs the model three times. Peak = VmHWM minus that RSS: weights, arena and
  intermediates. Eager's peak comes the same way from a process that rebuilds the torch module. Linux.
* **Latency**: one process holds every model of a case and runs them interleaved (every path, eager, the
  floors, then again), so that drift of the machine hits all alike, in a seeded random order per round, so
  that each model follows every other about as often; the median of ``--repeat`` rounds is reported, after two
  warm-up rounds. Every onnxruntime session gets ``--threads`` intra-op threads with
  spinning off (a spinning pool would steal the cores of the next model in the round), and torch gets the
  same number of threads.
* **One at a time** (``--one-at-a-time``): each model in a process of its own, one after the other, so that no
  model's memory holds another's (BiRefNet at 1024×1024 peaks at about 12 GB): the process creates the session
  (``--threads``, as above, its threads spinning with ``--spinning``, onnxruntime's default; timed), runs the
  model once to warm up and ``--repeat`` times more (timed), and reports the median, the peak memory of all of
  that (measured as above) and its output; eager likewise. The errors come from those outputs; the floors of a
  layer run interleaved in this process, after the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
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
#: Untimed rounds before the timed ones; runs before the timed ones of a model measured on its own.
WARMUP_ROUNDS, WARMUP_RUNS = 2, 1


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
    """Median seconds per kind over ``repeat`` rounds that run every kind once, in the order of
    :func:`round_orders`."""
    times: dict[str, list[float]] = {kind: [] for kind in run}
    for round_index, order in enumerate(round_orders(list(run), warmup + repeat)):
        for kind in order:
            start = time.perf_counter()
            run[kind]()
            if round_index >= warmup:
                times[kind].append(time.perf_counter() - start)
    return {kind: float(np.median(values)) for kind, values in times.items()}


def round_orders(kinds: list[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """``rounds`` orders of ``kinds``, each a seeded random permutation, so that every kind runs after every
    other about as often. A fixed order timed a model about 5% slower when it always ran right after one that
    sweeps the caches (a core's grid_sample export after its 353-node gather export lost 3–6% against the plain
    export that ran later in the round); rotating the order does not help, as each kind keeps its predecessor
    within a round."""
    rng = np.random.default_rng(seed)
    return [[kinds[i] for i in rng.permutation(len(kinds))] for _ in range(rounds)]


def max_errors(run: dict[str, Callable[[], np.ndarray]], reference: np.ndarray) -> dict[str, float]:
    """Max |output - reference| of every kind but the floors."""
    return {kind: float(np.abs(function() - reference).max()) for kind, function in run.items() if kind not in FLOORS}


#: The fresh process that times an onnxruntime session's creation and measures its peak memory (numpy
#: and onnxruntime only, so that it starts fast): argv = model path, inputs .npz, runs, then for
#: ``--one-at-a-time`` the intra-op threads, where to save the first output and whether the threads spin ("1") (the
#: session as :func:`session` makes it, or spinning; the seconds of every run reported).
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
options = onnxruntime.SessionOptions()
if len(sys.argv) > 4:
    options.intra_op_num_threads = int(sys.argv[4])
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", sys.argv[6])
start = time.perf_counter()
session = onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session_s = time.perf_counter() - start
feeds = {arg.name: array for arg, array in zip(session.get_inputs(), arrays)}
seconds = []
for run in range(int(sys.argv[3])):
    start = time.perf_counter()
    output = session.run(None, feeds)[0]
    seconds.append(time.perf_counter() - start)
    if run == 0 and len(sys.argv) > 5:
        np.save(sys.argv[5], output)
print(json.dumps({"session_s": session_s, "peak_mb": rss_mb("VmHWM") - baseline, "seconds": seconds}))
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
    depend on the weights' values); with ``--one-at-a-time``, the peak of :func:`runs_of` runs, their
    seconds, and its first output saved to :func:`output_file`."""
    torch.set_num_threads(args.threads)
    inputs = np.load(args.workdir / f"{args.case}_inputs.npz")
    tensors = [torch.from_numpy(inputs[f"arr_{i}"]) for i in range(len(inputs.files))]
    module = build_module(args.case, args)
    if not args.one_at_a_time:
        print(json.dumps({"peak_mb": measure_own_peak(lambda: eager_runner(module, tensors))}))
        return 0
    seconds: list[float] = []

    def timed() -> Callable[[], None]:
        run = eager_runner(module, tensors)

        def timed_run() -> None:
            start = time.perf_counter()
            output = run()
            seconds.append(time.perf_counter() - start)
            if len(seconds) == 1:
                np.save(output_file(args.workdir, args.case, EAGER), output)

        return timed_run

    peak = measure_own_peak(timed, runs_of(args.case, args))
    print(json.dumps({"peak_mb": peak, "seconds": seconds}))
    return 0


def release_memory() -> float:
    """Give what this process freed back to the system (the exports and the rewrites' proofs leave gigabytes
    that the C allocator keeps for reuse), so that a process measured beside it has the memory; returns the
    MB it then holds."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb("VmRSS")


def runs_of(case: str, args: argparse.Namespace) -> int:
    """Runs of a model measured on its own: :data:`WARMUP_RUNS`, then the case's timed rounds."""
    return WARMUP_RUNS + (args.birefnet_repeat if case == BIREFNET else args.repeat)


def output_file(workdir: pathlib.Path, case: str, kind: str) -> pathlib.Path:
    """Where a model measured on its own leaves its output."""
    return workdir / f"{case}_{kind}_output.npy".replace(" ", "_")


def _worker(command: list[str]) -> dict[str, float]:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def onnx_figures(path: pathlib.Path, inputs: pathlib.Path) -> dict[str, float]:
    """{"session_s", "peak_mb"} of the ONNX model at ``path`` on onnxruntime's CPU provider, from a fresh process:
    session creation, then PEAK_RUNS runs on the arrays of the .npz ``inputs`` (arr_0, arr_1, ...)."""
    return _worker([sys.executable, "-c", _ORT_WORKER, str(path), str(inputs), str(PEAK_RUNS)])


def fresh_process_figures(case: Case, kind: str, workdir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    """{"session_s", "peak_mb"} of an ONNX model, {"peak_mb"} of eager, each from a fresh process; with
    ``--one-at-a-time``, also the "seconds" of each of :func:`runs_of` runs, the first output saved to
    :func:`output_file`."""
    inputs = workdir / f"{case.name}_inputs.npz"
    if kind != EAGER:
        if not args.one_at_a_time:
            return onnx_figures(case.onnx_paths[kind], inputs)
        return _worker([sys.executable, "-c", _ORT_WORKER, str(case.onnx_paths[kind]), str(inputs),
                        str(runs_of(case.name, args)), str(args.threads), str(output_file(workdir, case.name, kind)),
                        str(int(args.spinning))])
    return _worker([sys.executable, "-m", "dcn_onnxscript", "bench", "--memory-of", EAGER, "--case", case.name,
                    "--workdir", str(workdir), "--threads", str(args.threads), "--seed", str(args.seed),
                    "--repeat", str(args.repeat), "--birefnet-repeat", str(args.birefnet_repeat),
                    *(["--one-at-a-time"] if args.one_at_a_time else []),
                    *(["--birefnet", str(args.birefnet)] if args.birefnet else [])])


def source_errors(case: Case, run: dict[str, Callable[[], np.ndarray]]) -> dict[str, float]:
    """Row -> its difference from the row it was rewritten from (rewritten rows whose source runs)."""
    sources = {kind: path.source for kind, path in case.paths.items() if path.source in run and kind in run}
    return {kind: relative_difference(run[kind](), run[source]()) for kind, source in sources.items()}


def measure(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> list[Result]:
    """Every row of ``case``: nodes, export and session seconds, latency, peak memory, max error (and a
    rewritten row's difference from its source)."""
    np.savez(workdir / f"{case.name}_inputs.npz", *[t.numpy() for t in case.inputs])
    if args.one_at_a_time:
        fresh, medians, errors, from_source = _one_at_a_time(case, workdir, args)
        return _results(case, args, fresh, medians, errors, from_source)
    run = runners(case, args.threads)
    fresh: dict[str, dict[str, Any]] = {}
    for kind in [*(k for k in case.paths if k in run), *([] if args.no_memory else [EAGER])]:
        what = "peak memory" if kind == EAGER else "session time" + ("" if args.no_memory else " and peak memory")
        progress(f"{case.name}: {kind}: {what} in a fresh process")
        fresh[kind] = fresh_process_figures(case, kind, workdir, args)
    repeat = args.birefnet_repeat if case.name == BIREFNET else args.repeat
    progress(f"{case.name}: latency, {repeat} interleaved rounds after {WARMUP_ROUNDS} warm-up rounds")
    errors, from_source = max_errors(run, run[EAGER]()), source_errors(case, run)
    medians = interleaved_medians(run, repeat)
    del run
    return _results(case, args, fresh, medians, errors, from_source)


def _one_at_a_time(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> tuple[dict, dict, dict, dict]:
    """(fresh-process figures, median seconds, max errors against eager, differences from the source) of every
    row, each model measured in a process of its own (eager last), then the floors interleaved here."""
    progress(f"{case.name}: this process holds {release_memory():.0f} MB")
    fresh: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    for kind in [*(k for k in case.paths if k in case.onnx_paths), EAGER]:
        progress(f"{case.name}: {kind}: session, {runs_of(case.name, args)} runs and peak memory in a process of "
                 "its own")
        try:
            fresh[kind] = fresh_process_figures(case, kind, workdir, args)
        except RuntimeError as error:  # an ONNX model onnxruntime refuses; reported in its row
            case.failures[kind] = f"onnxruntime: {' '.join(str(error).split()[-30:])}"[:200]
            progress(f"{case.name}: {kind}: {case.failures[kind]}")
            continue
        outputs[kind] = np.load(output_file(workdir, case.name, kind))
    medians = {kind: float(np.median(figures["seconds"][WARMUP_RUNS:])) for kind, figures in fresh.items()}
    floors = {name: onnx_runner(case.onnx_paths[name], case.floor_inputs[name], args.threads)
              for name in FLOORS if name in case.onnx_paths}
    if floors:
        medians.update(interleaved_medians(floors, args.repeat))
    eager = outputs.get(EAGER)
    errors = {kind: float(np.abs(output - eager).max()) for kind, output in outputs.items() if eager is not None}
    sources = {kind: path.source for kind, path in case.paths.items() if path.source in outputs and kind in outputs}
    from_source = {kind: relative_difference(outputs[kind], outputs[source]) for kind, source in sources.items()}
    return fresh, medians, errors, from_source


def _results(case: Case, args: argparse.Namespace, fresh: dict[str, dict[str, Any]], medians: dict[str, float],
             errors: dict[str, float], from_source: dict[str, float]) -> list[Result]:
    """The rows of ``case`` from what was measured."""
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
