"""``python -m dcn_onnxscript bench``: graph size, export and load time, latency and peak memory of every
lowering of :data:`dcn_onnxscript.lowering.table.LOWERINGS` on onnxruntime CPU, against a native ONNX
``DeformConv`` (opset 19), the TorchScript-based ``deform_conv2d_onnx_exporter`` and torchvision eager.

Cases: single modulated 3x3 layers (padding 1, bias, one offset group) and the DCNv2 ResNet-50 of
``examples/dcn_resnet50.py`` (13 deformable layers). Every lowering and the native model are exported
with ``torch.onnx.export(dynamo=True)`` (lowerings at opset 20, where the default "auto" is grid_sample;
native: torch's own translation, ``DeformConv``, opset 19);
``deform_conv2d_onnx_exporter`` with ``torch.onnx.export(dynamo=False, opset_version=12)`` after its
``register_deform_conv2d_onnx_op()``. The network's dynamo exports have a dynamic batch, height and width,
as the example writes them; ``deform_conv2d_onnx_exporter`` bakes the shapes in, so its export is static.

Method:

* **Nodes**: graph nodes other than ``Constant`` (the TorchScript exporter writes constants as nodes, the
  dynamo exporter as initializers). Per layer: a layer model's nodes; for the network, (nodes - nodes of
  the same network from the same exporter with one node per deformable layer + 13) / 13, the one-node
  export being native ``DeformConv`` for the dynamo exports and a stub node for the TorchScript one.
* **Export s**: wall time of the ``torch.onnx.export`` call (writing the file included).
* **Session s** and **peak memory**: each ONNX model is loaded in a fresh process holding only numpy and
  onnxruntime. After the imports and the inputs it resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) and reads its RSS; it times ``InferenceSession`` creation (default session
  options), then runs the model three times. Peak = VmHWM minus that RSS: weights, arena and
  intermediates. Eager's peak comes the same way from a process that rebuilds the torch module. Linux.
* **Latency**: one process holds every model of a case and runs them interleaved (lowerings, native,
  deform_conv2d_onnx_exporter, eager, the floors, then again), so that drift of the machine hits all alike; the
  median of ``--repeat`` rounds is reported, after two warm-up rounds. Every onnxruntime session gets
  ``--threads`` intra-op threads with spinning off (a spinning pool would steal the cores of the next
  model in the round), and torch gets the same number of threads.
* **Floors**: the layer's GEMM, (N·Ho·Wo, C·kH·kW) x (C·kH·kW, O), run as a single onnxruntime ``MatMul``
  in the same rounds; floor = GEMM FLOPs / that MatMul's measured throughput, i.e. its median time. And
  its sampling alone: one onnxruntime ``GridSample`` (bilinear, zeros, align_corners=0: its fast path) of X
  at every tap's positions p_0 + p_k + Δp_k of the case's offsets, in the same rounds. GEMM + sampling
  is what any graph of standard ops that samples with ``GridSample`` costs at least.
* **Other runtimes** (network only): every lowering's model and deform_conv2d_onnx_exporter's on
  OpenVINO CPU (``INFERENCE_PRECISION_HINT`` f32, ``--threads`` threads, latency hint) and tract (the file
  loaded as it is: symbolic dimensions for the dynamic export), interleaved the same way. "load s" is
  read + compile (OpenVINO) or load + optimise into a runnable (tract). A model a runtime rejects gets
  the reason in its row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper, numpy_helper
from torchvision.ops import DeformConv2d

import dcn_onnxscript
from dcn_onnxscript.export import _internals, dynamo
from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.table import LOWERINGS
from dcn_onnxscript.tools.progress import Progress

#: Model kinds besides the lowerings (named as in LOWERINGS): native DeformConv, the
#: deform_conv2d_onnx_exporter package, torchvision eager, and the floors of a layer: its GEMM alone and its
#: sampling alone.
NATIVE, DCOE, EAGER, GEMM, SAMPLING = "native", "deform_conv2d_onnx_exporter", "eager", "gemm floor", "sampling floor"
#: The floor models, in round order.
FLOORS = (GEMM, SAMPLING)
#: The ONNX models of every case, in round order.
ONNX_KINDS = (*LOWERINGS, NATIVE, DCOE)
#: The opset of every lowering's export (torch's default in torch 2.14; native DeformConv: 19).
EXPORT_OPSET = 20
#: The lowering the default ("auto") stands for at that opset.
DEFAULT = table.resolve(table.DEFAULT, EXPORT_OPSET)
#: The other runtimes of the network case.
OPENVINO, TRACT = "openvino", "tract"
#: What ``--skip`` can leave out.
SKIPPABLE = (DCOE, OPENVINO, TRACT)
#: The network case, built by examples/dcn_resnet50.py, and its number of deformable layers.
NETWORK, NETWORK_LAYERS = "resnet50", 13
_EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "dcn_resnet50.py"
_QUALIFIED_NAME = "torchvision::deform_conv2d"
#: deform_conv2d_onnx_exporter's opset.
_DCOE_OPSET = 12


class Unavailable(Exception):
    """A model that cannot be built or run here; the message goes into its row."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """A modulated 3x3 deformable layer, padding 1, C = O channels, on (batch, C, size, size)."""

    batch: int
    channels: int
    size: int

    def gemm_shape(self) -> tuple[int, int, int]:
        """(M, K, O) of its im2col GEMM: (N·H·W, C·9) x (C·9, O)."""
        return self.batch * self.size * self.size, 9 * self.channels, self.channels


#: Layer cases; "tiny" is for smoke tests.
LAYERS = {
    "tiny": Layer(1, 8, 8),
    "L1": Layer(1, 64, 64),
    "L2": Layer(4, 128, 64),
    "L3": Layer(1, 256, 32),
}


@dataclasses.dataclass
class Case:
    """What one row group of the table runs: the eager ``module`` on ``inputs``, the ONNX files
    ``onnx_paths`` (kind -> path; the floors have their own inputs ``floor_inputs``), with their export
    seconds and node counts (kind -> (per layer, total)); ``failures``: kind -> why it has no model."""

    name: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    onnx_paths: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)
    export_s: dict[str, float] = dataclasses.field(default_factory=dict)
    nodes: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    floor_inputs: dict[str, tuple[np.ndarray, ...]] = dataclasses.field(default_factory=dict)
    gemm_flops: float = 0.0


NAN = float("nan")


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


@dataclasses.dataclass
class RuntimeResult:
    """One row of the other runtimes' table."""

    runtime: str
    model: str
    shapes: str = ""
    load_s: float = NAN
    latency_ms: float = NAN
    max_error: float = NAN
    note: str = ""


