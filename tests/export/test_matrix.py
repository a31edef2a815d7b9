"""The generated matrix: exporter × model context (the layer alone, inside a block, the DCNv2 ResNet-50) ×
lowering × opset × dtype × (bias, mask) variant × layer geometry × dynamic-shape spelling × runtime, every
exported model against PyTorch.

Every valid combination is generated (:func:`matrix.all_matrix_cases`). The default run (CI) takes a
pairwise-covering slice: every pair of values of two of the dimensions of ``CI_PAIRED`` occurs in it at
least once, every value of the others too (the ResNet-50 cases excepted: they are all slow). The rest is
marked ``slow`` and, under a marker expression that deselects slow tests (the default's), not even
collected: ``python -m pytest -m slow tests/export/test_matrix.py`` runs all of it.

Per case: no ``DeformConv`` is left, ``onnx.checker`` (full check) passes, the model states the requested
opset, the output keeps the dtype, and the runtime's output matches float64 PyTorch (torchvision's kernel
for the layer, the eager model otherwise) at the export's size and, for dynamic models, at other sizes;
the layer's inputs have hostile offsets (NaN, ±Inf, huge) mixed in — a crash of any runtime fails the
case. float16 runs 8 random inputs up to 64×64 (smaller on the slow float16 runtimes) and must stay within
1.5× the error of PyTorch's own float16 CPU result (torchvision's kernel for the layer); bfloat16 is checked
for export and checker only (onnxruntime's CPU provider has no bfloat16 kernels). OpenVINO runs at f32
("openvino") and at its default precision ("openvino_default", bf16 on CPUs with bf16 support: no crash,
finite, within bf16's error).
"""

from __future__ import annotations

import copy
import functools
import re

import numpy as np
import onnx
import pytest
import torch

from helpers import assert_close, default_opset, layer_reference
from matrix import (
    DTYPES,
    RESNET_SIZE,
    Export,
    all_matrix_cases,
    export_matrix_model,
    hostile,
    known_failure,
    lowering_written,
    model_inputs,
    pairwise_slice,
)
from runtimes import EXTRA_JOBS, RKNN_TOLERANCE, run_runtime

CASES = all_matrix_cases()
#: The dimensions whose every pair of values the CI slice covers; every value of the others (opset, variant,
#: geometry) occurs in it at least once. Pairs with the opset would triple the slice: the opset conversion of
#: whole models has its own tests (tests/rewrite/test_opsets.py, tests/export/test_side_effects.py).
CI_PAIRED = ("exporter", "context", "lowering", "shapes", "dtype", "runtime")
CI_SLICE = pairwise_slice([case for case in CASES if case[1] not in EXTRA_JOBS and case[0].context != "resnet50"],
                          paired=CI_PAIRED)
#: The cases of runtimes in venvs of their own, by job: LiteRT (``.ci/tflite``) and the deployment runtimes
#: (``.ci/deploy``); ``-m "tflite and not slow"`` / ``-m "deploy and not slow"`` takes a job's slice.
EXTRA_CASES = {job: [case for case in CASES if EXTRA_JOBS.get(case[1]) == job] for job in set(EXTRA_JOBS.values())}
EXTRA_SLICES = {
    "tflite": pairwise_slice(EXTRA_CASES["tflite"], paired=("exporter", "lowering", "variant", "geometry")),
    "deploy": pairwise_slice(EXTRA_CASES["deploy"], paired=("runtime", "exporter", "context", "lowering", "shapes",
                                                             "geometry")),
}
#: float64 compares at 1e-9 relative; OpenVINO computes float64 models in float32, and the grid_sample
#: lowering samples float64 layers in float32 (onnxruntime has no float64 GridSample before opset 20).
F64_TOLERANCE = {("openvino", "auto"): 1e-4, ("openvino", "gather"): 1e-4, ("openvino", "grid_sample"): 1e-4}
F64_GRID_SAMPLE = 1e-5
#: float16: our error may be this many times torchvision's float16 kernel's, plus an absolute floor.
F16_FACTOR, F16_FLOOR = 1.5, 2e-3
#: float16: random inputs per case (the last with hostile offsets), and the largest image side.
F16_INPUTS, F16_LARGEST = 8, 64
#: float16 inputs stay this small on runtimes that compute float16 slowly here: onnx.reference (a Python loop
#: per output value in GridSample) and tract (seconds per 64×64 float16 input here).
F16_SLOW_LARGEST = {"reference": 16, "tract": 16, "tract_symbolic": 16}
#: OpenVINO's default precision on this CPU is bfloat16 (8 bits of mantissa), for the sampling positions
#: too: at 32-64 pixels a position is then only known to 1/4 pixel (measured: up to 0.33 relative on 64x64
#: inputs). What this runtime mode must show is that nothing crashes and outputs are finite; the bound only
#: tells a bf16-rounded result from garbage.
BF16_TOLERANCE = 0.5


