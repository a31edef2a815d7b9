"""Exported cores on the generated matrix's runtimes (onnxruntime is in the other tests): those of the test venv
(OpenVINO, tract, OpenCV 5, ``onnx.reference``, MNN) by default, the deployment ones in venvs of their own
(onnxruntime's OpenVINO provider, OpenCV 4.x, the RKNN simulator, Apache TVM, tinygrad, ncnn via pnnx) under the
``deploy`` marker and LiteRT under the ``tflite`` marker, as the generated DCNv2 matrix runs them; both
lowerings, static and dynamic sizes, hostile offsets (NaN, ±Inf, huge: zero contribution) mixed in."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional

import numpy as np
import pytest
import torch
from core_reference import CoreCase
from test_core_export import export_module

import dcn_onnxscript.ops  # noqa: F401
from dcn_onnxscript.export import dcnv3 as core_exports
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.tools.bench.internimage import CoreModule
from faults import DEPLOY, RKNN, Fault, Limitation
from helpers import HOSTILE, assert_close
from runtimes import EXTRA_JOBS, RKNN_TOLERANCE, run_openvino, run_runtime

RUNTIMES = ("openvino", "tract", "tract_symbolic", "reference", "opencv", "mnn", "openvino_ep", "opencv4", "rknn",
            "tflite", "ncnn", "tvm", "tinygrad")
#: (lowering, opset): grid_sample at its lowest opset, gather below it.
LOWERINGS = (("grid_sample", 16), ("gather", 12))
CORES = {3: CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, offset_scale=0.5, version=3), (6, 5), 2),
         4: CoreCase(Core((3, 3), (2, 1), (1, 1), (1, 1), 2, 4, remove_center=True, version=4), (7, 6), 2)}


def with_hostile_offsets(case: CoreCase, inputs: list, seed: int) -> list:
    """``inputs`` (input, offset[, mask]) with a tenth of the offsets (not DCNv4's masks, which share their
    tensor) replaced by hostile values: NaN, ±Inf, huge."""
    rng = np.random.default_rng(seed)
    hostile = rng.random(inputs[1].shape) < 0.1
    if case.core.version == 4:
        P = case.core.points
        hostile &= (np.arange(inputs[1].shape[3]) % (3 * P) < 2 * P)[None, None, None, :]
    inputs[1][hostile] = rng.choice(HOSTILE, int(hostile.sum())).astype(inputs[1].dtype)
    return inputs


def _valid(runtime: str, dynamic: bool) -> bool:
    """As the generated matrix: tract with concrete input facts runs static exports (it cannot unify them with
    the exporter's symbolic value_info), tract with symbolic ones dynamic exports; OpenCV 4.x (``rewrite --for
    opencv4``), the RKNN toolkit, onnx2tf (LiteRT) and pnnx (ncnn) take static sizes only."""
    return {"tract": not dynamic, "tract_symbolic": dynamic, "opencv4": not dynamic, "rknn": not dynamic,
            "tflite": not dynamic, "ncnn": not dynamic}.get(runtime, True)


EVERY = [p for p in itertools.product(RUNTIMES, CORES, LOWERINGS, (False, True)) if _valid(p[0], p[3])]
#: Runtimes that take static sizes only (:func:`_valid`), and tract_symbolic, which takes dynamic ones only.
_ONE_KIND = ("tract", "tract_symbolic", "opencv4", "rknn", "tflite", "ncnn")
#: By default each runtime with two of the four (core, lowering) pairs, one of each lowering, the pairs moving
#: on from runtime to runtime; static and dynamic in turn where both are valid; every combination in the slow run.
COVERING = [(runtime, version, lowering, i % 2 == 1 if runtime not in _ONE_KIND else runtime == "tract_symbolic")
            for i, runtime in enumerate(RUNTIMES) for j, (version, lowering) in enumerate(
                itertools.product(CORES, LOWERINGS)) if (j - i) % 4 in (0, 3)]
#: onnx.reference's fault, as in the generated matrix (tests/matrix.py).
_REFERENCE_GRID_SAMPLE = Fault("onnx", "1.23.2", "onnx.reference implements only GridSample-20's mode names "
                               "(linear, cubic); GridSample-16 names the mode 'bilinear'")


#: MNN's fault: the grid_sample lowering's guard Where(|g| < far, g, far) moves NaN grid values out of the image;
#: MNN returns NaN for them (docs/known-issues.md).
_MNN_WHERE_NAN = Fault("MNN", "3.6.1", "Where(Less(Abs(x), 4), x, 4) returns NaN for x = NaN (ONNX: 4, Less(NaN, 4) "
                       "is false), so NaN offsets reach GridSample and the output (docs/known-issues.md)")
#: rknn-toolkit2's fault on offsets that float16, the NPU's type, cannot hold (as in the generated matrix).
_RKNN_HOSTILE_GATHER = Fault("rknn-toolkit2", "2.5.0", "the RK3588 simulator's output of DCNv4's gather lowering "
                             "holds NaN where offset_mask holds NaN, ±Inf or ±1e30 offsets (finite ones up to 6e4 "
                             "match within 7.6e-3; DCNv3's, whose masks come in a tensor of their own, match) "
                             "(docs/known-issues.md)", RKNN)


#: The deployment runtimes' faults and limitations, as in the generated matrix (tests/matrix.py).
_TINYGRAD_GRID_SAMPLE = Fault("tinygrad", "0.14.0", "the ONNX runner has no GridSample (tests/tools/test_deploy.py)",
                              DEPLOY)
_NCNN_GATHER = Limitation("the gather lowering indexes with integer ops (Greater/Equal -> Where, Cast to INT64), "
                          "which pnnx writes as torch.gt/eq/where and Tensor.to and ncnn lacks: ncnn takes "
                          "grid_sample exports (opset >= 16; docs/deploy.md)")


def _params(params: list) -> list:
    """The cases, each with its runtime's job marker (``deploy``) and its known fault."""
    return [pytest.param(p, id=_id(p), marks=_marks(p)) for p in params]


