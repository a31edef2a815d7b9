"""onnxruntime-web's JSEP upload race, on the smallest graph that shows it (``upload_race.py``; the text in
docs/known-issues.md): a strict xfail on the release where it was seen, so that a release that fixes it reports
the fix. The native WebGPU EP and wasm get it right."""

from __future__ import annotations

import functools

import browser
import numpy as np
import pytest
import upload_race

from faults import WEB, Fault

pytestmark = [pytest.mark.web, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

JSEP_UPLOAD_RACE = Fault(
    "onnxruntime-web", "1.31.1", "JSEP: an upload from the CPU (queue.writeBuffer) lands in a GPU buffer that the "
    "memory planner just took back from a kernel whose commands are not yet submitted, which then overwrites it: "
    "wrong results, no error", requirements=WEB)
#: A batch of 2 (Min(x, 2)) and sizes of no special alignment.
SHAPE = (2, 3, 5, 7)


@functools.lru_cache(maxsize=None)
def _runs() -> tuple[np.ndarray, dict[str, browser.BrowserRun]]:
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    return x, browser.run(upload_race.model(), {"x": x})


@pytest.mark.parametrize("build", [pytest.param(b, marks=JSEP_UPLOAD_RACE.mark(raises=AssertionError) if b == "jsep"
                                                else []) for b in browser.BUILDS])
def test_a_result_uploaded_from_the_cpu_is_what_the_gpu_reads(build: str):
    """y = Relu(Sigmoid(x)) + Min(x, N), with Min on the CPU EP in the WebGPU builds (JSEP has no Min kernel)."""
    x, runs = _runs()
    run = runs[build]
    if run.error is not None or run.gpu_errors:  # not the fault: fails, not xfails
        pytest.fail(f"{run.error} {run.gpu_errors[:3]}")
    if build == "jsep" and not any(n.startswith("Min ") for n in run.cpu_nodes):
        pytest.fail(f"JSEP placed Min on the GPU: the graph no longer sets off the race ({run.cpu_nodes})")
    sigmoid = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(run.outputs["y"], np.maximum(sigmoid, 0) + np.minimum(x, SHAPE[0]), rtol=1e-5,
                               atol=1e-5)
