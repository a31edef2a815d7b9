"""Other runtimes, for the network case and the DCNv3/DCNv4 cores: OpenVINO CPU (``INFERENCE_PRECISION_HINT``
f32, ``--threads`` threads, latency hint) and tract (the file loaded as it is: symbolic dimensions for a
dynamic export), each running the models of :data:`.catalog.RUNTIME_PATHS` (the cores: every row they have)
interleaved as onnxruntime's are. "load s" is read + compile (OpenVINO) or load + optimise into a runnable
(tract). A model a runtime rejects gets the reason in its row."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib
import time
from typing import Callable

import numpy as np

from dcn_onnxscript.tools.bench import progress
from dcn_onnxscript.tools.bench.cases import Case
from dcn_onnxscript.tools.bench.catalog import CORES, OPENVINO, RUNTIME_PATHS, RUNTIMES, TRACT
from dcn_onnxscript.tools.bench.measuring import eager_runner, interleaved_medians

NAN = float("nan")
Runner = Callable[[], np.ndarray]


@dataclasses.dataclass
class RuntimeResult:
    """One row of the other runtimes' table (``case``: empty for the network, whose table it is)."""

    runtime: str
    model: str
    shapes: str = ""
    load_s: float = NAN
    latency_ms: float = NAN
    max_error: float = NAN
    note: str = ""
    case: str = ""


def _openvino_runner(path: pathlib.Path, inputs: list[np.ndarray], threads: int) -> tuple[Runner, str]:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    dynamic = any(port.get_partial_shape().is_dynamic for port in model.inputs)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run_model() -> np.ndarray:
        request.infer(inputs)
        return request.get_output_tensor(0).data.copy()

    return run_model, "dynamic" if dynamic else "static"


def _tract_runner(path: pathlib.Path, inputs: list[np.ndarray], threads: int) -> tuple[Runner, str]:
    import tract

    inference_model = tract.onnx().load(str(path))  # as it is: no input facts set
    dims = str(inference_model.input_fact(0)).split(",")[:-1]  # e.g. "batch,3,height,width,F32"
    runnable = inference_model.into_model().into_runnable()
    return (lambda: runnable.run(inputs)[0].to_numpy()), "static" if all(map(str.isdigit, dims)) else "symbolic"


#: runtime -> (its package, the builder of a runner and the kind of shapes it sees)
_RUNTIMES = {OPENVINO: ("openvino", _openvino_runner), TRACT: ("tract", _tract_runner)}


def other_runtimes(case: Case, args: argparse.Namespace, runtimes: tuple[str, ...] = RUNTIMES) -> list[RuntimeResult]:
    """The rows of ``case`` on ``runtimes`` (of OpenVINO and tract): the network's of
    :data:`.catalog.RUNTIME_PATHS`, or every row of a core."""
    inputs = [tensor.numpy() for tensor in case.inputs]
    reference = eager_runner(case.module, case.inputs)()
    names = case.paths if case.name in CORES else RUNTIME_PATHS
    label = case.name if case.name in CORES else ""
    results = []
    for runtime in runtimes:
        package, make_runner = _RUNTIMES[runtime]
        if runtime in args.skip:
            continue
        rows = {name: RuntimeResult(runtime, name, case=label) for name in names if name not in args.skip}
        run: dict[str, Runner] = {}
        for name, row in rows.items():
            if importlib.util.find_spec(package) is None:
                row.note = f"{package} not installed"
            elif name not in case.onnx_paths:
                row.note = f"no model: {case.failures.get(name, 'not exported')}"
            else:
                progress(f"{case.name}: {runtime}: loading {name}")
                start = time.perf_counter()
                try:
                    run[name], row.shapes = make_runner(case.onnx_paths[name], inputs, args.threads)
                    row.load_s = time.perf_counter() - start
                    row.max_error = float(np.abs(run[name]() - reference).max())
                except Exception as error:  # noqa: BLE001  (a runtime's refusal goes into the row)
                    run.pop(name, None)
                    row.note = f"{type(error).__name__}: {' '.join(str(error).split())}"[:200]
                    progress(f"{case.name}: {runtime}: {name}: {row.note}")
        if run:
            progress(f"{case.name}: {runtime}: latency, {args.repeat} interleaved rounds")
            for name, seconds in interleaved_medians(run, args.repeat).items():
                rows[name].latency_ms = 1e3 * seconds
        del run
        results += rows.values()
    return results
