"""Exports in a real browser: headless Chromium (SwiftShader's WebGPU adapter, no GPU needed) running
onnxruntime-web's JSEP WebGPU build, its native WebGPU EP build and wasm, compared with torchvision in
float64. The cases are generated: each exporter and opset the browser runs (dynamo 17 and 19, TorchScript
17 for grid_sample / 13 for gather), both lowerings, static and dynamic sizes, on a block (conv -> offset
and mask convs -> DCNv2 -> relu), made by our export or by ``rewrite`` from torch's native ``DeformConv``
export; plus the default opset 20 as exported and after ``rewrite --opset 19``, and a grouped block. Marker
``web`` (deselected by default): ``python -m pytest -m web tests/web``."""

from __future__ import annotations

import copy
import functools
import io
import itertools
import warnings
from typing import NamedTuple, Optional

import browser
import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torchvision

import dcn_onnxscript
from dcn_onnxscript.rewrite import rewrite
from faults import WEB, Fault

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

#: The float64 reference and a float32 browser run agree to this (float32 sampling and sums).
TOLERANCE = 1e-4
#: Export size and, for dynamic exports, the size they run at in the browser.
EXPORTED, RUN_DYNAMIC = (1, 3, 16, 16), (2, 3, 20, 18)
#: Kernel taps of the blocks' 3x3 deformable convolution.
TAPS = 9

NO_GRID_SAMPLE_20 = Fault(
    "onnxruntime-web", "1.31.1", "neither WebGPU EP (JSEP, native) has a GridSample kernel at opset 20: its nodes "
    "run on the CPU EP", requirements=WEB)


