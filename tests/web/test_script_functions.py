"""The standalone functions (``dcn_onnxscript.deform_conv2d`` and its variants, ``dcn_onnxscript.dcnv3`` and
``dcnv4``, and the ``gather`` functions) in a real browser: a model of one node calling the function, its
FunctionProto attached (onnxruntime inlines it), the weights as initializers, static or symbolic sizes, run on
onnxruntime-web's JSEP WebGPU build, its native WebGPU EP and wasm, against torchvision (the cores: the eager
op) in float64. On both WebGPU builds nothing of the layer runs on the CPU EP: only nodes that compute on
shapes. Marker ``web``."""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import browser
import numpy as np
import onnx
import pytest
import torch
from dcnv3.core_reference import CoreCase

from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.lowering.script import DOMAIN, VARIANTS, cores, function_protos
from dcn_onnxscript.lowering.script.protos import SCRIPT_OPSET
from dcn_onnxscript.tools.bench.internimage import CoreModule
from helpers import SweepCase, attributes, torchvision_reference

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

#: The float64 reference and a float32 browser run agree to this.
TOLERANCE = 1e-4
#: GridSample's opsets the WebGPU EPs have a kernel for are 16-19: the models are at the functions' own.
OPSET = SCRIPT_OPSET
#: One layer per (bias, mask) variant: conv and offset groups, strides, dilations, padding, sizes of no special
#: alignment, offsets of a pixel or two (samples between and outside pixels).
LAYERS = {
    (True, True): SweepCase(2, 4, 6, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 1.5),
    (False, True): SweepCase(1, 3, 4, 9, 8, (3, 2), (2, 1), (1, 0), (1, 2), 1, 3, True, False, 2.0),
    (True, False): SweepCase(2, 2, 4, 6, 9, (2, 3), (1, 2), (0, 1), (2, 1), 2, 1, False, True, 1.0),
    (False, False): SweepCase(1, 6, 3, 5, 7, (3, 3), (2, 2), (2, 1), (1, 1), 3, 2, False, False, 3.0),
}
#: A core per version, as InternImage's blocks call them (3x3, padding 1, offset_scale not 1).
CORES = {version: CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), group=2, group_channels=4, offset_scale=0.5,
                                version=version), size=(9, 7), batch=2) for version in (3, 4)}


class Case(NamedTuple):
    """A model calling ``function`` ("grid_sample" or "gather" with the (bias, mask) ``key``, or "dcnv3" /
    "dcnv4"), with static or symbolic sizes."""

    function: str
    key: tuple[bool, bool]
    dynamic: bool


def _name(case: Case) -> str:
    if case.function.startswith("dcnv"):
        return case.function
    return VARIANTS[case.function].name_of(case.key)


#: case id -> Case: every public function and both cores, static and symbolic sizes; the gather function with
#: bias and mask.
CASES = {f"{_name(c)}-{'dynamic' if c.dynamic else 'static'}": c for c in [
    *(Case("grid_sample", key, dynamic) for key, dynamic in itertools.product(LAYERS, (False, True))),
    *(Case(f"dcnv{version}", (False, True), dynamic) for version, dynamic in itertools.product((3, 4), (False, True))),
    *(Case("gather", (True, True), dynamic) for dynamic in (False, True)),
]}

#: The cases that run on WebGPU: not the gather functions, which compute in the inputs' type with float64
#: positions (they serve float64 models), which WebGPU cannot hold (JSEP fails to compile a shader, the native EP
#: to create the session): they run on wasm.
GPU_CASES = [c for c in CASES if CASES[c].function != "gather"]


