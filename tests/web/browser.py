"""The Python side of the browser harness: a model and its inputs written to a folder, run in headless
Chromium by ``run.mjs`` (onnxruntime-web: JSEP WebGPU, the native WebGPU EP, wasm), and what came back read:
outputs, GPU validation errors from the console, and which nodes onnxruntime placed on the CPU EP (its
verbose log)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

import numpy as np
import onnx
import pytest

HERE = pathlib.Path(__file__).resolve().parent
#: Debian's chromium (``apt-get install chromium``); puppeteer-core downloads none.
CHROMIUM = pathlib.Path("/usr/bin/chromium")
#: onnxruntime-web's builds the page knows: JSEP WebGPU (``import 'onnxruntime-web'``), the native WebGPU EP
#: (``import 'onnxruntime-web/webgpu'``) and wasm.
BUILDS = ("jsep", "webgpu", "wasm")
#: The CPU execution provider's name in onnxruntime's node placement log.
CPU_EP = "CPUExecutionProvider"
#: Seconds one job (a browser start and its cases) may take.
JOB_TIMEOUT_S = 900
#: Nodes of onnxruntime's own making (not in the model) that both WebGPU builds place on the CPU in a model of
#: symbolic sizes: at most two ``Gather`` nodes of sizes.
OWN_CPU_NODES = 2


def missing() -> Optional[str]:
    """Why the harness cannot run here (no chromium, no node_modules), or ``None``."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not (HERE / "node_modules" / "puppeteer-core").exists() or shutil.which("node") is None:
        return f"node and {HERE / 'node_modules'} are needed (cd {HERE} && npm ci)"
    return None


@dataclasses.dataclass
class BrowserRun:
    """What one model gave on one build: ``outputs`` by name (``None`` where the run failed with ``error``),
    the console's GPU errors, the nodes placed on the CPU EP (op type and name), the execution provider the
    page ran on, the adapter and the times."""

    build: str
    outputs: Optional[dict[str, np.ndarray]]
    error: Optional[str]
    gpu_errors: list[str]
    cpu_nodes: list[str]
    backend: Optional[str]
    adapter: Optional[dict]
    create_ms: Optional[float]
    run_ms: Optional[float]
    console: list[dict]
    #: Chrome's ``performance.memory.usedJSHeapSize`` after the run (the JS heap only), MB.
    js_heap_mb: Optional[float] = None
    #: Peak resident memory of Chromium's processes so far, the largest of each kind ("renderer",
    #: "gpu-process", ...), MB; one browser serves a job's cases in turn, so a case's figure holds the earlier ones'.
    process_peak_mb: Optional[dict[str, float]] = None


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], builds: Sequence[str] = BUILDS,
        page: str = "harness/page.html", screenshot: Optional[pathlib.Path] = None,
        case_timeout_s: Optional[float] = None) -> dict[str, BrowserRun]:
    """``model`` on ``feeds`` (float16 arrays as float16, others as float32) in headless Chromium with each of
    ``builds``: build -> run;
    ``case_timeout_s``: how long one build may take (default: run.mjs's 240 s)."""
    with tempfile.TemporaryDirectory(prefix="dcn-web-") as folder:
        data = pathlib.Path(folder)
        onnx.save(model, data / "model.onnx")
        inputs = []
        for number, (name, value) in enumerate(feeds.items()):
            dtype = np.float16 if value.dtype == np.float16 else np.float32
            np.ascontiguousarray(value, dtype=dtype).tofile(data / f"input{number}.bin")
            inputs.append({"name": name, "file": f"input{number}.bin", "dims": list(value.shape),
                           "type": np.dtype(dtype).name})
        outputs = [o.name for o in model.graph.output]
        job = {"chromium": str(CHROMIUM), "data": str(data), "page": page,
               "screenshot": str(screenshot) if screenshot else None,
               "timeout_ms": 1000 * case_timeout_s if case_timeout_s else None,
               "cases": [{"build": b, "model": "model.onnx", "inputs": inputs, "outputs": outputs} for b in builds]}
        (data / "job.json").write_text(json.dumps(job))
        done = subprocess.run(["node", str(HERE / "run.mjs"), str(data / "job.json")], capture_output=True,
                              text=True, timeout=max(JOB_TIMEOUT_S, len(builds) * (case_timeout_s or 0) + 120))
    if done.returncode != 0:
        raise RuntimeError(f"run.mjs failed: {done.stderr[-3000:]}")
    return {b: _read(b, result) for b, result in zip(builds, json.loads(done.stdout.strip().splitlines()[-1]))}


def assert_matches(run: BrowserRun, expected: np.ndarray, tolerance: float) -> None:
    """``run`` finished without an error or a GPU error, and its one output matches ``expected``."""
    assert run.error is None, run.error
    assert not run.gpu_errors, run.gpu_errors[:5]
    (actual,) = run.outputs.values()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


#: The WebGPU feature float16 kernels need.
SHADER_F16 = "shader-f16"
#: A float16 run's error may be this many times onnxruntime CPU's (both against float64), plus a floor relative to
#: the output's scale: float16 sums differ in order between runtimes.
FLOAT16_ERROR_FACTOR, FLOAT16_ERROR_FLOOR = 2.0, 2e-3


