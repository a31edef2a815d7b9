"""int8 post-training quantization of models that hold the lowering, against the same model with native
``DeformConv`` (which the quantizers leave float): relative error and latency, onnxruntime and NNCF.

    PYTHONPATH=$PWD python benchmarks/quantize_int8.py [--models block resnet50] [--nncf]
    PYTHONPATH=$PWD python benchmarks/quantize_int8.py --generated

``--generated``: the ratio table of docs/deploy.md instead: over the generated blocks of
``tests/blocks.py`` (``INT8_BLOCKS``), both lowerings and both exporters (dynamo: grid_sample; TorchScript 17:
grid_sample; TorchScript 13: gather), random and smooth image-like calibration, the error of
``dcn_onnxscript.quantization.quantize_static`` (its defaults) on native ``DeformConv`` and on ours, with the
per-tap GEMMs float (the default) and int8 (``gemms="int8"``), and their ratios to native.

For every model: onnxruntime's ``quantize_static`` (QDQ, per-channel, ``--calibration`` random inputs) with
nothing excluded ("plain") and with ``dcn_onnxscript.quantization.nodes_to_exclude(model, "int8")`` ("dcn":
the sampling path float, the per-tap GEMMs int8), each with and
without ``reduce_range`` (7-bit weights: on a CPU without VNNI, onnxruntime's int8 kernels otherwise
overflow 16-bit sums); native ``DeformConv`` the same way. Error: max |int8 - float| / max |float| of the
ONNX model's own float output, the worst of ``--inputs`` random inputs. ``--nncf`` also runs NNCF (ONNX
backend, its defaults, the same ignored nodes) in the venv of ``.ci/deploy``. Latency: medians of
interleaved rounds of the float and int8 sessions (2 threads), as ratios int8 / float.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import QuantFormat, quantize_static

from dcn_onnxscript.quantization import calibration_reader, nodes_to_exclude
from dcn_onnxscript.quantization import quantize_static as dcn_quantize_static

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests"))
sys.path.insert(0, str(_ROOT / "examples"))
from blocks import INT8_BLOCKS, DeployBlock, export, images  # noqa: E402
from runtimes import nncf_int8  # noqa: E402

THREADS = 1  # the machine is shared: one thread per session keeps them from thrashing
#: (quantizer, with nodes_to_exclude, 7-bit weights: onnxruntime's reduce_range, NNCF's overflow_fix="enable")
CONFIGS = [(quantizer, excludes, seven_bit) for quantizer in ("ort", "nncf") for seven_bit in (False, True)
           for excludes in (False, True)]


def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_int8(model: onnx.ModelProto, calibration: list[np.ndarray], excluded: list[str],
             seven_bit: bool) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "int8.onnx")
        # quantize_static edits a ModelProto it is given (weights to external data): hand it a copy
        copy = onnx.ModelProto.FromString(model.SerializeToString())
        quantize_static(copy, path, calibration_reader({model.graph.input[0].name: x} for x in calibration),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=seven_bit, nodes_to_exclude=excluded)
        return onnx.load(path)


def relative_error(int8: onnx.ModelProto, float_model: onnx.ModelProto, inputs: list[np.ndarray]) -> float:
    """The worst over ``inputs`` of max |int8 - float| / max |float|."""
    quantized, reference = session(int8), session(float_model)
    name = float_model.graph.input[0].name
    errors = []
    for value in inputs:
        expected = reference.run(None, {name: value})[0]
        errors.append(float(np.abs(quantized.run(None, {name: value})[0] - expected).max() / np.abs(expected).max()))
    return max(errors)


def latency_ratio(int8: onnx.ModelProto, float_model: onnx.ModelProto, value: np.ndarray,
                  rounds: int) -> tuple[float, float]:
    """(float median ms, int8 / float), the two sessions run alternately."""
    sessions = [session(float_model), session(int8)]
    name = float_model.graph.input[0].name
    for s in sessions:  # warm up: the first run allocates
        s.run(None, {name: value})
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for index, s in enumerate(sessions):
            start = time.perf_counter()
            s.run(None, {name: value})
            times[index].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    return medians[0] * 1e3, medians[1] / medians[0]


def block_models(shape) -> dict[str, onnx.ModelProto]:
    module = DeployBlock().eval()
    names = ["dynamo-default", "dynamo-default-dynamic", "torchscript-13", "torchscript-17", "native"]
    return {name: export(module, name, shape) for name in names}


def resnet_models(shape) -> dict[str, onnx.ModelProto]:
    import dcn_resnet50

    module = dcn_resnet50.build_model()
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("auto", "native"):
            path = pathlib.Path(tmp) / f"{impl}.onnx"
            dcn_resnet50.export(module, path, shape[-1], impl=impl)
            models["dynamo-default-dynamic" if impl == "auto" else "native"] = onnx.load(str(path))
    return models


MODELS: dict[str, Callable] = {"block": block_models, "resnet50": resnet_models}
#: The exports of the generated table: (name in tests/blocks.py, lowering).
GENERATED_EXPORTS = [("dynamo-default", "grid_sample"), ("torchscript-17", "grid_sample"), ("torchscript-13", "gather")]


def library_int8(model: onnx.ModelProto, calibration: list[np.ndarray], gemms: str = "float") -> onnx.ModelProto:
    """``model`` through ``dcn_onnxscript.quantization.quantize_static`` with its defaults but ``gemms``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "int8.onnx")
        name = model.graph.input[0].name
        dcn_quantize_static(model, path, [{name: x} for x in calibration], gemms=gemms)
        return onnx.load(path)