@functools.lru_cache(maxsize=32)
def exported(export: Export):
    return export_matrix_model(export)


def _params(slow: bool):
    """The matrix's cases as parameters, the slow ones only when ``slow`` (collecting every case of the
    matrix takes long; they are all deselected by the default marker expression anyway)."""
    for export, runtime in CASES:
        job = EXTRA_JOBS.get(runtime)
        chosen = EXTRA_SLICES[job] if job else CI_SLICE
        if not slow and (export, runtime) not in chosen:
            continue
        marks = [getattr(pytest.mark, job)] if job else []
        if (export, runtime) not in chosen:
            marks.append(pytest.mark.slow)
        failure = known_failure(export, runtime)
        if failure:
            marks.append(failure.mark())
        yield pytest.param(export, runtime, id=f"{export.id()}-{runtime}", marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function is test_matrix:
        slow = not re.search(r"\bnot\s+slow\b", metafunc.config.getoption("markexpr") or "")
        metafunc.parametrize("export, runtime", list(_params(slow)))


def test_matrix(export: Export, runtime: str):
    module, model = exported(export)
    assert "DeformConv" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(model) == export.opset, "the model's header must state the requested opset"
    numpy_type = DTYPES[export.dtype]
    expected_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(numpy_type)) if numpy_type else \
        onnx.TensorProto.BFLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == expected_type
    if runtime == "checker":
        return
    if export.dtype == "float16":
        _check_float16(export, module, model, runtime)
    else:
        _check_float(export, module, model, runtime)


def _sizes(export: Export, count: int, largest: int, seed: int):
    """(batch, (H, W)) of ``count`` inputs: the export's for static models, random up to ``largest``
    otherwise (at least the kernel's reach; the ResNet-50 from 32 pixels)."""
    case = export.case
    if not export.dynamic:
        return [(case.batch, RESNET_SIZE if export.context == "resnet50" else case.size)] * count
    rng = np.random.default_rng(seed)
    if export.context == "resnet50":
        low = [32, 32]
    else:
        low = [max(1, (k - 1) * d + 1 - 2 * p) for k, d, p in zip(case.kernel, case.dilation, case.padding)]
    return [(int(rng.integers(1, 3)), tuple(int(rng.integers(lo, max(lo, largest) + 1)) for lo in low))
            for _ in range(count)]


def _inputs(export: Export, batch: int, size, seed: int, attack: bool):
    inputs = model_inputs(export, seed, size=size, batch=batch)
    if attack and export.context == "layer":
        inputs[1] = hostile(inputs[1], seed)
    return inputs


def _reference(export: Export, module64: torch.nn.Module, inputs) -> np.ndarray:
    """The float64 PyTorch result: torchvision's kernel for the layer (NaN offsets read as -Inf), the
    model's eager forward otherwise."""
    if export.context == "layer":
        return layer_reference(module64, inputs)
    with torch.no_grad():
        return module64(*[torch.from_numpy(a.astype(np.float64)) for a in inputs]).numpy()