# ------------------------------------------------------------------------------------------------ progress


#: Progress lines on stderr, with the seconds since the bench started.
progress = Progress()


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    """Progress lines before and after a step, torch.onnx's own phase lines in between."""
    progress(f"{what}...")
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(progress):
        warnings.simplefilter("ignore")
        yield
    progress(f"{what}: done in {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------------------------------------ models


class LayerModule(torch.nn.Module):
    """A torchvision ``DeformConv2d`` (3x3, padding 1) taking (x, offset, mask) as inputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.deform = DeformConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.deform(x, offset, mask)


def layer_inputs(layer: Layer, seed: int) -> tuple[torch.Tensor, ...]:
    """x (N, C, H, W), offsets of a few pixels (N, 18, H, W) and a mask in (0, 1) (N, 9, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    n, c, s = layer.batch, layer.channels, layer.size
    x = torch.randn(n, c, s, s, generator=generator)
    offset = 2 * torch.randn(n, 18, s, s, generator=generator)
    mask = torch.rand(n, 9, s, s, generator=generator)
    return x, offset, mask


def gemm_model(m: int, k: int, o: int, seed: int) -> onnx.ModelProto:
    """A single ``MatMul`` of an input A (m, k) with a constant B (k, o)."""
    b = np.random.default_rng(seed).standard_normal((k, o), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, o])],
        [numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def sampling_model() -> onnx.ModelProto:
    """A single ``GridSample`` (bilinear, zeros, align_corners=0) of an input x (N, C, H, W) at a grid
    (N, Ho', Wo', 2)."""
    graph = helper.make_graph(
        [helper.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode="zeros",
                          align_corners=0)], "sampling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", "Ho", "Wo", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "Ho", "Wo"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def tap_grid(offset: np.ndarray) -> np.ndarray:
    """``GridSample``'s grid (N, 9·H, W, 2) of every tap's positions p_0 + p_k + Δp_k of a 3x3 layer (padding
    1, stride 1) with ``offset`` (N, 18, H, W) ((Δy, Δx) per tap), taps stacked along the rows."""
    n, _, h, w = offset.shape
    ky, kx = np.divmod(np.arange(9), 3)
    y = np.arange(h)[None, None, :, None] + ky[None, :, None, None] - 1 + offset[:, 0::2]  # (N, 9, H, W)
    x = np.arange(w)[None, None, None, :] + kx[None, :, None, None] - 1 + offset[:, 1::2]
    grid = np.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], axis=-1)
    return grid.reshape(n, 9 * h, w, 2).astype(np.float32)


