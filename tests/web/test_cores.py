"""The DCNv3 and DCNv4 cores (``import dcn_onnxscript.ops``) in a real browser: exported by dynamo through each
lowering, static and dynamic sizes, run on onnxruntime-web's two WebGPU builds and wasm and compared with the
eager op in float64; the static exports keep every node on the GPU; float16 exports match as closely as
onnxruntime's CPU provider does (WebGPU skipped without ``shader-f16``). Marker ``web``."""

from __future__ import annotations

import functools
import itertools
import warnings

import browser
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from dcnv3.core_reference import CoreCase

import dcn_onnxscript.ops  # noqa: F401  (defines the ops and registers their translations)
from dcn_onnxscript.export import dcnv3 as core_exports
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.tools.bench.internimage import CoreModule

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

#: The float64 reference and a float32 browser run agree to this.
TOLERANCE = 1e-4
#: The opset of the exports: GridSample's opsets the WebGPU EPs have a kernel for (16-19).
OPSET = 17
#: A core per version, as InternImage's blocks call them (3x3, padding 1, groups of channels, offset_scale not
#: 1), at a batch of 2 and an image of no special size; dynamic exports run at another batch and size.
CORES = {version: CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), group=2, group_channels=4, offset_scale=0.5,
                                version=version), size=(9, 7), batch=2) for version in (3, 4)}
#: case id -> (version, lowering, dynamic sizes).
CASES = {f"dcnv{version}-{lowering}-{'dynamic' if dynamic else 'static'}": (version, lowering, dynamic)
         for version, lowering, dynamic in itertools.product((3, 4), ("grid_sample", "gather"), (False, True))}


def export(case: CoreCase, lowering: str, dynamic: bool, dtype=np.float32) -> onnx.ModelProto:
    """dynamo's export of ``case``'s core through ``lowering`` for inputs of ``dtype``; with ``dynamic``, the batch
    (one for all inputs) and the image sizes dynamic."""
    inputs = tuple(torch.from_numpy(a) for a in case.inputs(seed=0, dtype=dtype))
    shapes = None
    if dynamic:
        n, auto = torch.export.Dim("n"), torch.export.Dim.AUTO
        shapes = ({0: n, 1: auto, 2: auto},) * len(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(CoreModule(case.core), inputs, dynamo=True, opset_version=OPSET, verbose=False,
                                 dynamic_shapes=shapes,
                                 custom_translation_table=core_exports.translation_table(lowering)).model_proto


@functools.lru_cache(maxsize=None)
def measured(case_id: str) -> tuple[onnx.ModelProto, np.ndarray, dict[str, browser.BrowserRun]]:
    """The model, the eager op's output in float64 and the three builds' runs."""
    version, lowering, dynamic = CASES[case_id]
    case = CORES[version]
    model = export(case, lowering, dynamic)
    if dynamic:
        case = CoreCase(case.core, size=(case.size[0] + 2, case.size[1] + 3), batch=3 - case.batch)
    inputs = case.inputs(seed=1)
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a).double() for a in inputs)).numpy()
    feeds = {value.name: a for value, a in zip(model.graph.input, inputs)}
    return model, expected, browser.run(model, feeds)


@pytest.mark.parametrize("case, build", list(itertools.product(CASES, browser.BUILDS)))
def test_core_export_matches_the_eager_op_in_the_browser(case: str, build: str):
    model, expected, runs = measured(case)
    browser.assert_matches(runs[build], expected, TOLERANCE)


@pytest.mark.parametrize("case, build", [(c, b) for c in CASES for b in ("jsep", "webgpu") if not CASES[c][2]])
def test_static_core_exports_keep_every_node_on_the_gpu(case: str, build: str):
    """No node on the CPU EP (onnxruntime's verbose node placement)."""
    _, _, runs = measured(case)
    assert runs[build].error is None, runs[build].error
    assert runs[build].cpu_nodes == [], runs[build].cpu_nodes


@functools.lru_cache(maxsize=None)
def measured_float16(version: int, lowering: str) -> tuple[np.ndarray, np.ndarray, dict[str, browser.BrowserRun]]:
    """The eager op's output in float64 for float16 inputs, onnxruntime CPU's and the three builds' runs of the
    static float16 export."""
    case = CORES[version]
    model = export(case, lowering, False, np.float16)
    inputs = case.inputs(seed=1, dtype=np.float16)
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a).double() for a in inputs)).numpy()
    feeds = {value.name: a for value, a in zip(model.graph.input, inputs)}
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (cpu,) = session.run(None, feeds)
    return expected, cpu, browser.run(model, feeds)


@pytest.mark.parametrize("version, lowering, build", list(itertools.product(CORES, ("grid_sample", "gather"),
                                                                           browser.BUILDS)))
def test_float16_core_export_matches_the_eager_op_in_the_browser(version: int, lowering: str, build: str):
    expected, cpu, runs = measured_float16(version, lowering)
    browser.assert_float16_matches(runs[build], expected, cpu)
