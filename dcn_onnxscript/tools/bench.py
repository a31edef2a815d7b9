"""``python -m dcn_onnxscript bench``: latency and peak memory of the portable graph on onnxruntime CPU,
against a native ONNX ``DeformConv`` (opset 19) and torchvision eager.

Cases: single modulated 3x3 layers (padding 1, bias, one offset group) and the DCNv2 ResNet-50 of
``examples/dcn_resnet50.py``. The portable layer model is exported with ``torch.onnx.export(dynamo=True)``
from a torchvision ``DeformConv2d``; the native one is a single ``DeformConv`` node with the same weights.

Method:

* **Latency**: one process holds every model of a case and runs them interleaved (portable, native,
  eager, GEMM, portable, native, ...), so that drift of the machine hits all alike; the median of
  ``--repeat`` rounds is reported, after two warm-up rounds. Every onnxruntime session gets
  ``--threads`` intra-op threads with spinning off (a spinning pool would steal the cores of the next
  model in the round), and torch gets the same number of threads.
* **Peak memory**: each model runs in a fresh process (this module with ``--memory-of``). After the
  imports and the inputs, the process resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and
  reads its RSS; then it creates the session (or the torch module) and runs it three times. Peak = VmHWM
  minus that RSS, i.e. weights, arena and intermediates, with onnxruntime's default memory arena and
  memory pattern. Needs Linux.
* **Floor**: the layer's GEMM, (N·Ho·Wo, C·kH·kW) x (C·kH·kW, O), run as a single onnxruntime ``MatMul``
  in the same rounds; floor = GEMM FLOPs / that MatMul's measured throughput, i.e. its median time.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper, numpy_helper
from torchvision.ops import DeformConv2d

import dcn_onnxscript  # noqa: F401  (registers the portable translation)

#: Model kinds, in the order of the rounds and the table: the default "gather" lowering (portable), the
#: "grid_sample" lowering, native DeformConv, torchvision eager; "gemm" is the floor of a layer.
PORTABLE, GRID_SAMPLE, NATIVE, EAGER, GEMM = "portable", "grid_sample", "native", "eager", "gemm floor"
#: The ONNX models of every case, in round order (the network has no grid_sample export).
ONNX_KINDS = (PORTABLE, GRID_SAMPLE, NATIVE)
#: The network case, built by examples/dcn_resnet50.py.
NETWORK = "resnet50"
_EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "dcn_resnet50.py"


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
    """What one row group of the table runs: the eager ``module`` on ``inputs`` and the ONNX files
    ``onnx_paths`` (kind -> path; the GEMM floor has its own inputs ``gemm_inputs``)."""

    name: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    onnx_paths: dict[str, pathlib.Path]
    gemm_inputs: tuple[np.ndarray, ...] = ()
    gemm_flops: float = 0.0


@dataclasses.dataclass
class Result:
    """One row of the table: median latency (ms), peak memory (MB; NaN if not measured) and the max
    absolute difference of the output from eager (NaN for the GEMM)."""

    case: str
    kind: str
    latency_ms: float
    peak_mb: float
    max_error: float


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


def native_layer_model(module: LayerModule, inputs: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """A single-node ``DeformConv`` (opset 19) model with ``module``'s weights as initializers and
    the input shapes of ``inputs`` (x, offset, mask)."""
    names = ("x", "offset", "mask")
    node = helper.make_node("DeformConv", ["x", "weight", "offset", "bias", "mask"], ["y"],
                            kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.shape)) for name, t in zip(names, inputs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(module.deform.weight.detach().numpy(), "weight"),
         numpy_helper.from_array(module.deform.bias.detach().numpy(), "bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


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


def build_layer_module(layer: Layer, seed: int) -> LayerModule:
    torch.manual_seed(seed)
    return LayerModule(layer.channels).eval()


def layer_case(name: str, layer: Layer, workdir: pathlib.Path, seed: int) -> Case:
    """Export the portable model, write the native and GEMM models; files ``workdir/{name}_*.onnx``."""
    module = build_layer_module(layer, seed)
    inputs = layer_inputs(layer, seed)
    paths = {kind: workdir / f"{name}_{kind.split()[0]}.onnx" for kind in (*ONNX_KINDS, GEMM)}
    torch.onnx.export(module, inputs, str(paths[PORTABLE]), dynamo=True, verbose=False)
    torch.onnx.export(module, inputs, str(paths[GRID_SAMPLE]), dynamo=True, verbose=False,
                      custom_translation_table=dcn_onnxscript.translation_table(impl="grid_sample"))
    onnx.save(native_layer_model(module, inputs), str(paths[NATIVE]))
    m, k, o = layer.gemm_shape()
    onnx.save(gemm_model(m, k, o, seed), str(paths[GEMM]))
    a = np.random.default_rng(seed).standard_normal((m, k), dtype=np.float32)
    return Case(name, module, inputs, paths, (a,), 2.0 * m * k * o)


def load_example() -> ModuleType:
    """``examples/dcn_resnet50.py`` as a module (it is not installed with the package)."""
    if not _EXAMPLE.exists():
        raise FileNotFoundError(f"the {NETWORK} case needs {_EXAMPLE} (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("dcn_resnet50", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def network_case(workdir: pathlib.Path, image_size: int, seed: int) -> tuple[Case, dict[str, float]]:
    """Export the DCNv2 ResNet-50 portable and native; returns the case and the export times (s)."""
    example = load_example()
    module = example.build_model(seed)
    paths = {kind: workdir / f"{NETWORK}_{kind}.onnx" for kind in (PORTABLE, NATIVE)}
    export_s = {kind: example.export(module, paths[kind], image_size, native=kind == NATIVE) for kind in paths}
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return Case(NETWORK, module, (x,), paths), export_s


def session(path: pathlib.Path, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session with ``threads`` intra-op threads, one inter-op thread and no spinning."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
    """Kind -> closure, in the order of the rounds."""
    result = {kind: onnx_runner(case.onnx_paths[kind], case.inputs, threads)
              for kind in ONNX_KINDS if kind in case.onnx_paths}
    result[EAGER] = eager_runner(case.module, case.inputs)
    if GEMM in case.onnx_paths:
        result[GEMM] = onnx_runner(case.onnx_paths[GEMM], case.gemm_inputs, threads)
    return result


def interleaved_medians(run: dict[str, Callable[[], np.ndarray]], repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per kind over ``repeat`` rounds that run every kind once, in turn."""
    times: dict[str, list[float]] = {kind: [] for kind in run}
    for round_index in range(warmup + repeat):
        for kind, function in run.items():
            start = time.perf_counter()
            function()
            if round_index >= warmup:
                times[kind].append(time.perf_counter() - start)
    return {kind: float(np.median(values)) for kind, values in times.items()}


