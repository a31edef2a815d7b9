"""BiRefNet in a real browser: the bench's BiRefNet (swin_v1_t, 20 DCNv2 layers, random weights; a checkout of
github ZhengPeng7/BiRefNet in ``DCN_BENCH_BIREFNET``) exported as its tutorial does (deform_conv2d_onnx_exporter
1.2.0 with the tutorial's patch, TorchScript, opset 17) at 1x3x512x512, before and after ``rewrite`` (the default
lowering at opset 17, ``grid_sample``), in headless Chromium on onnxruntime-web's JSEP WebGPU build, its native
WebGPU EP build and wasm, compared with eager PyTorch. Markers ``web`` and ``slow``:

    DCN_BENCH_BIREFNET=PATH python -m pytest -m "web and slow" tests/web/test_birefnet.py -s

(``-s`` prints the session creation and run times and the memory figures of each build: SwiftShader's are CPU
times, not GPU times.)"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile

import browser
import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.tools.bench import birefnet, cases
from dcn_onnxscript.tools.bench.catalog import Unavailable

pytestmark = [pytest.mark.web, pytest.mark.slow,
              pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing())),
              pytest.mark.skipif(not os.environ.get("DCN_BENCH_BIREFNET"),
                                 reason="no BiRefNet checkout: set DCN_BENCH_BIREFNET to a checkout of github "
                                        "ZhengPeng7/BiRefNet (as for bench --birefnet)")]

#: The tutorial's input size here (it exports at 1024; 512 keeps SwiftShader's run within minutes).
SIZE = 512
#: Seconds one build may take: SwiftShader runs the model on the CPU, minutes on a shared 2-core machine.
CASE_TIMEOUT_S = 1200
#: Largest difference from eager PyTorch relative to max(1, max |eager|): float32 through 20 deformable
#: layers and a Swin backbone, with the browser's own kernels.
TOLERANCE = 1e-3


@functools.lru_cache(maxsize=None)
def exported() -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray, np.ndarray]:
    """The tutorial's file, that file rewritten, the image and eager PyTorch's prediction (the last output)."""
    try:
        module = birefnet.build(pathlib.Path(os.environ["DCN_BENCH_BIREFNET"]), seed=0)
    except Unavailable as why:
        pytest.skip(str(why))
    image = cases.image(SIZE, seed=0)
    with torch.inference_mode():
        eager = module(image)[-1].numpy()
    with tempfile.TemporaryDirectory(prefix="dcn-birefnet-") as folder:
        file = pathlib.Path(folder) / "birefnet.onnx"
        birefnet.tutorial_export(module, image, file)
        before = onnx.load(str(file))
    result = rewrite(ir.from_proto(before))
    assert result.counts and not result.notes, result.notes
    return before, ir.to_proto(result.model), image.numpy(), eager


@functools.lru_cache(maxsize=None)
def measured(which: str, build: str) -> browser.BrowserRun:
    """``which`` ("before": the tutorial's file, "rewritten") on ``build``, in a browser of its own (so that the
    process peaks are this model's)."""
    before, after, image, _ = exported()
    model = before if which == "before" else after
    run = browser.run(model, {birefnet.TUTORIAL_NAMES[0][0]: image}, builds=(build,),
                      case_timeout_s=CASE_TIMEOUT_S)[build]
    peaks = ", ".join(f"{kind} {mb:.0f} MB" for kind, mb in sorted((run.process_peak_mb or {}).items()))
    heap = f"{run.js_heap_mb:.0f} MB" if run.js_heap_mb is not None else "-"
    print(f"\nBiRefNet {SIZE} {which} on {build}: error {run.error}; session {run.create_ms} ms, run {run.run_ms} ms; "
          f"JS heap {heap}; peak RSS {peaks}; CPU-EP nodes {len(run.cpu_nodes)}; GPU errors {len(run.gpu_errors)}")
    return run


def _relative_error(run: browser.BrowserRun, eager: np.ndarray) -> float:
    prediction = list(run.outputs.values())[-1]
    assert prediction.shape == eager.shape
    return float(np.abs(prediction - eager).max()) / max(1.0, float(np.abs(eager).max()))


@pytest.mark.parametrize("build", browser.BUILDS)
def test_rewritten_birefnet_matches_eager_in_the_browser(build: str):
    """The rewritten file runs on each build without a GPU error and matches eager PyTorch."""
    run = measured("rewritten", build)
    assert run.error is None, run.error
    assert not run.gpu_errors, run.gpu_errors[:5]
    error = _relative_error(run, exported()[3])
    print(f"BiRefNet {SIZE} rewritten on {build}: relative error {error:.1e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("build", ["jsep", "webgpu"])
def test_rewritten_birefnet_keeps_its_deformable_layers_on_the_gpu(build: str):
    """No GridSample, MatMul, Mul or Conv of the rewritten layers on the CPU EP (onnxruntime's verbose node
    placement): the grid_sample lowering at opset 17 has a kernel for each in both WebGPU builds."""
    run = measured("rewritten", build)
    assert run.error is None, run.error
    on_cpu = {node.split(" ")[0] for node in run.cpu_nodes}
    assert not on_cpu & {"GridSample", "MatMul", "Mul", "Conv", "*"}, sorted(on_cpu)


@pytest.mark.parametrize("build", browser.BUILDS)
def test_tutorial_birefnet_in_the_browser(build: str):
    """The tutorial's own file (the "before"): where it runs, it matches eager PyTorch."""
    run = measured("before", build)
    if run.error is not None:
        pytest.xfail(f"the tutorial's file fails on {build}: {run.error[:300]}")
    assert not run.gpu_errors, run.gpu_errors[:5]
    error = _relative_error(run, exported()[3])
    print(f"BiRefNet {SIZE} before on {build}: relative error {error:.1e}")
    assert error <= TOLERANCE