def _check_float(export: Export, module, model, runtime: str) -> None:
    module64 = copy.deepcopy(module).double()
    largest = 64 if export.context == "resnet50" else 12
    for index, (batch, size) in enumerate(_sizes(export, 2, largest, seed=5)):
        inputs = _inputs(export, batch, size, seed=10 + index, attack=index == 1)
        actual = run_runtime(runtime, model, inputs, whole_model=export.context != "layer")
        assert actual.dtype == DTYPES[export.dtype]
        expected = _reference(export, module64, inputs)
        if runtime == "openvino_default":
            assert np.isfinite(actual[np.isfinite(expected)]).all()
            assert_close(actual, expected, rtol=BF16_TOLERANCE)
        elif export.dtype == "float64":
            default = F64_GRID_SAMPLE if lowering_written(export) == "grid_sample" else 1e-9
            assert_close(actual, expected, rtol=F64_TOLERANCE.get((runtime, export.lowering), default))
        else:
            assert_close(actual, expected, rtol=RKNN_TOLERANCE if runtime == "rknn" else 1e-4)


def _check_float16(export: Export, module, model, runtime: str) -> None:
    """F16_INPUTS random inputs up to F16_LARGEST pixels (the last with hostile offsets): error ≤ F16_FACTOR ×
    PyTorch's own float16 CPU result's (torchvision's kernel) + F16_FLOOR, relative to max(1, |output|)."""
    module64 = copy.deepcopy(module).double()
    largest = F16_SLOW_LARGEST.get(runtime, F16_LARGEST)
    for index, (batch, size) in enumerate(_sizes(export, F16_INPUTS, largest, seed=7)):
        attack = index == F16_INPUTS - 1 and export.context == "layer"
        inputs = _inputs(export, batch, size, seed=100 + index, attack=attack)
        actual = run_runtime(runtime, model, inputs, whole_model=export.context != "layer")
        assert actual.dtype == np.float16
        expected = _reference(export, module64, inputs)
        finite = np.isfinite(expected)
        assert np.isfinite(actual[finite]).all(), "non-finite output where PyTorch's is finite"
        scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
        ours = float(np.abs(actual[finite].astype(np.float64) - expected[finite]).max(initial=0.0)) / scale
        if not attack:  # PyTorch's float16 kernel as the bar (torchvision's cannot take NaN offsets)
            limit = F16_FACTOR * _float16_error(module, inputs, expected, scale) + F16_FLOOR
        else:
            limit = 2e-2
        if runtime == "openvino_default":
            limit = max(limit, BF16_TOLERANCE)
        assert ours <= limit, f"input {index} {inputs[0].shape}: error {ours:.3g} > {limit:.3g}"


def _float16_error(module, inputs, expected, scale) -> float:
    with torch.no_grad():
        theirs = module(*[torch.from_numpy(a) for a in inputs]).double().numpy()
    finite = np.isfinite(expected)
    return float(np.abs(theirs[finite] - expected[finite]).max(initial=0.0)) / scale


def test_ci_slice_covers_every_value_of_every_dimension():
    """The CI slice reaches every exporter, context, lowering, opset, dtype, variant, geometry, shape
    spelling and runtime that the full matrix has (but the ResNet-50's, which are all slow, and the extra
    jobs' runtimes, whose slices reach every value of their own cases)."""
    slices = [([c for c in CASES if c[1] not in EXTRA_JOBS and c[0].context != "resnet50"], CI_SLICE),
              *((EXTRA_CASES[job], chosen) for job, chosen in EXTRA_SLICES.items())]
    for cases, chosen in slices:
        for field in ("exporter", "context", "lowering", "opset", "dtype", "variant", "geometry", "shapes"):
            assert {getattr(e, field) for e, _ in cases} == {getattr(e, field) for e, _ in chosen}, field
        assert {r for _, r in cases} == {r for _, r in chosen}