def _model(function, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray], dynamic: bool,
           output_rank: int, **attrs) -> onnx.ModelProto:
    """One node calling ``function`` on ``inputs`` (graph inputs) and ``constants`` (initializers), in the
    function's input order; symbolic sizes with ``dynamic``."""
    names = list(function.to_function_proto().input)
    node = onnx.helper.make_node(function.name, names, ["Y"], domain=DOMAIN, **attrs)
    graph_inputs = [onnx.helper.make_tensor_value_info(
        n, onnx.TensorProto.FLOAT, [f"{n}{i}" for i in range(a.ndim)] if dynamic else list(a.shape))
        for n, a in inputs.items()]
    output = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [f"Y{i}" for i in range(output_rank)])
    graph = onnx.helper.make_graph([node], function.name, graph_inputs, [output],
                                   [onnx.numpy_helper.from_array(a, n) for n, a in constants.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET),
                                                         onnx.helper.make_opsetid(DOMAIN, 1)],
                                   functions=function_protos(function, OPSET), ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _deform_conv2d(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    layer = LAYERS[case.key]
    arrays = layer.arrays(np.random.default_rng(0))
    arrays["offset"] = arrays["offset"] + np.float32(0.25)  # not all samples on whole pixels' midpoints
    function = VARIANTS[case.function][case.key]
    names = list(function.to_function_proto().input)
    feeds = {n: arrays[n] for n in names if n in ("X", "offset", "mask")}
    model = _model(function, feeds, {n: arrays[n] for n in names if n in ("W", "B")}, case.dynamic, 4,
                   **attributes(layer))
    expected = torchvision_reference(arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if layer.use_mask
                                     else None, arrays["B"] if layer.use_bias else None, layer.stride, layer.padding,
                                     layer.dilation)
    return model, feeds, expected


def _core(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    core_case = CORES[int(case.function[-1])]
    function = getattr(cores, case.function)
    inputs = core_case.inputs(seed=1)
    feeds = dict(zip(function.to_function_proto().input, inputs))
    c = core_case.core
    model = _model(function, feeds, {}, case.dynamic, 4, kernel_h=c.kernel[0], kernel_w=c.kernel[1],
                   stride_h=c.stride[0], stride_w=c.stride[1], pad_h=c.padding[0], pad_w=c.padding[1],
                   dilation_h=c.dilation[0], dilation_w=c.dilation[1], group=c.group,
                   group_channels=c.group_channels, offset_scale=c.offset_scale, remove_center=int(c.remove_center))
    with torch.no_grad():
        expected = CoreModule(c)(*(torch.from_numpy(a).double() for a in inputs)).numpy()
    return model, feeds, expected


@functools.lru_cache(maxsize=None)
def measured(case_id: str) -> tuple[onnx.ModelProto, np.ndarray, dict[str, browser.BrowserRun]]:
    """The model, the float64 reference and the three builds' runs (one browser start per case)."""
    case = CASES[case_id]
    model, feeds, expected = (_core if case.function.startswith("dcnv") else _deform_conv2d)(case)
    return model, expected, browser.run(model, feeds, builds=browser.BUILDS if case_id in GPU_CASES else ("wasm",))


@pytest.mark.parametrize("case, build", [(c, b) for c in CASES for b in browser.BUILDS
                                         if c in GPU_CASES or b == "wasm"])
def test_standalone_function_matches_the_reference_in_the_browser(case: str, build: str):
    _, expected, runs = measured(case)
    browser.assert_matches(runs[build], expected, TOLERANCE)


def _layer_nodes_on_the_cpu(model: onnx.ModelProto, run: browser.BrowserRun) -> list[str]:
    """The nodes placed on the CPU EP that compute on more than shapes (every node, "*", where all were), other
    than ``Gather`` nodes of onnxruntime's own making (not in the model: with symbolic sizes it adds two or
    three). onnxruntime names a node it inlined from function F "_inlfunc_F_" + its name in F's body; a body
    node computes on shapes where every input is a ``Shape``'s result, a constant or computed from them (the
    body's inputs are data)."""
    (function,) = model.functions
    body = onnx.helper.make_model(onnx.helper.make_graph(list(function.node), function.name, [], []))
    prefix = f"_inlfunc_{function.name}_"
    shape_only = {prefix + name for name in browser.shape_only_nodes(body)}
    return [placed for placed in run.cpu_nodes
            if placed == "*" or (browser.node_name(placed).startswith(prefix)
                                 and browser.node_name(placed) not in shape_only)
            or not (browser.node_name(placed).startswith(prefix) or placed.startswith("Gather "))]


@pytest.mark.parametrize("case, build", [(c, b) for c in GPU_CASES for b in ("jsep", "webgpu")])
def test_standalone_function_keeps_the_layer_on_the_gpu(case: str, build: str):
    """No node of the layer on the CPU EP: only nodes whose inputs are shapes and constants."""
    model, _, runs = measured(case)
    assert runs[build].error is None, runs[build].error
    fallen_back = _layer_nodes_on_the_cpu(model, runs[build])
    assert fallen_back == [], fallen_back