def build_layer_module(layer: Layer, seed: int) -> LayerModule:
    torch.manual_seed(seed)
    return LayerModule(layer.channels).eval()


def count_nodes(path: pathlib.Path) -> int:
    """Graph nodes of the ONNX file at ``path`` other than ``Constant``."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type != "Constant" for node in graph.node)


def _export_dynamo(module: torch.nn.Module, inputs: tuple, path: pathlib.Path, impl: str) -> float:
    """Export a layer model through ``impl`` (a lowering or "native"); returns the export seconds."""
    start = time.perf_counter()
    torch.onnx.export(module, inputs, str(path), dynamo=True, verbose=False,
                      opset_version=dynamo.NATIVE_MIN_OPSET if impl == NATIVE else EXPORT_OPSET,
                      custom_translation_table=dcn_onnxscript.translation_table(impl))
    return time.perf_counter() - start


def _import_dcoe() -> ModuleType:
    """deform_conv2d_onnx_exporter, importable on torch >= 2.9: it looks for ``JitScalarType`` in
    ``torch.onnx._type_utils``, which moved, and otherwise falls back to tables that no longer hold
    torch's scalar types. The old name is aliased while it imports (and only then)."""
    if importlib.util.find_spec("deform_conv2d_onnx_exporter") is None:
        raise Unavailable("not installed")
    with _internals.legacy_type_utils():
        return importlib.import_module("deform_conv2d_onnx_exporter")


def _stub_symbolic(g, input, weight, offset, mask, bias, *args):
    """One node in place of deform_conv2d (counting only: the network's nodes outside its layers)."""
    output = g.op("bench::DeformConv2d", input, weight, offset, mask, bias)
    n, _, height, width = offset.type().sizes()
    output.setType(offset.type().with_sizes([n, weight.type().sizes()[0], height, width]))
    return output


def _export_torchscript(module: torch.nn.Module, inputs: tuple, path: pathlib.Path, stub: bool = False) -> float:
    """Export through deform_conv2d_onnx_exporter (or the one-node stub), ``dynamo=False``, opset 12,
    with our own TorchScript symbolic lifted meanwhile; returns the export seconds."""
    symbolic = _stub_symbolic if stub else _import_dcoe().deform_conv2d_func(True, False)
    was_registered = dcn_onnxscript.is_registered()
    dcn_onnxscript.unregister()
    try:
        torch.onnx.register_custom_op_symbolic(_QUALIFIED_NAME, symbolic, _DCOE_OPSET)
        start = time.perf_counter()
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=_DCOE_OPSET,
                          custom_opsets={"bench": 1} if stub else None)
        return time.perf_counter() - start
    finally:
        torch.onnx.unregister_custom_op_symbolic(_QUALIFIED_NAME, _DCOE_OPSET)
        if was_registered:
            dcn_onnxscript.register()


