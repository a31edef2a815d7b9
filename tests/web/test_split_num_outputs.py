"""onnxruntime-web's JSEP ``Split`` with ``num_outputs`` (opset 18) over a symbolic size, on the smallest graph that
shows it (``split_num_outputs.py``; the text in docs/known-issues.md): a strict xfail on the release where it was
seen, so that a release that fixes it reports the fix. The native WebGPU EP and wasm get it right, and so does
JSEP where the sizes are written out, as every ``Split`` of the lowerings and the standalone functions is
(``tests/lowering``)."""

from __future__ import annotations

import functools

import browser
import numpy as np
import onnx
import pytest
import split_num_outputs
from onnx import TensorProto, helper

from faults import WEB, Fault

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

JSEP_SPLIT_NUM_OUTPUTS = Fault(
    "onnxruntime-web", "1.31.1", "JSEP: Split with num_outputs fixes its part sizes at session creation from the "
    "graph's declared sizes, a symbolic size counting as 0: empty outputs, no error", requirements=WEB)
#: An odd length: the two parts differ (ONNX: the last part is the smaller).
LENGTH = 7


def _with_sizes() -> onnx.ModelProto:
    """The same split with its sizes written out (the ``split`` input, a constant), as the lowerings write it."""
    model = split_num_outputs.model()
    (node,) = model.graph.node
    node.ClearField("attribute")
    node.attribute.append(helper.make_attribute("axis", 0))
    node.input.append("sizes")
    model.graph.initializer.append(helper.make_tensor("sizes", TensorProto.INT64, [2], [4, 3]))
    return model


@functools.lru_cache(maxsize=None)
def _runs(form: str) -> tuple[np.ndarray, dict[str, browser.BrowserRun]]:
    x = np.arange(1, LENGTH + 1, dtype=np.float32)
    model = split_num_outputs.model() if form == "num_outputs" else _with_sizes()
    return x, browser.run(model, {"x": x})


def _check(run: browser.BrowserRun, x: np.ndarray) -> None:
    if run.error is not None or run.gpu_errors:  # not the fault: fails, not xfails
        pytest.fail(f"{run.error} {run.gpu_errors[:3]}")
    if run.build != "wasm" and run.cpu_nodes:
        pytest.fail(f"Split ran on the CPU EP, not the build's own kernel: {run.cpu_nodes}")
    np.testing.assert_array_equal(run.outputs["y0"], x[:4])
    np.testing.assert_array_equal(run.outputs["y1"], x[4:])


@pytest.mark.parametrize("build", [pytest.param(b, marks=JSEP_SPLIT_NUM_OUTPUTS.mark(raises=AssertionError)
                                                if b == "jsep" else []) for b in browser.BUILDS])
def test_split_by_num_outputs_of_a_symbolic_size(build: str):
    """y0, y1 = Split(x, num_outputs=2), x of symbolic length 7: (1…4), (5…7)."""
    x, runs = _runs("num_outputs")
    _check(runs[build], x)


@pytest.mark.parametrize("build", browser.BUILDS)
def test_split_by_written_sizes_of_a_symbolic_size(build: str):
    """The same split with its sizes as the ``split`` input: right on every build, JSEP included."""
    x, runs = _runs("sizes")
    _check(runs[build], x)