def _marks(param) -> list:
    runtime = param[0]
    marks = [getattr(pytest.mark, EXTRA_JOBS[runtime])] if runtime in EXTRA_JOBS else []
    fault = _known_fault(*param)
    return marks + [fault.mark()] if fault else marks


def _known_fault(runtime: str, version: int, lowering, dynamic: bool) -> Optional[Fault]:
    """The other projects' faults that the cases' hostile offsets meet."""
    impl = lowering[0]
    if runtime == "reference" and impl == "grid_sample":
        return _REFERENCE_GRID_SAMPLE
    if runtime == "mnn" and impl == "grid_sample":
        return _MNN_WHERE_NAN
    if runtime == "rknn" and impl == "gather" and version == 4:
        return _RKNN_HOSTILE_GATHER
    if runtime == "tinygrad" and impl == "grid_sample":
        return _TINYGRAD_GRID_SAMPLE
    if runtime == "ncnn" and impl == "gather":
        return _NCNN_GATHER
    return None


def _id(param) -> str:
    runtime, version, (impl, opset), dynamic = param
    return f"{runtime}-v{version}-{impl}{opset}-{'dynamic' if dynamic else 'static'}"


def _case(runtime: str, version: int) -> CoreCase:
    """The core case ``runtime`` runs: batch 1 for ncnn, which has no batch axis."""
    case = CORES[version]
    return dataclasses.replace(case, batch=1) if runtime == "ncnn" else case


def _run(runtime: str, version: int, lowering, dynamic: bool) -> None:
    (impl, opset), case = lowering, _case(runtime, version)
    inputs = case.inputs(seed=3)
    model = export_module(CoreModule(case.core), "dynamo", opset, dynamic, inputs,
                          custom_translation_table=core_exports.translation_table(impl))
    inputs = with_hostile_offsets(case, inputs, seed=3)
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a) for a in inputs)).numpy()
    rtol = RKNN_TOLERANCE if runtime == "rknn" else 1e-4
    assert_close(run_runtime(runtime, model, inputs), expected.astype(np.float64), rtol=rtol)


@pytest.mark.parametrize("param", _params(COVERING))
def test_exported_cores_run_on_the_runtimes(param):
    _run(*param)


@pytest.mark.slow
@pytest.mark.parametrize("param", _params([p for p in EVERY if p not in COVERING]))
def test_exported_cores_run_on_the_runtimes_in_every_combination(param):
    _run(*param)


@pytest.mark.parametrize("lowering", LOWERINGS, ids=lambda lowering: f"{lowering[0]}{lowering[1]}")
@pytest.mark.parametrize("version", CORES)
def test_exported_cores_run_on_openvino_in_its_default_precision_with_hostile_offsets(version, lowering):
    """OpenVINO's default inference precision is bf16 on a CPU that has it: the cores still give finite outputs,
    as close to the eager op's as bf16 allows, and hostile offsets (NaN, ±Inf, huge) contribute zero."""
    (impl, opset), case = lowering, CORES[version]
    inputs = with_hostile_offsets(case, case.inputs(seed=4), seed=4)
    model = export_module(CoreModule(case.core), "dynamo", opset, False, inputs,
                          custom_translation_table=core_exports.translation_table(impl))
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a) for a in inputs)).numpy()
    actual = run_openvino(model, inputs, precision=None)
    assert np.isfinite(actual).all()
    assert_close(actual, expected.astype(np.float64), rtol=5e-2)