def _dcoe_version() -> str:
    try:
        return importlib.metadata.version("deform_conv2d_onnx_exporter")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _try(case: Case, kind: str, export: Callable[[], float]) -> bool:
    """Run ``export`` for ``kind`` of ``case``, recording its seconds, or why it failed."""
    try:
        case.export_s[kind] = export()
        return True
    except Exception as error:  # noqa: BLE001  (any failure of a model is reported in its row)
        reason = str(error) if isinstance(error, Unavailable) else f"export failed: {type(error).__name__}: {error}"
        case.failures[kind] = reason.splitlines()[0][:160]
        case.onnx_paths.pop(kind, None)
        progress(f"{case.name}: {kind}: {case.failures[kind]}")
        return False


def layer_case(name: str, layer: Layer, workdir: pathlib.Path, args: argparse.Namespace) -> Case:
    """Export every kind of layer model and write the GEMM model; files ``workdir/{name}_*.onnx``."""
    module = build_layer_module(layer, args.seed)
    inputs = layer_inputs(layer, args.seed)
    case = Case(name, module, inputs)
    for kind in _onnx_kinds(args):
        path = case.onnx_paths[kind] = workdir / f"{name}_{kind}.onnx"
        with _phase(f"{name}: exporting {kind}"):
            if kind == DCOE:
                exported = _try(case, kind, lambda: _export_torchscript(module, inputs, path))
            else:
                exported = _try(case, kind, lambda: _export_dynamo(module, inputs, path, kind))
        if exported:
            total = count_nodes(path)
            case.nodes[kind] = (total, total)
    m, k, o = layer.gemm_shape()
    case.onnx_paths[GEMM] = workdir / f"{name}_gemm.onnx"
    onnx.save(gemm_model(m, k, o, args.seed), str(case.onnx_paths[GEMM]))
    case.floor_inputs[GEMM] = (np.random.default_rng(args.seed).standard_normal((m, k), dtype=np.float32),)
    case.gemm_flops = 2.0 * m * k * o
    case.onnx_paths[SAMPLING] = workdir / f"{name}_sampling.onnx"
    onnx.save(sampling_model(), str(case.onnx_paths[SAMPLING]))
    x, offset, _ = (t.numpy() for t in inputs)
    case.floor_inputs[SAMPLING] = (x, tap_grid(offset))
    return case


