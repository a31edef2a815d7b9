"""examples/web: the page a person opens (index.html) with the model its export.py writes, in headless
Chromium: it runs on WebGPU, matches torchvision on the page's own test pattern, and shows the picture."""

from __future__ import annotations

import importlib.util
import pathlib

import browser
import numpy as np
import onnx
import pytest
import torch

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "web"
#: The page's address on the harness's server: onnxruntime-web from tests/web/node_modules, the model from the
#: job's data folder.
PAGE = "examples/web/index.html?ort=/harness/node_modules/onnxruntime-web/dist/&model=/data/model.onnx"


def _export_module():
    spec = importlib.util.spec_from_file_location("web_example_export", EXAMPLE / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_page_runs_on_webgpu_matches_and_shows_the_picture(tmp_path: pathlib.Path):
    import matplotlib.image

    exporter = _export_module()
    block = exporter.export(tmp_path / "block.onnx")
    screenshot = tmp_path / "page.png"
    run = browser.run(onnx.load(tmp_path / "block.onnx"), {}, builds=("webgpu",), page=PAGE,
                      screenshot=screenshot)["webgpu"]
    assert run.error is None, run.error
    assert not run.gpu_errors, run.gpu_errors[:5]
    assert run.backend == "webgpu"  # not the fallback to wasm
    with torch.no_grad():
        expected = block.double()(torch.from_numpy(run.outputs["img"]).double()).numpy()
    np.testing.assert_allclose(run.outputs["y"], expected, rtol=1e-4, atol=1e-4)
    picture = matplotlib.image.imread(screenshot)
    assert picture.shape[0] > 256 and picture[..., :3].std() > 0.05  # the page, with two pictures on it
