"""float16 exports in a real browser: the block of ``test_browser.py`` (conv -> offset and mask convs -> DCNv2 ->
relu) in float16, exported by dynamo at opset 17 through each lowering with static and dynamic sizes, run with
float16 inputs and outputs. wasm runs them and matches torchvision in float64 as closely as onnxruntime's CPU
provider does; the WebGPU builds need the adapter's ``shader-f16`` feature for float16 kernels, which
SwiftShader's adapter lacks: there they are skipped, saying so (JSEP's float16 shaders then fail to compile and
its run returns garbage, with console errors; the native EP refuses to create the session). Marker ``web``."""

from __future__ import annotations

import copy
import functools
import itertools

import browser
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from test_browser import EXPORTED, RUN_DYNAMIC, Block, export

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

#: case id -> (lowering, dynamic sizes).
CASES = {f"{lowering}-{'dynamic' if dynamic else 'static'}": (lowering, dynamic)
         for lowering, dynamic in itertools.product(("grid_sample", "gather"), (False, True))}


@functools.lru_cache(maxsize=None)
def measured(case: str) -> tuple[np.ndarray, np.ndarray, dict[str, browser.BrowserRun]]:
    """torchvision's output in float64, onnxruntime CPU's in float16 and the three builds' runs."""
    lowering, dynamic = CASES[case]
    module = Block().eval()
    model = export(copy.deepcopy(module).half(), "dynamo", 17, lowering, dynamic, torch.float16)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    img = np.random.default_rng(0).standard_normal(RUN_DYNAMIC if dynamic else EXPORTED).astype(np.float16)
    with torch.no_grad():
        expected = copy.deepcopy(module).half().double()(torch.from_numpy(img).double()).numpy()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (cpu,) = session.run(None, {model.graph.input[0].name: img})
    return expected, cpu, browser.run(model, {model.graph.input[0].name: img})


@pytest.mark.parametrize("case, build", list(itertools.product(CASES, browser.BUILDS)))
def test_float16_export_matches_torchvision_in_the_browser(case: str, build: str):
    expected, cpu, runs = measured(case)
    browser.assert_float16_matches(runs[build], expected, cpu)