def _load_example() -> ModuleType:
    """``examples/dcn_resnet50.py`` as a module (it is not installed with the package)."""
    if not _EXAMPLE.exists():
        raise FileNotFoundError(f"the {NETWORK} case needs {_EXAMPLE} (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("dcn_resnet50", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def network_case(workdir: pathlib.Path, args: argparse.Namespace) -> Case:
    """Export the DCNv2 ResNet-50 through every kind, plus the one-node-per-layer baselines of the counts."""
    example = _load_example()
    progress(f"{NETWORK}: building the model")
    module = example.build_model(args.seed)
    size = args.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    case = Case(NETWORK, module, (x,))
    baselines: dict[str, int] = {}
    for kind in _onnx_kinds(args):
        path = case.onnx_paths[kind] = workdir / f"{NETWORK}_{kind}.onnx"
        if kind == DCOE:
            with _phase(f"{NETWORK}: exporting {kind} (TorchScript, static 1x3x{size}x{size})"):
                if not _try(case, kind, lambda: _export_torchscript(module, (x,), path)):
                    continue
            stub = workdir / f"{NETWORK}_stub.onnx"
            with _phase(f"{NETWORK}: exporting the same with one stub node per layer (for the node count)"):
                _export_torchscript(module, (x,), stub, stub=True)
            baselines[kind] = count_nodes(stub)
        else:
            with _phase(f"{NETWORK}: exporting {kind} (dynamo, dynamic batch/height/width; "
                        f"torch.onnx's phases follow)"):
                if not _try(case, kind, lambda: example.export(module, path, size, impl=kind, verbose=True)):
                    continue
        case.nodes[kind] = (NAN, count_nodes(path))
    native_nodes = case.nodes.get(NATIVE, (NAN, NAN))[1]
    for kind, (_, total) in case.nodes.items():
        baseline = baselines[kind] if kind == DCOE else native_nodes
        case.nodes[kind] = ((total - baseline + NETWORK_LAYERS) / NETWORK_LAYERS, total)
    return case


def _onnx_kinds(args: argparse.Namespace) -> list[str]:
    return [kind for kind in ONNX_KINDS if kind not in args.skip]


# ------------------------------------------------------------------------------------------------ latency


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
    """A closure running ``module`` on ``inputs`` without autograd."""

    def run_module() -> np.ndarray:
        with torch.inference_mode():
            return module(*inputs).numpy()

    return run_module


def runners(case: Case, threads: int) -> dict[str, Callable[[], np.ndarray]]:
    """Kind -> closure, in the order of the rounds; an ONNX model onnxruntime refuses moves to
    ``case.failures``."""
    result = {}
    for kind in [k for k in ONNX_KINDS if k in case.onnx_paths]:
        try:
            result[kind] = onnx_runner(case.onnx_paths[kind], case.inputs, threads)
            result[kind]()
        except Exception as error:  # noqa: BLE001  (reported in the model's row)
            result.pop(kind, None)
            case.failures[kind] = f"onnxruntime: {type(error).__name__}: {' '.join(str(error).split())}"[:160]
            progress(f"{case.name}: {kind}: {case.failures[kind]}")
    result[EAGER] = eager_runner(case.module, case.inputs)
    for kind in [k for k in FLOORS if k in case.onnx_paths]:
        result[kind] = onnx_runner(case.onnx_paths[kind], case.floor_inputs[kind], threads)
    return result


def interleaved_medians(run: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2) -> dict[str, float]:
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


# ------------------------------------------------------------------------------------------------ memory

#: The fresh process that times an onnxruntime session's creation and measures its peak memory (numpy
#: and onnxruntime only, so that it starts fast): argv = model path, inputs .npz.
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
for _ in range(3):
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


def measure_own_peak(start: Callable[[], Callable[[], object]], runs: int = 3) -> float:
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
    """In a fresh process: print {"peak_mb": ...} of the eager model of case ``args.case``."""
    torch.set_num_threads(args.threads)
    inputs = np.load(args.workdir / f"{args.case}_inputs.npz")
    tensors = [torch.from_numpy(inputs[f"arr_{i}"]) for i in range(len(inputs.files))]
    if args.case == NETWORK:  # memory does not depend on the weights' values
        module = _load_example().build_model(args.seed)
    else:
        module = build_layer_module(LAYERS[args.case], args.seed)
    print(json.dumps({"peak_mb": measure_own_peak(lambda: eager_runner(module, tensors))}))
    return 0


def _worker(command: list[str]) -> dict[str, float]:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def fresh_process_figures(case: Case, kind: str, workdir: pathlib.Path, args: argparse.Namespace) -> dict[str, float]:
    """{"session_s", "peak_mb"} of an ONNX model, {"peak_mb"} of eager, each from a fresh process."""
    inputs = workdir / f"{case.name}_inputs.npz"
    if kind != EAGER:
        return _worker([sys.executable, "-c", _ORT_WORKER, str(case.onnx_paths[kind]), str(inputs)])
    return _worker([sys.executable, "-m", "dcn_onnxscript", "bench", "--memory-of", EAGER, "--case", case.name,
                    "--workdir", str(workdir), "--threads", str(args.threads), "--seed", str(args.seed)])


def measure(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> list[Result]:
    """Every row of ``case``: nodes, export and session seconds, latency, peak memory, max error."""
    np.savez(workdir / f"{case.name}_inputs.npz", *[t.numpy() for t in case.inputs])
    run = runners(case, args.threads)
    fresh: dict[str, dict[str, float]] = {}
    for kind in [*(k for k in ONNX_KINDS if k in run), *([] if args.no_memory else [EAGER])]:
        what = "peak memory" if kind == EAGER else "session time" + ("" if args.no_memory else " and peak memory")
        progress(f"{case.name}: {kind}: {what} in a fresh process")
        fresh[kind] = fresh_process_figures(case, kind, workdir, args)
    progress(f"{case.name}: latency, {args.repeat} interleaved rounds after 2 warm-up rounds")
    errors = max_errors(run, run[EAGER]())
    medians = interleaved_medians(run, args.repeat)
    del run
    results = []
    for kind in [*ONNX_KINDS, EAGER, *FLOORS]:
        if kind in case.failures:
            results.append(Result(case.name, kind, note=case.failures[kind]))
        elif kind in medians:
            per_layer, total = case.nodes.get(kind, (NAN, NAN))
            figures = fresh.get(kind, {})
            results.append(Result(
                case.name, kind, per_layer, total, case.export_s.get(kind, NAN), figures.get("session_s", NAN),
                1e3 * medians[kind], NAN if args.no_memory else figures.get("peak_mb", NAN),
                errors.get(kind, NAN)))
    return results


# ------------------------------------------------------------------------------------------------ other runtimes


def _openvino_runner(path: pathlib.Path, x: np.ndarray, threads: int) -> tuple[Callable[[], np.ndarray], str]:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    dynamic = any(port.get_partial_shape().is_dynamic for port in model.inputs)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run_model() -> np.ndarray:
        request.infer([x])
        return request.get_output_tensor(0).data.copy()

    return run_model, "dynamic" if dynamic else "static"


def _tract_runner(path: pathlib.Path, x: np.ndarray, threads: int) -> tuple[Callable[[], np.ndarray], str]:
    import tract

    inference_model = tract.onnx().load(str(path))  # as it is: no input facts set
    dims = str(inference_model.input_fact(0)).split(",")[:-1]  # e.g. "batch,3,height,width,F32"
    runnable = inference_model.into_model().into_runnable()
    return (lambda: runnable.run([x])[0].to_numpy()), "static" if all(map(str.isdigit, dims)) else "symbolic"


_RUNTIMES = {OPENVINO: ("openvino", _openvino_runner), TRACT: ("tract", _tract_runner)}


def other_runtimes(case: Case, args: argparse.Namespace) -> list[RuntimeResult]:
    """The default lowering's network and deform_conv2d_onnx_exporter's on OpenVINO and tract."""
    x = case.inputs[0].numpy()
    with torch.inference_mode():
        reference = case.module(case.inputs[0]).numpy()
    results = []
    for runtime, (package, make_runner) in _RUNTIMES.items():
        if runtime in args.skip:
            continue
        rows = {kind: RuntimeResult(runtime, kind) for kind in (*LOWERINGS, DCOE) if kind not in args.skip}
        run: dict[str, Callable[[], np.ndarray]] = {}
        for kind, row in rows.items():
            if importlib.util.find_spec(package) is None:
                row.note = f"{package} not installed"
            elif kind not in case.onnx_paths:
                row.note = f"no model: {case.failures.get(kind, 'not exported')}"
            else:
                progress(f"{NETWORK}: {runtime}: loading {kind}")
                start = time.perf_counter()
                try:
                    run[kind], row.shapes = make_runner(case.onnx_paths[kind], x, args.threads)
                    row.load_s = time.perf_counter() - start
                    row.max_error = float(np.abs(run[kind]() - reference).max())
                except Exception as error:  # noqa: BLE001  (a runtime's refusal goes into the row)
                    run.pop(kind, None)
                    row.note = f"{type(error).__name__}: {' '.join(str(error).split())}"[:160]
                    progress(f"{NETWORK}: {runtime}: {kind}: {row.note}")
        if run:
            progress(f"{NETWORK}: {runtime}: latency, {args.repeat} interleaved rounds after 2 warm-up rounds")
            for kind, seconds in interleaved_medians(run, args.repeat).items():
                rows[kind].latency_ms = 1e3 * seconds
        del run
        results += rows.values()
    return results


# ------------------------------------------------------------------------------------------------ output


def _number(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _nodes(value: float) -> str:
    return _number(value, ".0f" if math.isfinite(value) and value == int(value) else ".1f")


TABLE_COLUMNS = ("case", "model", "nodes/layer", "nodes", "export s", "session s", "median ms", "x native",
                 "peak MB", "x native", "max abs err vs eager")
RUNTIME_COLUMNS = ("runtime", "model", "shapes", "load s", "median ms", f"x {DEFAULT}", "max abs err vs eager")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(columns: Sequence[str], text_columns: int) -> list[str]:
    return [_row(columns), _row(["---"] * text_columns + ["---:"] * (len(columns) - text_columns))]


def format_table(results: Sequence[Result]) -> str:
    """The results as a markdown table, with ratios to the native model of the same case."""
    native = {r.case: r for r in results if r.model == NATIVE and not r.note}
    lines = _header(TABLE_COLUMNS, 2)
    for r in results:
        if r.note:
            lines.append(_row([r.case, r.model, r.note] + ["-"] * (len(TABLE_COLUMNS) - 3)))
            continue
        base = native.get(r.case, Result(r.case, NATIVE))
        lines.append(_row([
            r.case, r.model, _nodes(r.nodes_per_layer), _nodes(r.nodes), _number(r.export_s, ".2f"),
            _number(r.session_s, ".3f"), _number(r.latency_ms, ".2f"), _number(r.latency_ms / base.latency_ms, ".2f"),
            _number(r.peak_mb, ".1f"), _number(r.peak_mb / base.peak_mb, ".2f"), _number(r.max_error, ".1e"),
        ]))
    return "\n".join(lines)


def format_runtime_table(results: Sequence[RuntimeResult]) -> str:
    """The other runtimes' rows, with latency ratios to the default lowering on the same runtime."""
    base = {r.runtime: r.latency_ms for r in results if r.model == DEFAULT and not r.note}
    lines = _header(RUNTIME_COLUMNS, 3)
    for r in results:
        if r.note:
            lines.append(_row([r.runtime, r.model, r.note] + ["-"] * (len(RUNTIME_COLUMNS) - 3)))
        else:
            lines.append(_row([r.runtime, r.model, r.shapes, _number(r.load_s, ".2f"), _number(r.latency_ms, ".2f"),
                               _number(r.latency_ms / base.get(r.runtime, NAN), ".2f"), _number(r.max_error, ".1e")]))
    return "\n".join(lines)


def _floor_line(case: Case, results: Sequence[Result]) -> Optional[str]:
    """The GEMM throughput and floor of a layer case, its sampling floor and both together against native
    (None for the network)."""
    latency = {r.model: r.latency_ms for r in results if r.case == case.name and not r.note}
    if GEMM not in latency:
        return None
    gemm, sampling = latency[GEMM], latency.get(SAMPLING, NAN)
    return (f"{case.name}: GEMM {case.gemm_flops / 1e9:.2f} GFLOP at {case.gemm_flops / gemm / 1e6:.0f} "
            f"GFLOP/s (onnxruntime MatMul) -> floor {gemm:.2f} ms; sampling every tap with one GridSample "
            f"{sampling:.2f} ms; both {gemm + sampling:.2f} ms = "
            f"{_number((gemm + sampling) / latency.get(NATIVE, NAN), '.2f')} x native")


def _versions() -> dict[str, str]:
    versions = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, DCOE: _dcoe_version()}
    for package in ("openvino", "tract"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def plot(results: Sequence[Result], path: pathlib.Path) -> None:
    """Bar chart of latency and peak memory (log scale) per case, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if not r.note]
    cases = list(dict.fromkeys(r.case for r in results))
    kinds = list(dict.fromkeys(r.model for r in results))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(kinds)
    panels = ((axes[0], "latency_ms", "median latency (ms)"), (axes[1], "peak_mb", "peak memory (MB)"))
    for axis, field, label in panels:
        for i, kind in enumerate(kinds):
            values = [next((getattr(r, field) for r in results if r.case == c and r.model == kind), np.nan)
                      for c in cases]
            axis.bar(np.arange(len(cases)) + i * width, values, width, label=kind)
        axis.set_xticks(np.arange(len(cases)) + width * (len(kinds) - 1) / 2, cases)
        axis.set_yscale("log")
        axis.set_ylabel(label)
    axes[0].legend(fontsize="small")
    figure.suptitle(f"deformable convolution on onnxruntime {onnxruntime.__version__} CPU")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", nargs="+", default=["L1", "L2", "L3", NETWORK],
                        choices=[*LAYERS, NETWORK], help="cases to run (default: L1 L2 L3 resnet50)")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per case (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of every latency session (onnxruntime, OpenVINO) and of torch "
                             "(default: all cores)")
    parser.add_argument("--image-size", type=int, default=224, help="square input size of the network case")
    parser.add_argument("--skip", nargs="+", default=[], choices=SKIPPABLE,
                        help="leave out deform_conv2d_onnx_exporter's models and/or the network's OpenVINO and "
                             "tract rows")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="write a bar chart to this PNG file")
    parser.add_argument("--json", type=pathlib.Path, default=None,
                        help="also write the figures to this JSON file (nothing is written by default)")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where to write the models and keep them (default: a temporary directory, removed "
                             "at the end)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-of", choices=[EAGER], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.memory_of:
        return eager_memory_worker(args)
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
    floors: list[str] = []
    for name in args.layers:
        case = network_case(workdir, args) if name == NETWORK else layer_case(name, LAYERS[name], workdir, args)
        case_results = measure(case, workdir, args)
        results += case_results
        floors += filter(None, [_floor_line(case, case_results)])
        if name == NETWORK:
            runtime_results = other_runtimes(case, args)
        progress(f"{name}: done")
    wall_s, load_after = time.perf_counter() - start, os.getloadavg()[0]
    versions = _versions()
    print(f"\n{', '.join(f'{k} {v}' for k, v in versions.items())}; {args.threads} threads, median of "
          f"{args.repeat} interleaved rounds; default lowering {DEFAULT}\n")
    print(format_table(results))
    if floors:
        print("\n" + "\n".join(floors))
    if runtime_results:
        print(f"\n{NETWORK} 1x3x{args.image_size}x{args.image_size} on other runtimes (OpenVINO CPU f32, tract):\n")
        print(format_runtime_table(runtime_results))
    if NETWORK in args.layers:
        print(f"\n{NETWORK} nodes/layer = (nodes - nodes of the same export with one node per deformable layer "
              f"+ {NETWORK_LAYERS}) / {NETWORK_LAYERS}; Constant nodes not counted; dynamo exports dynamic "
              f"(batch, height, width), {DCOE} static")
    print(f"\nbench wall time {wall_s:.0f} s; 1-min load average {load_before:.2f} at the start, {load_after:.2f} "
          f"at the end on {os.cpu_count()} cores (other busy processes distort the timings, torch eager's most)")
    if args.plot:
        plot(results, args.plot)
        print(f"chart: {args.plot}")
    if args.json:
        document = {"versions": versions, "threads": args.threads, "repeat": args.repeat,
                    "image_size": args.image_size, "wall_s": wall_s,
                    "load_average": [load_before, load_after],
                    "results": [dataclasses.asdict(r) for r in results],
                    "runtimes": [dataclasses.asdict(r) for r in runtime_results], "floors": floors}
        args.json.write_text(json.dumps(_jsonable(document), indent=1) + "\n")
        print(f"json: {args.json}")
    return 0