def max_errors(run: dict[str, Callable[[], np.ndarray]]) -> dict[str, float]:
    """Max |output - eager output| of every kind but the GEMM."""
    reference = run[EAGER]()
    return {kind: float(np.abs(function() - reference).max()) for kind, function in run.items() if kind != GEMM}


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


def memory_worker(args: argparse.Namespace) -> int:
    """In a fresh process: print {"peak_mb": ...} for model kind ``args.memory_of`` of case ``args.case``."""
    torch.set_num_threads(args.threads)
    inputs = np.load(args.workdir / f"{args.case}_inputs.npz")
    arrays = [inputs[f"arr_{i}"] for i in range(len(inputs.files))]
    if args.memory_of == EAGER:
        tensors = [torch.from_numpy(a) for a in arrays]
        peak = measure_own_peak(lambda: eager_runner(eager_module(args.case, args), tensors))
    else:
        path = args.workdir / f"{args.case}_{args.memory_of}.onnx"
        peak = measure_own_peak(lambda: onnx_runner(path, arrays, args.threads))
    print(json.dumps({"peak_mb": peak}))
    return 0


def eager_module(case: str, args: argparse.Namespace) -> torch.nn.Module:
    """The eager model of ``case``, rebuilt (memory does not depend on the weights' values)."""
    if case == NETWORK:
        return load_example().build_model(args.seed)
    return build_layer_module(LAYERS[case], args.seed)


def peak_memory(case: Case, kind: str, workdir: pathlib.Path, args: argparse.Namespace) -> float:
    """Peak MB of one model of ``case``, measured by :func:`memory_worker` in a subprocess."""
    command = [sys.executable, "-m", "dcn_onnxscript", "bench", "--memory-of", kind, "--case", case.name,
               "--workdir", str(workdir), "--threads", str(args.threads), "--seed", str(args.seed)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])["peak_mb"]


