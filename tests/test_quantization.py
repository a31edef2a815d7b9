"""dcn_onnxscript.quantization: the sampling path found by structure in every export path, and int8 models
within 1.5x of the error of the same block with native ``DeformConv`` (left float by the quantizer), the
deformable layers' per-tap GEMMs float (the default) or int8.

The block (tests/blocks.py): Conv -> offset/mask predictor -> DCNv2 -> ReLU. int8 error: max |int8 - float|
/ max |float| of each model's own float output, the worst of a few inputs of the calibration's kind; 16
calibration inputs, random or smooth image-like (``blocks.images``). The generated blocks of
``blocks.INT8_BLOCKS`` (channels, offset sizes, input sizes) are marked slow.
onnxruntime runs here; NNCF runs in the venv of ``.ci/deploy`` (marked ``deploy``).
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import onnx
import pytest

import dcn_onnxscript
from blocks import INT8_BLOCKS, TAPS, DeployBlock, export, images
from dcn_onnxscript.quantization import SAMPLERS, nodes_to_exclude, quantize_static
from faults import Limitation
from runtimes import nncf_int8, run_onnxruntime

SHAPE = (1, 3, 32, 32)
CALIBRATION, EVALUATION = 16, 3
#: Our int8 error may be this many times the native DeformConv model's.
FACTOR = 1.5
#: Export paths whose structure the finder must read: both lowerings, both exporters, the rewriter.
STRUCTURES = ["dynamo-default", "dynamo-default-dynamic", "dynamo-17", "torchscript-13", "torchscript-17",
              "rewritten"]
FAST = {"dynamo-default", "torchscript-13", "rewritten"}


@functools.cache
def block() -> DeployBlock:
    return DeployBlock().eval()


@functools.cache
def _exported(name: str) -> bytes:
    if name == "rewritten":
        return dcn_onnxscript.rewrite_model(onnx.load_from_string(_exported("native"))).SerializeToString()
    return export(block(), name, SHAPE).SerializeToString()


def exported(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(_exported(name))


def _images(count: int, seed: int, kind: str = "random", shape=SHAPE) -> list[np.ndarray]:
    return images(kind, count, seed, shape)


def _layers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The Conv/MatMul nodes whose weights no graph input reaches (initializers, or computed from them), by
    name."""
    from_inputs = {i.name for i in model.graph.input}
    for node in model.graph.node:  # graph order is topological
        if from_inputs.intersection(node.input):
            from_inputs.update(node.output)
    return {n.name: n for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.input[1] not in from_inputs}


def _predictor_path(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes on a path from the offset/mask predictor's output (the Conv of 3K output channels)
    to a sampler's positions (any input of a sampler but the image), the predictor excluded."""
    weights = {i.name: i for i in model.graph.initializer}
    predictor = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights
                     and weights[n.input[1]].dims[0] == 3 * TAPS)
    reached, after = set(predictor.output), set()
    for node in model.graph.node:  # graph order is topological
        if reached.intersection(node.input) and node.op_type != "Shape":
            reached.update(node.output)
            after.add(node.name)
    needed = {name for n in model.graph.node if n.op_type in SAMPLERS for name in n.input[1:]}
    before = set()
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            needed.update(node.input)
            before.add(node.name)
    return after & before


def _per_tap_gemms(model: onnx.ModelProto) -> set[str]:
    """Names of the layers (:func:`_layers`) that read what a sampler's output reaches: the deformable layers'
    per-tap GEMMs."""
    reached = {n.output[0] for n in model.graph.node if n.op_type in SAMPLERS}
    for node in model.graph.node:  # graph order is topological
        if reached.intersection(node.input):
            reached.update(node.output)
    return {name for name, node in _layers(model).items() if node.input[0] in reached}


@pytest.mark.parametrize("gemms", ["float", "int8"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow]) for n in STRUCTURES])
def test_nodes_to_exclude_keeps_the_sampling_path_and_the_chosen_gemms(name, gemms):
    """Excluded: every sampler and every node from the predictor's output to the sampling positions, and the
    per-tap GEMMs with ``gemms="float"``. Not excluded: the other Conv/MatMul with constant weights (the stem,
    the predictor), and the per-tap GEMMs with ``gemms="int8"``."""
    model = exported(name)
    excluded = set(nodes_to_exclude(model, gemms))
    samplers = {n.name for n in model.graph.node if n.op_type in SAMPLERS}
    assert samplers and samplers <= excluded
    path = _predictor_path(model)
    assert path and path <= excluded, sorted(path - excluded)
    layers, per_tap = _layers(model), _per_tap_gemms(model)
    assert per_tap and len(layers) - len(per_tap) >= 2  # the stem and the predictor
    assert excluded & set(layers) == (per_tap if gemms == "float" else set())


def test_gemms_other_than_float_or_int8_is_a_value_error():
    with pytest.raises(ValueError, match="gemms must be 'float' or 'int8', got 'int4'"):
        nodes_to_exclude(exported("dynamo-default"), "int4")