class Block(torch.nn.Module):
    """Conv 3->C, an offset/mask predictor (G offset groups, sigmoid mask), DCNv2 C->C (R conv groups), ReLU."""

    def __init__(self, channels: int = 8, groups: int = 1, offset_groups: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.predictor = torch.nn.Conv2d(channels, 3 * TAPS * offset_groups, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(channels, channels, 3, padding=1, groups=groups)
        self.split = 2 * TAPS * offset_groups
        with torch.no_grad():  # offsets of a pixel or two: samples between and outside pixels
            self.predictor.weight.mul_(4.0)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        predicted = self.predictor(x)
        offset, mask = predicted[:, :self.split], predicted[:, self.split:]
        return torch.relu(self.dcn(x, offset, torch.sigmoid(mask)))


def export(module: torch.nn.Module, exporter: str, opset: int, lowering: str, dynamic: bool,
           dtype: torch.dtype = torch.float32) -> onnx.ModelProto:
    """``module`` exported at EXPORTED by ``exporter`` ("dynamo": ``lowering`` through the translation table;
    "torchscript": its "auto", which is ``lowering`` at that opset), with dynamic batch, height and width; the
    input of ``dtype`` (the module's)."""
    img = torch.randn(*EXPORTED, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buffer = io.BytesIO()
            axes = {"img": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}} if dynamic else None
            torch.onnx.export(module, (img,), buffer, dynamo=False, opset_version=opset, input_names=["img"],
                              output_names=["y"], dynamic_axes=axes)
            return onnx.load_from_string(buffer.getvalue())
        auto = torch.export.Dim.AUTO
        return torch.onnx.export(module, (img,), dynamo=True, opset_version=opset, verbose=False,
                                 dynamic_shapes=({0: auto, 2: auto, 3: auto},) if dynamic else None,
                                 custom_translation_table=dcn_onnxscript.translation_table(lowering)).model_proto


def rewritten_to(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` as ``dcn-onnxscript rewrite --opset OPSET`` writes it."""
    return ir.to_proto(rewrite(ir.from_proto(model), opset=opset).model)


class Case(NamedTuple):
    """How a case's model is made. ``source`` "export": ``module`` exported by ``exporter`` at ``opset`` with
    ``lowering``, then, with ``rewrite_to``, ``rewrite --opset REWRITE_TO``; "native": torch's stock export of
    ONNX ``DeformConv`` (dynamo, ``opset`` 19 or later), then ``rewrite --impl LOWERING``."""

    exporter: str
    opset: int
    lowering: str
    dynamic: bool
    groups: tuple[int, int] = (1, 1)  # conv groups, offset groups
    rewrite_to: Optional[int] = None
    source: str = "export"


def _sizes(dynamic: bool) -> str:
    return "dynamic" if dynamic else "static"


#: case id -> Case: generated over the exporters and opsets the browser runs, both lowerings and static/dynamic
#: sizes, and over the sources (our export; torch's native DeformConv export rewritten); then the default
#: opset 20 as exported and rewritten to 19, and a grouped block.
CASES = {
    f"{exporter}-{opset}-{lowering}-{_sizes(dynamic)}": Case(exporter, opset, lowering, dynamic)
    for (exporter, opset), lowering, dynamic in itertools.product(
        [("dynamo", 17), ("dynamo", 19), ("torchscript", None)], ["grid_sample", "gather"], [False, True])
    for opset in [opset or (17 if lowering == "grid_sample" else 13)]
}
CASES.update({f"native-19-{_sizes(dynamic)}-rewritten-{lowering}": Case("dynamo", 19, lowering, dynamic,
                                                                        source="native")
              for lowering, dynamic in itertools.product(["grid_sample", "gather"], [False, True])})
CASES["dynamo-20-grid_sample-static"] = Case("dynamo", 20, "grid_sample", False)
CASES["dynamo-20-grid_sample-static-rewritten-19"] = Case("dynamo", 20, "grid_sample", False, rewrite_to=19)
CASES["dynamo-19-grid_sample-dynamic-grouped"] = Case("dynamo", 19, "grid_sample", True, groups=(2, 2))
CASES["dynamo-19-grid_sample-static-grouped"] = Case("dynamo", 19, "grid_sample", False, groups=(2, 2))


def model_of(case: Case, module: torch.nn.Module) -> onnx.ModelProto:
    """``module`` as ``case`` makes it (:class:`Case`)."""
    if case.source == "native":
        native = export(module, case.exporter, case.opset, "native", case.dynamic)
        assert [n.op_type for n in native.graph.node].count("DeformConv") == 1
        return ir.to_proto(rewrite(ir.from_proto(native), impl=case.lowering).model)
    model = export(module, case.exporter, case.opset, case.lowering, case.dynamic)
    return model if case.rewrite_to is None else rewritten_to(model, case.rewrite_to)


@functools.lru_cache(maxsize=None)
def measured(case: str) -> tuple[onnx.ModelProto, np.ndarray, dict[str, browser.BrowserRun]]:
    """The case's model, torchvision's output and the three builds' runs (one browser start per case)."""
    groups, offset_groups = CASES[case].groups
    module = Block(groups=groups, offset_groups=offset_groups).eval()
    model = model_of(CASES[case], module)
    dynamic = CASES[case].dynamic
    img = np.random.default_rng(0).standard_normal(RUN_DYNAMIC if dynamic else EXPORTED).astype(np.float32)
    with torch.no_grad():
        expected = copy.deepcopy(module).double()(torch.from_numpy(img).double()).numpy()
    return model, expected, browser.run(model, {model.graph.input[0].name: img})


def _placement_of_the_layer(model: onnx.ModelProto, run: browser.BrowserRun) -> list[str]:
    """Nodes placed on the CPU EP that are not shape-only (every node, "*", where all were)."""
    shape_only = browser.shape_only_nodes(model)
    return [n for n in run.cpu_nodes if browser.node_name(n) not in shape_only]


@pytest.mark.parametrize("case, build", list(itertools.product(CASES, browser.BUILDS)))
def test_export_matches_torchvision_in_the_browser(case: str, build: str):
    """Each build runs the export without a GPU error and matches torchvision in float64."""
    model, expected, runs = measured(case)
    browser.assert_matches(runs[build], expected, TOLERANCE)


def _gpu_resident(case: str, build: str) -> bool:
    """Every node stays on the GPU: the static grid_sample exports at opset 19 or below and the static gather
    exports (INT32 index math, clamped by comparisons and ``Where``, cut per tap by ``Gather``), in both builds.
    (Dynamic exports leave two shape ``Gather`` nodes of onnxruntime's own making to the CPU.)"""
    c = CASES[case]
    if c.lowering == "gather":
        return not c.dynamic
    return not c.dynamic and (c.rewrite_to or c.opset) <= 19


@pytest.mark.parametrize("case, build", [(c, b) for c in CASES for b in ("jsep", "webgpu") if _gpu_resident(c, b)])
def test_exports_keep_the_layer_on_the_gpu(case: str, build: str):
    """No node on the CPU EP (onnxruntime's verbose node placement): a fallback fails this test
    (:func:`test_grid_sample_at_opset_20_stays_on_the_gpu` shows the check seeing one)."""
    model, _, runs = measured(case)
    assert runs[build].error is None, runs[build].error
    assert runs[build].cpu_nodes == [], runs[build].cpu_nodes


@pytest.mark.parametrize("case, build", [(c, b) for c in CASES for b in ("jsep", "webgpu")
                                         if CASES[c].dynamic and (CASES[c].rewrite_to or CASES[c].opset) <= 19])
def test_dynamic_exports_leave_only_size_nodes_to_the_cpu(case: str, build: str):
    """With dynamic sizes, the CPU EP gets only nodes that compute on shapes (every input a ``Shape``'s result
    or a constant) and the two size ``Gather`` nodes onnxruntime adds itself: no node of the layer's data."""
    model, _, runs = measured(case)
    assert runs[build].error is None, runs[build].error
    names = {node.name for node in model.graph.node}
    assert "*" not in runs[build].cpu_nodes
    fallen_back = _placement_of_the_layer(model, runs[build])
    ours = [n for n in fallen_back if browser.node_name(n) in names]
    assert ours == [] and len(fallen_back) <= browser.OWN_CPU_NODES, fallen_back


@pytest.mark.parametrize("build", [pytest.param(b, marks=NO_GRID_SAMPLE_20.mark(raises=AssertionError))
                                   for b in ("jsep", "webgpu")])
def test_grid_sample_at_opset_20_stays_on_the_gpu(build: str):
    """The default export's GridSample-20 nodes on the GPU. Neither WebGPU EP of onnxruntime-web 1.31.1 has a
    kernel for it: they fall back to the CPU (correct, but with copies between CPU and GPU around each), and
    the placement check sees all of them (a strict xfail: it fails the run if the check misses one there, and
    reports the release that adds the kernel). ``rewrite --opset 19`` is the step that keeps them on the GPU
    (:func:`test_exports_keep_the_layer_on_the_gpu`)."""
    model, _, runs = measured("dynamo-20-grid_sample-static")
    fallen_back = [n for n in _placement_of_the_layer(model, runs[build]) if n.startswith("GridSample ")]
    if runs[build].error is not None or len(fallen_back) not in (0, TAPS):  # not the fault: fails, not xfails
        pytest.fail(f"{runs[build].error}; GridSample nodes on the CPU: {fallen_back}")
    assert fallen_back == [], fallen_back