def _scaled_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to max(1, max |expected|)."""
    return float(np.max(np.abs(actual.astype(np.float64) - expected)) / max(1.0, np.max(np.abs(expected))))


def assert_float16_matches(run: BrowserRun, expected: np.ndarray, cpu: np.ndarray) -> None:
    """``run`` (of a float16 model) gave a float16 output as close to ``expected`` (float64) as onnxruntime CPU's
    ``cpu`` is, within :data:`FLOAT16_ERROR_FACTOR` and :data:`FLOAT16_ERROR_FLOOR`; a WebGPU build whose adapter
    lacks ``shader-f16`` is skipped, saying so (without it JSEP's float16 shaders fail to compile, and the run
    returns garbage; the native EP refuses the session)."""
    if run.build != "wasm" and SHADER_F16 not in ((run.adapter or {}).get("features") or []):
        pytest.skip(f"the WebGPU adapter ({(run.adapter or {}).get('architecture')}) has no {SHADER_F16}, which "
                    f"float16 kernels need (without it JSEP's float16 shaders fail to compile, and the run returns "
                    f"garbage; the native EP refuses the session)")
    assert run.error is None, run.error
    assert not run.gpu_errors, run.gpu_errors[:5]
    (actual,) = run.outputs.values()
    assert actual.dtype == np.float16 and actual.shape == expected.shape
    assert _scaled_error(actual, expected) <= FLOAT16_ERROR_FACTOR * _scaled_error(cpu, expected) + FLOAT16_ERROR_FLOOR


def _read(build: str, result: dict) -> BrowserRun:
    console = result.get("console", [])
    outputs = None
    if "outputs" in result:
        outputs = {name: _values(o) for name, o in result["outputs"].items()}
    return BrowserRun(build=build, outputs=outputs, error=result.get("error"), gpu_errors=gpu_errors(console),
                      cpu_nodes=placed_on(console, CPU_EP), backend=result.get("backend"),
                      adapter=result.get("adapter"), create_ms=result.get("create_ms"), run_ms=result.get("run_ms"),
                      console=console, js_heap_mb=result.get("js_heap_mb"),
                      process_peak_mb=result.get("process_peak_mb"))


def _values(output: dict) -> np.ndarray:
    """An output the page returned: float32 values, or float16's bits (read as float16)."""
    if output.get("type") == "float16":
        return np.asarray(output["data"], dtype=np.uint16).view(np.float16).reshape(output["dims"])
    return np.asarray(output["data"], dtype=np.float32).reshape(output["dims"])


#: How onnxruntime's log lines begin (it logs to the console's error stream, whatever the severity).
_ONNXRUNTIME_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \[[VIWEF]:onnxruntime")
#: Node placement in onnxruntime's verbose log: a header per provider, then one "OpType (name)" per node.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: How Chromium reports a WebGPU error in the console ("[Invalid ComputePipeline "Split"] is invalid", an
#: uncaptured GPUValidationError, a lost device).
_GPU_ERROR = re.compile(r"Invalid|GPUValidationError|Too many storage buffers|[Uu]ncaptured|[Dd]evice (was )?lost")
_PLACED = re.compile(r"(All nodes|Node\(s\)) placed on \[(\w+)\]")
_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]\s{3}(\S+ \(.*\))$")


def gpu_errors(console: list[dict]) -> list[str]:
    """The browser's own console errors (not onnxruntime's log): WebGPU validation (an invalid pipeline,
    bind group or buffer), after which a run returns garbage without failing."""
    return [line["text"] for line in console if line["type"] in ("error", "warning", "pageerror")
            and not _ONNXRUNTIME_LOG.match(_ANSI.sub("", line["text"])) and _GPU_ERROR.search(line["text"])]


def placed_on(console: list[dict], provider: str) -> list[str]:
    """The nodes onnxruntime's verbose log says it placed on ``provider``, as "OpType (name)"; every node
    where the log says all were placed there (its header then names no nodes: ["*"])."""
    nodes, current = [], None
    for line in console:
        header = _PLACED.search(line["text"])
        if header:
            current = header.group(2)
            if header.group(1) == "All nodes" and current == provider:
                nodes.append("*")
            continue
        node = _NODE.search(line["text"])
        if node and current == provider:
            nodes.append(node.group(1))
    return nodes


def node_name(placed: str) -> str:
    """The node name in a placement log's "OpType (name)"."""
    return re.sub(r"^\S+ \((.*)\)$", r"\1", placed)


def shape_only_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that compute only on shapes (every input a ``Shape``'s result, a constant or
    computed from them): what a GPU execution provider may leave to the CPU without copying tensor data."""
    known = {i.name for i in model.graph.initializer} | {""}
    names = set()
    for node in model.graph.node:
        if node.op_type in ("Shape", "Constant") or (node.input and all(i in known for i in node.input)):
            known.update(node.output)
            names.add(node.name)
    return names