def measure(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> list[Result]:
    """Latency, peak memory and max error of every model of ``case``."""
    np.savez(workdir / f"{case.name}_inputs.npz", *[t.numpy() for t in case.inputs])
    run = runners(case, args.threads)
    errors = max_errors(run)
    medians = interleaved_medians(run, args.repeat)
    return [
        Result(case.name, kind, 1e3 * medians[kind],
               float("nan") if kind == GEMM or args.no_memory else peak_memory(case, kind, workdir, args),
               errors.get(kind, float("nan")))
        for kind in run
    ]


def format_table(results: Sequence[Result]) -> str:
    """The results as a markdown table, with ratios to the native model of the same case."""
    native = {r.case: r for r in results if r.kind == NATIVE}
    lines = ["| case | model | median ms | x native | peak MB | x native | max abs err vs eager |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        base = native[r.case]
        lines.append(f"| {r.case} | {r.kind} | {r.latency_ms:.2f} | {r.latency_ms / base.latency_ms:.2f} | "
                     f"{_number(r.peak_mb, '.1f')} | {_number(r.peak_mb / base.peak_mb, '.2f')} | "
                     f"{_number(r.max_error, '.1e')} |")
    return "\n".join(lines)


def _number(value: float, spec: str) -> str:
    return "-" if np.isnan(value) else format(value, spec)


def plot(results: Sequence[Result], path: pathlib.Path) -> None:
    """Bar chart of latency and peak memory (log scale) per case, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in results))
    kinds = list(dict.fromkeys(r.kind for r in results))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(kinds)
    for axis, field, label in ((axes[0], "latency_ms", "median latency (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for i, kind in enumerate(kinds):
            values = [next((getattr(r, field) for r in results if r.case == c and r.kind == kind), np.nan) for c in cases]
            axis.bar(np.arange(len(cases)) + i * width, values, width, label=kind)
        axis.set_xticks(np.arange(len(cases)) + width * (len(kinds) - 1) / 2, cases)
        axis.set_yscale("log")
        axis.set_ylabel(label)
    axes[0].legend()
    figure.suptitle(f"deformable convolution on onnxruntime {onnxruntime.__version__} CPU")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", nargs="+", default=["L1", "L2", "L3", NETWORK],
                        choices=[*LAYERS, NETWORK], help="cases to run (default: L1 L2 L3 resnet50)")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per case (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of every onnxruntime session and of torch (default: all cores)")
    parser.add_argument("--image-size", type=int, default=224, help="square input size of the network case")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="write a bar chart to this PNG file")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where to write the models (default: a temporary directory)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-of", choices=[*ONNX_KINDS, EAGER], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.memory_of:
        return memory_worker(args)
    torch.set_num_threads(args.threads)
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="dcn_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    export_s: dict[str, float] = {}
    for name in args.layers:
        if name == NETWORK:
            case, export_s = network_case(workdir, args.image_size, args.seed)
        else:
            case = layer_case(name, LAYERS[name], workdir, args.seed)
        case_results = measure(case, workdir, args)
        results += case_results
        _print_floor(case, case_results)
    print(f"\nonnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"median of {args.repeat} interleaved rounds; models in {workdir}\n")
    print(format_table(results))
    for kind, seconds in export_s.items():
        print(f"\n{NETWORK} export time ({kind}, 1x3x{args.image_size}x{args.image_size}): {seconds:.1f} s", end="")
    print()
    if args.plot:
        plot(results, args.plot)
        print(f"chart: {args.plot}")
    return 0


def _print_floor(case: Case, results: Sequence[Result]) -> None:
    """Print the GEMM throughput and floor of a layer case (nothing for the network)."""
    gemm = next((r for r in results if r.kind == GEMM), None)
    if gemm is not None:
        print(f"{case.name}: GEMM {case.gemm_flops / 1e9:.2f} GFLOP at {case.gemm_flops / gemm.latency_ms / 1e6:.0f} "
              f"GFLOP/s (onnxruntime MatMul) -> floor {gemm.latency_ms:.2f} ms", flush=True)
