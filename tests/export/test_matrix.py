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

The "source" dimension (:data:`SOURCES`, ``test_rewritten_source``): files made elsewhere (torch's native
``DeformConv``, mmcv's node, deform_conv2d_onnx_exporter 1.2.0, its fork where DCN_BENCH_FORK names a
checkout) are rewritten with the export's lowering at its opset and run on the same runtimes; this package's
own exports are the cases above. The default run samples it (every value of every dimension once per
source); ``-m slow`` runs all of it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import os
import pathlib
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from dcn_onnxscript.rewrite import rewrite
from helpers import assert_close, default_opset, layer_reference
from matrix import (
    DTYPES,
    GEOMETRIES,
    RESNET_SIZE,
    VARIANTS,
    Export,
    all_matrix_cases,
    export_matrix_model,
    hostile,
    known_failure,
    lowering_written,
    model_inputs,
    model_of,
    pairwise_slice,
    valid,
    valid_export,
)
from runtimes import EXTRA_JOBS, MATRIX_RUNTIMES, RKNN_TOLERANCE, run_runtime

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


def _float_sizes(export: Export):
    """(batch, (H, W)) of the two inputs a float32 or float64 case runs at."""
    return _sizes(export, 2, 64 if export.context == "resnet50" else 12, seed=5)


def _check_float(export: Export, module, model, runtime: str) -> None:
    module64 = copy.deepcopy(module).double()
    for index, (batch, size) in enumerate(_float_sizes(export)):
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


# --------------------------------------------------------------- the "source" dimension: files made elsewhere

#: Where the file that ``rewrite`` repairs comes from (this package's own exports are the matrix above):
#: torch's native ``DeformConv`` export, the same with mmcv's node, deform_conv2d_onnx_exporter 1.2.0's
#: TorchScript export, its fork's dynamo export (from a checkout named by DCN_BENCH_FORK).
SOURCES = ("native", "mmcv", "seed", "fork")


def _source_valid(source: str, export: Export, runtime: str) -> bool:
    if source == "mmcv" and not export.case.mask:
        return False  # mmcv's DeformConv node has no bias: the modulated one stands for the masked layers
    if source == "seed" and export.opset > 17:
        return False  # the seed's TorchScript symbolic, at the TorchScript exporter's opsets it writes
    return valid(export, runtime) and runtime not in EXTRA_JOBS


#: (source, export, runtime): float32 layers and blocks with static sizes (the peers write static sizes), each
#: rewritten with the export's lowering at its opset.
SOURCE_CASES = [
    (source, export, runtime)
    for source in SOURCES
    for export in itertools.starmap(Export, itertools.product(
        ("dynamo",), ("layer", "block"), ("auto", "gather", "grid_sample"), (13, 17, 18), ("float32",), VARIANTS,
        GEOMETRIES, ("static",)))
    if valid_export(export)
    for runtime in MATRIX_RUNTIMES if _source_valid(source, export, runtime)
]
#: The default run samples the dimension: every value of every dimension once per source.
SOURCE_SLICE = {(source, *case) for source in SOURCES for case in pairwise_slice(
    [(export, runtime) for s, export, runtime in SOURCE_CASES if s == source], paired=())}


def _mmcv(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each ``DeformConv`` (with a mask) as mmcv's ``MMCVModulatedDeformConv2d``."""
    for index, node in enumerate(model.graph.node):
        if node.op_type != "DeformConv":
            continue
        X, W, offset, *rest = node.input
        B, mask = (list(rest) + ["", ""])[:2]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads = attributes.get("pads", [0, 0, 0, 0])
        mmcv = onnx.helper.make_node(
            "MMCVModulatedDeformConv2d", [X, offset, mask, W, *([B] if B else [])], list(node.output),
            domain="mmcv", stride=attributes.get("strides", [1, 1]), padding=pads[:2],
            dilation=attributes.get("dilations", [1, 1]), groups=attributes.get("group", 1),
            deform_groups=attributes.get("offset_group", 1))
        model.graph.node[index].CopyFrom(mmcv)
    model.opset_import.append(onnx.helper.make_opsetid("mmcv", 1))
    return model


def _source_file(source: str, export: Export, module: torch.nn.Module, folder) -> onnx.ModelProto:
    """The file ``source`` writes for ``module`` (the bench's export paths; see tools/bench/exports.py)."""
    from dcn_onnxscript.tools.bench import FORK_ENV, cases, catalog, exports

    fork = os.environ.get(FORK_ENV)
    if source == "fork" and not fork:
        pytest.skip(f"no checkout of the fork ({FORK_ENV})")
    kind = {"native": catalog.NATIVE, "mmcv": catalog.NATIVE, "seed": catalog.DCOE, "fork": catalog.FORK}[source]
    opset = {"seed": export.opset, "fork": catalog.FORK_OPSET}.get(source, catalog.NATIVE_OPSET)
    inputs = tuple(torch.from_numpy(a) for a in model_inputs(export, 1))
    case = cases.Case(export.id(), module, inputs)
    file = folder / "source.onnx"
    exports.export(catalog.ExportPath(source, kind, opset, None, ""), case, file, argparse.Namespace(
        fork=pathlib.Path(fork) if fork else None))
    model = onnx.load(str(file))
    return _mmcv(model) if source == "mmcv" else model


def _source_params():
    for source, export, runtime in SOURCE_CASES:
        marks = [] if (source, export, runtime) in SOURCE_SLICE else [pytest.mark.slow]
        failure = known_failure(export, runtime)
        if failure:
            marks.append(failure.mark())
        yield pytest.param(source, export, runtime, id=f"{source}-{export.id()}-{runtime}", marks=marks)


@pytest.mark.parametrize("source, export, runtime", list(_source_params()))
def test_rewritten_source(source: str, export: Export, runtime: str, tmp_path):
    """A file made elsewhere, rewritten with the export's lowering at its opset, runs on the matrix's runtime
    and matches float64 PyTorch (hostile offsets included)."""
    module = model_of(export)
    original = _source_file(source, export, module, tmp_path)
    result = rewrite(ir.from_proto(original), impl=export.lowering, opset=export.opset)
    assert sum(result.counts.values()) == 1 and not result.notes, (result.counts, result.notes)
    model = ir.to_proto(result.model)
    assert not {"DeformConv", "GatherND", "MMCVModulatedDeformConv2d"} & {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(model) == export.opset
    _check_float(export, module, model, runtime)
