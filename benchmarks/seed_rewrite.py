"""Before and after ``rewrite`` on files written by deform_conv2d_onnx_exporter 1.2.0 (the bench's layer cases:
modulated 3x3, padding 1, bias; and the DCNv2 ResNet-50 on a 224x224 image), on onnxruntime CPU.

Models per case: the exporter's TorchScript export at ``--opsets`` (12 and 17 by default), each rewritten with
the default lowering ("auto": gather at 12, grid_sample from 16), and rewritten with ``--impl native --opset
19`` (one ONNX ``DeformConv``). With ``--fork PATH`` (a checkout of github nusu-github/deform_conv2d_onnx_exporter,
as for ``bench``), also the fork's dynamo export (opset 18) and its rewrite. Columns: node count (without
``Constant``), rewrite seconds, session creation seconds, median latency and its ratio to the file it was
rewritten from, peak memory and its ratio, and the largest difference from that file relative to max(1,
max |original|).

Latency: one process holds every model of a case and runs them in interleaved rounds (the bench's
``interleaved_medians``), ``--threads`` intra-op threads each. Peak memory: each model in a fresh process,
the bench's ``onnx_figures`` over session creation and three runs. Run from the repository root:

    python benchmarks/seed_rewrite.py --layers L1 L2 L3 resnet50 --repeat 15
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime
import torch

from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.tools.bench import cases, catalog, exports, measuring, peers


def case_of(name: str, seed: int) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The bench's layer ``name`` with its inputs, or the DCNv2 ResNet-50 of examples/dcn_resnet50.py on one
    ``--image-size`` image (the exporter writes static shapes)."""
    if name == catalog.NETWORK:
        return cases.load_example().build_model(seed), (cases.image(IMAGE_SIZE, seed),)
    torch.manual_seed(seed)
    return cases.LayerModule(catalog.LAYERS[name].channels).eval(), cases.layer_inputs(catalog.LAYERS[name], seed)


#: The ResNet-50's image size.
IMAGE_SIZE = 224


def seed_export(module: torch.nn.Module, inputs: tuple, opset: int) -> onnx.ModelProto:
    """deform_conv2d_onnx_exporter 1.2.0's TorchScript export (GatherND, as installed)."""
    buffer = io.BytesIO()
    symbolic = peers.import_dcoe().deform_conv2d_func(True, False)
    with warnings.catch_warnings(), exports._only_symbolic(symbolic, opset):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=opset,
                          input_names=["x", "offset", "mask"][:len(inputs)])
    return onnx.load_from_string(buffer.getvalue())


def fork_export(module: torch.nn.Module, inputs: tuple, checkout: pathlib.Path) -> onnx.ModelProto:
    """The fork's dynamo export (opset 18, static shapes)."""
    translation = peers.load_fork(checkout).create_deform_conv2d_custom_op()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, inputs, dynamo=True, opset_version=18, verbose=False,
                                    custom_translation_table={torch.ops.torchvision.deform_conv2d.default: translation})
    return program.model_proto


def rewritten(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, float, str]:
    """``model`` rewritten, the seconds it took, and the lowering written."""
    start = time.perf_counter()
    result = rewrite(ir.from_proto(model), **options)
    seconds = time.perf_counter() - start
    if result.notes or not result.counts:
        raise RuntimeError(f"nothing rewritten: {result.notes}")
    return ir.to_proto(result.model), seconds, ", ".join(sorted(result.lowerings))


def models(name: str, args: argparse.Namespace) -> list[tuple[str, str, onnx.ModelProto, float]]:
    """(row name, the row it was rewritten from or "", model, rewrite seconds) for case ``name``."""
    module, inputs = case_of(name, args.seed)
    sources = [(f"seed-{opset}", seed_export(module, inputs, opset)) for opset in args.opsets]
    if args.fork:
        sources.append(("fork-18", fork_export(module, inputs, args.fork)))
    rows = []
    for source, model in sources:
        rows.append((source, "", model, 0.0))
        lean, seconds, lowering = rewritten(model)
        rows.append((f"{source} rewritten ({lowering})", source, lean, seconds))
    native, seconds, _ = rewritten(sources[0][1], impl="native", opset=19)
    rows.append(("native (rewrite --impl native --opset 19)", sources[0][0], native, seconds))
    return rows


def session_seconds(path: pathlib.Path, threads: int) -> float:
    start = time.perf_counter()
    measuring.session(path, threads)
    return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace, folder: pathlib.Path) -> list[str]:
    inputs = [t.numpy() for t in case_of(name, args.seed)[1]]
    np.savez(folder / f"{name}.npz", *inputs)
    rows = models(name, args)
    paths = {}
    for index, (row, _, model, _) in enumerate(rows):
        paths[row] = folder / f"{name}_{index}.onnx"
        onnx.save(model, str(paths[row]))
    created = {row: session_seconds(path, args.threads) for row, path in paths.items()}
    run = {row: measuring.onnx_runner(path, inputs, args.threads) for row, path in paths.items()}
    outputs = {row: function() for row, function in run.items()}
    seconds = measuring.interleaved_medians(run, args.repeat)
    saved = folder / f"{name}.npz"
    peaks = {row: measuring.onnx_figures(path, saved)["peak_mb"] for row, path in paths.items()} if args.memory else {}
    lines = []
    for row, source, model, rewrite_seconds in rows:
        base = source or row
        expected = outputs[base]
        error = float(np.abs(outputs[row] - expected).max()) / max(1.0, float(np.abs(expected).max()))
        nodes = sum(node.op_type != "Constant" for node in model.graph.node)
        memory = f"{peaks[row]:.1f} | {peaks[row] / peaks[base]:.2f}" if peaks else "- | -"
        lines.append(f"| {name} | {row} | {nodes} | {rewrite_seconds:.2f} | {created[row]:.3f} | "
                     f"{1e3 * seconds[row]:.2f} | {seconds[row] / seconds[base]:.2f} | {memory} | {error:.1e} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["L1", "L2", "L3", catalog.NETWORK],
                        choices=[*catalog.LAYERS, catalog.NETWORK])
    parser.add_argument("--opsets", nargs="+", type=int, default=[12, 17])
    parser.add_argument("--fork", type=pathlib.Path, default=None, help="a checkout of the fork")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args()
    lines = ["| case | model | nodes | rewrite s | session s | median ms | x before | peak MB | x before | "
             "rel. diff vs before |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="dcn_seed_") as folder:
        for name in args.layers:
            lines += measure(name, args, pathlib.Path(folder))
            print("\n".join(lines[-1:]), file=sys.stderr, flush=True)
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, median of {args.repeat} "
          "interleaved rounds\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