def generated_table(calibration: int, inputs: int) -> None:
    """Print one row per generated block, export and calibration kind: native's error, ours, the ratio."""
    print("| block | input | lowering | exporter | calibration | native | ours, GEMMs float | ratio "
          "| ours, GEMMs int8 | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for channels, out_channels, seed, offset_scale, shape in INT8_BLOCKS:
        module = DeployBlock(channels, seed, out_channels, offset_scale).eval()
        native = export(module, "native", shape)
        models = {name: export(module, name, shape) for name, _ in GENERATED_EXPORTS}
        for kind in ("random", "smooth"):
            calibrating, evaluating = images(kind, calibration, 0, shape), images(kind, inputs, 1, shape)
            native_error = relative_error(library_int8(native, calibrating), native, evaluating)
            for name, lowering in GENERATED_EXPORTS:
                model = models[name]
                floats = relative_error(library_int8(model, calibrating, "float"), model, evaluating)
                int8s = relative_error(library_int8(model, calibrating, "int8"), model, evaluating)
                print(f"| {channels}->{out_channels} x{offset_scale:g} seed {seed} | {shape[2]}x{shape[3]} | "
                      f"{lowering} | {name} | {kind} | {native_error:.4f} | {floats:.4f} | "
                      f"{floats / native_error:.2f} | {int8s:.4f} | {int8s / native_error:.2f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["block"], choices=list(MODELS))
    parser.add_argument("--shape", type=int, nargs=4, default=None, metavar=("N", "C", "H", "W"),
                        help="input shape (default: 1x3x64x64 for the block, 1x3x224x224 for ResNet-50)")
    parser.add_argument("--calibration", type=int, default=16, help="calibration inputs")
    parser.add_argument("--inputs", type=int, default=4, help="evaluation inputs")
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds")
    parser.add_argument("--nncf", action="store_true", help="NNCF too (needs the venv of .ci/deploy)")
    parser.add_argument("--generated", action="store_true", help="the ratio table over the generated blocks")
    args = parser.parse_args()
    if args.generated:
        generated_table(args.calibration, args.inputs)
        return 0
    for family in args.models:
        shape = tuple(args.shape or ((1, 3, 64, 64) if family == "block" else (1, 3, 224, 224)))
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal(shape).astype(np.float32) for _ in range(args.calibration)]
        inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(args.inputs)]
        print(f"== {family} at {'x'.join(map(str, shape))}: {args.calibration} calibration inputs, error = worst "
              f"of {args.inputs} inputs of max|int8 - float| / max|float|", flush=True)
        for name, model in MODELS[family](shape).items():
            excluded = nodes_to_exclude(model, "int8")  # the sampling path only: the per-tap GEMMs int8
            print(f"-- {name}: {len(model.graph.node)} nodes, {len(excluded)} kept float by nodes_to_exclude")
            for quantizer, excludes, seven_bit in CONFIGS:
                if (quantizer == "nncf" and not args.nncf) or (name == "native" and excludes):
                    continue
                label = f"{quantizer:4s} {'dcn' if excludes else 'plain':5s} {'7-bit' if seven_bit else '8-bit'}"
                try:
                    int8 = (nncf_int8(model, calibration, excluded if excludes else [],
                                      "enable" if seven_bit else "first_layer_only")
                            if quantizer == "nncf" else ort_int8(model, calibration, excluded if excludes else [],
                                                                 seven_bit))
                except RuntimeError as failure:
                    print(f"   {label} FAILED {str(failure).strip().splitlines()[-1][:200]}")
                    continue
                error = relative_error(int8, model, inputs)
                milliseconds, ratio = latency_ratio(int8, model, inputs[0], args.rounds)
                print(f"   {label} error {error:6.3f} float {milliseconds:6.1f} ms int8/float {ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