def test_nodes_to_exclude_refuses_samples_without_a_gemm():
    """A sampler whose samples reach the output without weights is no lowering: a clear error, not a guess."""
    model = exported("dynamo-default")
    del model.graph.output[:]
    gemm = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] != model.graph.input[0].name
                and n.name not in nodes_to_exclude(exported("dynamo-default"), "int8")
                and "predictor" not in n.input[1])
    model.graph.output.append(onnx.helper.make_tensor_value_info(gemm.input[0], onnx.TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="reach the graph's output"):
        nodes_to_exclude(model)


def _error(int8: onnx.ModelProto, model: onnx.ModelProto, kind: str = "random", shape=SHAPE) -> float:
    errors = []
    for image in _images(EVALUATION, 1, kind, shape):
        expected = run_onnxruntime(model, [image])
        errors.append(float(np.abs(run_onnxruntime(int8, [image]) - expected).max() / np.abs(expected).max()))
    return max(errors)


def _ort_int8(model: onnx.ModelProto, kind: str = "random", shape=SHAPE, gemms: str = "float") -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "int8.onnx")
        name = model.graph.input[0].name
        quantize_static(model, path, [{name: image} for image in _images(CALIBRATION, 0, kind, shape)], gemms=gemms)
        return onnx.load(path)


@functools.cache
def _native_ort_error(kind: str) -> float:
    native = exported("native")
    return _error(_ort_int8(native, kind), native, kind)


@pytest.mark.parametrize("gemms", ["float", "int8"])
@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow])
                                  for n in ("dynamo-default", "torchscript-13", "torchscript-17")])
def test_onnxruntime_int8_within_native_error(name, kind, gemms):
    """``quantize_static`` (QDQ, per-channel, 7-bit weights; sampling path float): the stem and the predictor
    are int8 (their activations and weights come through DequantizeLinear), the per-tap GEMMs too where
    ``gemms="int8"`` and not otherwise, and the error is within FACTOR x the native DeformConv model's, with
    random and with smooth image-like calibration; grid_sample (dynamo, TorchScript 17) and gather
    (TorchScript 13)."""
    model = exported(name)
    int8 = _ort_int8(model, kind, gemms=gemms)
    dequantized = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.name for n in int8.graph.node if n.op_type in ("Conv", "MatMul") and n.input[0] in dequantized
                 and n.input[1] in dequantized}
    layers, per_tap = set(_layers(model)), _per_tap_gemms(model)
    assert quantized == (layers if gemms == "int8" else layers - per_tap)
    error, native = _error(int8, model, kind), _native_ort_error(kind)
    assert error <= FACTOR * native, f"int8 error {error:.3f} > {FACTOR} x native DeformConv's {native:.3f}"


#: Generated blocks (and calibrations) where the bound does not hold with ``gemms="int8"``: that quantizes one
#: layer more than native (the per-tap GEMMs' activations), and where native's own error is small that layer
#: dominates.
_OVER_BOUND = {(INT8_BLOCKS[2], "smooth")}


#: The generated cases that run by default (the rest are slow): 16 -> 32 channels at 48x40 with the gather
#: lowering, and the block over the bound with gemms="int8", in the default gemms="float".
_FAST_GENERATED = {(INT8_BLOCKS[1], "torchscript-13", "random", "int8"),
                   (INT8_BLOCKS[1], "torchscript-13", "smooth", "float"),
                   (INT8_BLOCKS[2], "dynamo-default", "smooth", "float")}


def _generated_cases():
    for block_args in INT8_BLOCKS:
        for name in ("dynamo-default", "torchscript-13"):
            for kind in ("random", "smooth"):
                for gemms in ("float", "int8"):
                    marks = [] if (block_args, name, kind, gemms) in _FAST_GENERATED else [pytest.mark.slow]
                    if gemms == "int8" and (block_args, kind) in _OVER_BOUND:
                        marks.append(Limitation("per-tap activations: 2.1x (docs/deploy.md)").mark())
                    channels, out_channels, seed = block_args[:3]
                    yield pytest.param(block_args, name, kind, gemms, marks=marks,
                                       id=f"{channels}-{out_channels}-s{seed}-{name}-{kind}-{gemms}")


@functools.cache
def _generated(block_args: tuple, name: str) -> bytes:
    channels, out_channels, seed, offset_scale, shape = block_args
    return export(DeployBlock(channels, seed, out_channels, offset_scale).eval(), name, shape).SerializeToString()


@pytest.mark.parametrize("block_args,name,kind,gemms", list(_generated_cases()))
def test_generated_blocks_int8_within_native_error(block_args, name, kind, gemms):
    """Over ``blocks.INT8_BLOCKS``: ours within FACTOR x native's error, both lowerings, both calibrations,
    the per-tap GEMMs float or int8 (but the block of ``_OVER_BOUND`` with int8 GEMMs: a strict xfail)."""
    shape = block_args[-1]
    model, native = onnx.load_from_string(_generated(block_args, name)), onnx.load_from_string(_generated(
        block_args, "native"))
    error = _error(_ort_int8(model, kind, shape, gemms), model, kind, shape)
    native_error = _error(_ort_int8(native, kind, shape), native, kind, shape)
    assert error <= FACTOR * native_error, f"int8 error {error:.3f} > {FACTOR} x native's {native_error:.3f}"


@pytest.mark.deploy
@pytest.mark.parametrize("gemms", ["float", "int8"])
@pytest.mark.parametrize("name", ["dynamo-default", "torchscript-17"])
def test_nncf_int8_within_native_error(name, gemms):
    """NNCF (ONNX backend, 7-bit weights) with ``nodes_to_exclude`` as its ignored scope: within FACTOR x the
    native DeformConv model's error under the same NNCF settings."""
    model, native = exported(name), exported("native")
    calibration = _images(CALIBRATION, seed=0)
    int8 = nncf_int8(model, calibration, nodes_to_exclude(model, gemms))
    native_int8 = nncf_int8(native, calibration, [])
    error, native_error = _error(int8, model), _error(native_int8, native)
    assert error <= FACTOR * native_error, f"int8 error {error:.3f} > {FACTOR} x native's {native_error:.3f}"
