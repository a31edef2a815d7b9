"""Exported cores on the generated matrix's runtimes of the default environment (OpenVINO, tract, OpenCV,
``onnx.reference``; onnxruntime is in the other tests): both lowerings, static and dynamic sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from core_reference import CoreCase, CoreModule
from test_core_export import export_module

import dcn_onnxscript.ops  # noqa: F401
from dcn_onnxscript.export import dcnv3 as core_exports
from dcn_onnxscript.lowering.dcnv3 import Core
from faults import Fault
from helpers import HOSTILE, assert_close
from runtimes import run_openvino, run_runtime

RUNTIMES = ("openvino", "tract", "tract_symbolic", "reference", "opencv")
#: (lowering, opset): grid_sample at its lowest opset, gather below it.
LOWERINGS = (("grid_sample", 16), ("gather", 12))
CORES = {3: CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, offset_scale=0.5, version=3), (6, 5), 2),
         4: CoreCase(Core((3, 3), (2, 1), (1, 1), (1, 1), 2, 4, remove_center=True, version=4), (7, 6), 2)}


def _valid(runtime: str, dynamic: bool) -> bool:
    """As the generated matrix: tract with concrete input facts runs static exports (it cannot unify them with
    the exporter's symbolic value_info), tract with symbolic ones dynamic exports."""
    return {"tract": not dynamic, "tract_symbolic": dynamic}.get(runtime, True)


EVERY = [p for p in itertools.product(RUNTIMES, CORES, LOWERINGS, (False, True)) if _valid(p[0], p[3])]
#: By default each runtime with two of the four (core, lowering) pairs, one of each lowering, the pairs moving
#: on from runtime to runtime; static and dynamic in turn where both are valid; every combination in the slow run.
COVERING = [(runtime, version, lowering, i % 2 == 1 if runtime not in ("tract", "tract_symbolic")
             else runtime == "tract_symbolic")
            for i, runtime in enumerate(RUNTIMES) for j, (version, lowering) in enumerate(
                itertools.product(CORES, LOWERINGS)) if (j - i) % 4 in (0, 3)]
#: onnx.reference's fault, as in the generated matrix (tests/matrix.py).
_REFERENCE_GRID_SAMPLE = Fault("onnx", "1.23.2", "onnx.reference implements only GridSample-20's mode names "
                               "(linear, cubic); GridSample-16 names the mode 'bilinear'")


def _params(params: list) -> list:
    return [pytest.param(p, id=_id(p), marks=[_REFERENCE_GRID_SAMPLE.mark()]
                         if p[0] == "reference" and p[2][0] == "grid_sample" else []) for p in params]


def _id(param) -> str:
    runtime, version, (impl, opset), dynamic = param
    return f"{runtime}-v{version}-{impl}{opset}-{'dynamic' if dynamic else 'static'}"


def _run(runtime: str, version: int, lowering, dynamic: bool) -> None:
    (impl, opset), case = lowering, CORES[version]
    inputs = case.inputs(seed=3)
    model = export_module(CoreModule(case.core), "dynamo", opset, dynamic, inputs,
                          custom_translation_table=core_exports.translation_table(impl))
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a) for a in inputs)).numpy()
    assert_close(run_runtime(runtime, model, inputs), expected.astype(np.float64), rtol=1e-4)


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
    inputs = case.inputs(seed=4)
    rng = np.random.default_rng(4)
    hostile = rng.random(inputs[1].shape) < 0.1
    if version == 4:  # offsets only: DCNv4's masks share the tensor
        P = case.core.points
        hostile &= (np.arange(inputs[1].shape[3]) % (3 * P) < 2 * P)[None, None, None, :]
    inputs[1][hostile] = rng.choice(HOSTILE, int(hostile.sum())).astype(np.float32)
    model = export_module(CoreModule(case.core), "dynamo", opset, False, inputs,
                          custom_translation_table=core_exports.translation_table(impl))
    with torch.no_grad():
        expected = CoreModule(case.core)(*(torch.from_numpy(a) for a in inputs)).numpy()
    actual = run_openvino(model, inputs, precision=None)
    assert np.isfinite(actual).all()
    assert_close(actual, expected.astype(np.float64), rtol=5e-2)
