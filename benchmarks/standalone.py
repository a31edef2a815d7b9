"""The standalone script functions against native ``DeformConv`` on onnxruntime CPU: nodes, latency and peak
memory per layer case of ``python -m dcn_onnxscript bench`` (L1 L2 L3: modulated 3x3, padding 1, bias).

Each function runs as a one-node model calling it (its FunctionProto attached; X, offset and mask inputs
with symbolic sizes, W and B initializers), native as one ``DeformConv`` node (opset 19) with the same
initializers. Latency: every model of a case in one process, interleaved, median of ``--repeat`` rounds
after two warm-up rounds, ``--threads`` intra-op threads, no spinning (:func:`bench.session`); per run both
the wall time and the process's CPU time (all its threads), which other processes on a shared machine
disturb less than the wall time (with spinning off, idle pool threads use none). Peak memory: a fresh
process per model, as ``bench`` measures it. Ratios are to native in the same rounds, so load from other
processes hits every model alike.

    python benchmarks/standalone.py                        # the gather and grid_sample functions
    python benchmarks/standalone.py --functions mypkg.mod:fn --layers L1
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dcn_onnxscript.lowering.script import VARIANTS, function_protos
from dcn_onnxscript.tools import bench

#: The native model's opset: the first with ``DeformConv``.
NATIVE_OPSET = 19
NATIVE = "native"


def layer_arrays(layer: bench.Layer, seed: int) -> dict[str, np.ndarray]:
    """X, offset, mask of :func:`bench.layer_inputs`, and W (C, C, 3, 3), B (C) of the layer module."""
    x, offset, mask = bench.layer_inputs(layer, seed)
    module = bench.build_layer_module(layer, seed).deform
    return {"X": x.numpy(), "W": module.weight.detach().numpy(), "offset": offset.numpy(),
            "B": module.bias.detach().numpy(), "mask": mask.numpy()}


def _model(node: onnx.NodeProto, arrays: dict[str, np.ndarray], opsets: dict[str, int],
           functions: list[onnx.FunctionProto]) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}{i}" for i in range(4)])
              for name in ("X", "offset", "mask")]
    graph = helper.make_graph(
        [node], "layer", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "O", "Ho", "Wo"])],
        [numpy_helper.from_array(arrays[name], name) for name in ("W", "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             functions=functions, ir_version=10)


def function_model(function, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A one-node model calling ``function`` (the (bias, mask) variant) with padding 1."""
    (proto,) = function_protos(function)
    node = helper.make_node(function.name, ["X", "W", "offset", "B", "mask"], ["Y"], domain=proto.domain,
                            strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, offset_group=1)
    opsets = {"": max(i.version for i in proto.opset_import if i.domain == ""), proto.domain: 1}
    return _model(node, arrays, opsets, [proto])


def native_model(arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    node = helper.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], pads=[1, 1, 1, 1])
    return _model(node, arrays, {"": NATIVE_OPSET}, [])


def interleaved_medians(run: dict[str, Callable[[], object]], repeat: int, warmup: int = 2):
    """Median wall and CPU seconds per kind over ``repeat`` rounds that run every kind once, in turn."""
    wall: dict[str, list[float]] = {kind: [] for kind in run}
    cpu: dict[str, list[float]] = {kind: [] for kind in run}
    for round_index in range(warmup + repeat):
        for kind, function in run.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            function()
            if round_index >= warmup:
                wall[kind].append(time.perf_counter() - start_wall)
                cpu[kind].append(time.process_time() - start_cpu)
    return ({kind: float(np.median(v)) for kind, v in wall.items()},
            {kind: float(np.median(v)) for kind, v in cpu.items()})


def load_function(spec: str):
    """``module:name`` -> the OnnxFunction."""
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", nargs="*", default=None,
                        help="module:name of (bias, mask) script functions (default: every lowering's)")
    parser.add_argument("--layers", nargs="*", default=["L1", "L2", "L3"], choices=sorted(bench.LAYERS))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.functions is None:
        functions = {lowering: variants[(True, True)] for lowering, variants in VARIANTS.items()}
    else:
        functions = {spec: load_function(spec) for spec in args.functions}
    for name, function in functions.items():
        (proto,) = function_protos(function)
        print(f"{name}: {len(proto.node)} nodes ({sum(n.op_type != 'Constant' for n in proto.node)} non-Constant)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        for case in args.layers:
            arrays = layer_arrays(bench.LAYERS[case], args.seed)
            models = {NATIVE: native_model(arrays), **{n: function_model(f, arrays) for n, f in functions.items()}}
            feeds = [arrays[name] for name in ("X", "offset", "mask")]
            np.savez(workdir / "inputs.npz", *feeds)
            run, peak = {}, {}
            for kind, model in models.items():
                path = workdir / f"{case}_{len(run)}.onnx"
                onnx.save(model, str(path))
                run[kind] = bench.onnx_runner(path, feeds, args.threads)
                if not args.no_memory:
                    peak[kind] = bench._worker([sys.executable, "-c", bench._ORT_WORKER, str(path),
                                                str(workdir / "inputs.npz")])["peak_mb"]
            expected = run[NATIVE]()
            errors = {kind: float(np.abs(r() - expected).max()) for kind, r in run.items()}
            wall, cpu = interleaved_medians(run, args.repeat)
            for kind in run:
                memory = "" if args.no_memory else f"  peak {peak[kind]:7.1f} MB  x{peak[kind] / peak[NATIVE]:.2f}"
                print(f"{case} {kind:24s} wall {1e3 * wall[kind]:8.2f} ms  x{wall[kind] / wall[NATIVE]:.2f}"
                      f"  cpu {1e3 * cpu[kind]:8.2f} ms  x{cpu[kind] / cpu[NATIVE]:.2f}"
                      f"{memory}  max|diff| {errors[kind]:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
