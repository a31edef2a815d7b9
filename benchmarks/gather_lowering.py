"""Latency and peak memory of the "gather" lowering against native ONNX ``DeformConv`` on onnxruntime CPU, for
the layer cases of ``python -m dcn_onnxscript bench`` (modulated 3x3, padding 1, bias, one offset group).

Models: torch's own export of the bench's layer module (native ``DeformConv``, opset 19), and that model
rewritten with ``impl="gather"`` (:func:`dcn_onnxscript.rewrite.rewrite_model`: weights folded, static sizes
known, as the exporters write the lowering); with ``--dynamic`` also the rewrite of a dynamic-size export
(batch, height and width as ``torch.export.Dim``). The node count per layer excludes ``Constant`` nodes.

Latency: one process holds every model of a case and runs them in interleaved rounds (the bench's
``interleaved_medians``: the median of ``--repeat`` rounds after two warm-up rounds), each session with
``--threads`` intra-op threads and no spinning, so that load from other processes hits all alike; ratios
are to native in the same rounds. Peak memory: each model in a fresh process (the bench's ``onnx_figures``),
the RSS high-water mark (``/proc/self/clear_refs`` + VmHWM) over session creation and three runs, with
onnxruntime's default session options. Run from the repository root:

    python benchmarks/gather_lowering.py --layers L1 L2 L3 --repeat 15
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime
import torch

import dcn_onnxscript
from dcn_onnxscript.rewrite import rewrite_model
from dcn_onnxscript.tools.bench import cases, catalog, measuring

NATIVE, GATHER, GATHER_DYNAMIC = "native", "gather", "gather (dynamic sizes)"


def export_native(layer: catalog.Layer, seed: int, dynamic: bool) -> onnx.ModelProto:
    """torch's export of the bench's layer module with native ``DeformConv`` (opset 19)."""
    torch.manual_seed(seed)
    module, inputs = cases.LayerModule(layer.channels).eval(), cases.layer_inputs(layer, seed)
    shapes = None
    if dynamic:
        n, h, w = torch.export.Dim("n"), torch.export.Dim("h", min=4), torch.export.Dim("w", min=4)
        shapes = ({0: n, 2: h, 3: w},) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, inputs, dynamo=True, verbose=False, dynamic_shapes=shapes, opset_version=19,
                                    custom_translation_table=dcn_onnxscript.translation_table("native"))
    return program.model_proto


def models(layer: catalog.Layer, seed: int, dynamic: bool) -> dict[str, onnx.ModelProto]:
    native = export_native(layer, seed, dynamic=False)
    result = {NATIVE: native, GATHER: rewrite_model(native, impl="gather")}
    if dynamic:
        result[GATHER_DYNAMIC] = rewrite_model(export_native(layer, seed, dynamic=True), impl="gather")
    return result


def measure(name: str, args: argparse.Namespace, folder: pathlib.Path) -> list[str]:
    layer = catalog.LAYERS[name]
    inputs = [t.numpy() for t in cases.layer_inputs(layer, args.seed)]
    np.savez(folder / f"{name}.npz", *inputs)
    paths, nodes = {}, {}
    for kind, model in models(layer, args.seed, args.dynamic).items():
        paths[kind] = folder / f"{name}_{kind.split()[0]}{'_dynamic' if 'dynamic' in kind else ''}.onnx"
        onnx.save(model, str(paths[kind]))
        nodes[kind] = sum(node.op_type != "Constant" for node in model.graph.node)
    run = {kind: measuring.onnx_runner(path, inputs, args.threads) for kind, path in paths.items()}
    reference = run[NATIVE]()
    errors = {kind: float(np.abs(function() - reference).max()) for kind, function in run.items()}
    seconds = measuring.interleaved_medians(run, args.repeat)
    saved = folder / f"{name}.npz"
    peaks = {k: measuring.onnx_figures(path, saved)["peak_mb"] for k, path in paths.items()} if args.memory else {}
    rows = []
    for kind in paths:
        latency = f"{1e3 * seconds[kind]:.2f} | {seconds[kind] / seconds[NATIVE]:.2f}"
        memory = f"{peaks[kind]:.1f} | {peaks[kind] / peaks[NATIVE]:.2f}" if peaks else "- | -"
        rows.append(f"| {name} | {kind} | {nodes[kind]} | {latency} | {memory} | {errors[kind]:.1e} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["L1", "L2", "L3"], choices=list(catalog.LAYERS))
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic", action="store_true", help="also the rewrite of a dynamic-size export")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args()
    lines = ["| case | model | nodes | median ms | x native | peak MB | x native | max abs err vs native |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="dcn_gather_") as folder:
        for name in args.layers:
            lines += measure(name, args, pathlib.Path(folder))
            print(lines[-1], file=sys.stderr, flush=True)
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, median of {args.repeat} "
          "interleaved rounds\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
