"""The cores through ``torch.onnx.export`` (dynamo and TorchScript, static and dynamic sizes, opsets from 12)
against the eager op on onnxruntime; the exported models hold standard ONNX ops only."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import pytest
import torch
from core_reference import CoreCase, generated_cases

import dcn_onnxscript.ops  # noqa: F401  (defines the ops and registers their translations)
from dcn_onnxscript.export import dcnv3 as core_exports
from dcn_onnxscript.export import registration
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.lowering.dcnv3_grid_sample import parts
from dcn_onnxscript.lowering.emitter import STORAGE_BUFFERS
from dcn_onnxscript.tools.bench.internimage import CoreModule
from helpers import assert_close
from runtimes import run_onnxruntime

EXPORTERS = ("dynamo", "torchscript")
OPSETS = (12, 16, 18)


def export(case: CoreCase, exporter: str, opset: int, dynamic: bool, inputs, **kwargs) -> onnx.ModelProto:
    """``torch.onnx.export`` of one core call; with ``dynamic``, batch and image sizes dynamic."""
    return export_module(CoreModule(case.core), exporter, opset, dynamic, inputs, **kwargs)


def export_module(module: torch.nn.Module, exporter: str, opset: int, dynamic: bool, inputs, **kwargs
                  ) -> onnx.ModelProto:
    """``torch.onnx.export`` of ``module`` whose inputs are (N, H, W, C) tensors ``inputs``; with ``dynamic``,
    their first three sizes dynamic (one batch size for all)."""
    args = tuple(torch.from_numpy(a) for a in inputs)
    names = ["input", "offset", "mask"][:len(args)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = None
            if dynamic:
                n = torch.export.Dim("n")
                shapes = ({0: n, 1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},
                          *({0: n, 1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},) * (len(args) - 1))
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                        dynamic_shapes=shapes, verbose=False, **kwargs)
            return program.model_proto
        buffer = io.BytesIO()
        axes = {name: {0: "n", 1: f"{name}_h", 2: f"{name}_w"} for name in names} if dynamic else None
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                          input_names=names, dynamic_axes=axes)
        return onnx.load_from_string(buffer.getvalue())


def _eager(case: CoreCase, inputs) -> np.ndarray:
    with torch.no_grad():
        return CoreModule(case.core)(*(torch.from_numpy(a) for a in inputs)).numpy()


def _check(case: CoreCase, exporter: str, opset: int, dynamic: bool, dtype=np.float32, rtol: float = 1e-4) -> None:
    inputs = case.inputs(seed=9, dtype=dtype)
    model = export(case, exporter, opset, dynamic, inputs)
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
    assert_close(run_onnxruntime(model, inputs), _eager(case, inputs).astype(np.float64), rtol=rtol)
    if dynamic:  # another batch and image size through the same model
        other = CoreCase(case.core, size=(case.size[0] + 2, case.size[1] + 1), batch=3 - case.batch)
        inputs = other.inputs(seed=10, dtype=dtype)
        assert_close(run_onnxruntime(model, inputs), _eager(other, inputs).astype(np.float64), rtol=rtol)


def _covering(cases: list[CoreCase]) -> list[tuple]:
    """Each case with one exporter, opset and static/dynamic, cycling through all their combinations."""
    combos = list(itertools.product(EXPORTERS, OPSETS, (False, True)))
    return [(case, *combos[i % len(combos)]) for i, case in enumerate(cases)]


def _id(param) -> str:
    case, exporter, opset, dynamic = param
    return f"{case}-{exporter}-{opset}-{'dynamic' if dynamic else 'static'}"


def _exportable(cases: list[CoreCase]) -> list[CoreCase]:
    """Cases that a dynamic export can grow: sizes of at least 2 (torch.export specialises sizes 0 and 1)."""
    return [c for c in cases if min(c.size) >= 2 and c.batch == 2] + [c for c in cases if c.batch == 1][:2]


CASES = _covering(_exportable(generated_cases(24, version=3, seed=21))[:6]
                  + _exportable(generated_cases(24, version=4, seed=22))[:6])
SLOW_CASES = _covering(_exportable(generated_cases(60, version=3, seed=221))
                       + _exportable(generated_cases(60, version=4, seed=222)))


@pytest.mark.parametrize("param", CASES, ids=_id)
def test_export_matches_the_eager_op(param):
    case, exporter, opset, dynamic = param
    _check(case, exporter, opset, dynamic and min(case.size) >= 2 and case.batch == 2)


@pytest.mark.slow
@pytest.mark.parametrize("param", SLOW_CASES, ids=_id)
def test_export_matches_the_eager_op_on_the_full_matrix(param):
    case, exporter, opset, dynamic = param
    _check(case, exporter, opset, dynamic and min(case.size) >= 2 and case.batch == 2)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("version", [3, 4])
def test_float16_export_matches_the_eager_op(exporter, version):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, offset_scale=0.5, version=version), (6, 5), 2)
    _check(case, exporter, 18, dynamic=False, dtype=np.float16, rtol=5e-3)


#: What a lowering reads its sizes with at run time: none of them in a static export.
SIZE_OPS = {"Shape", "Slice", "ConstantOfShape", "CumSum"}


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
@pytest.mark.parametrize("version", [3, 4])
def test_static_dynamo_export_writes_its_sizes_as_constants(impl, version):
    """The placeholder carries the core's static shapes to the lowering: no size is read at run time; the
    grid_sample lowering samples whole groups (the centre left out: eight points per group) and sums them per
    group with no product, and no node needs more than WebGPU's storage buffers."""
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, remove_center=True, version=version), (6, 5), 2)
    inputs = case.inputs(seed=2)
    model = export(case, "dynamo", 18, False, inputs, custom_translation_table=core_exports.translation_table(impl))
    ops = [node.op_type for node in model.graph.node]
    assert not SIZE_OPS & set(ops)
    if impl == "grid_sample":
        assert "Conv" not in ops and "MatMul" not in ops
        chunks, runs = parts(case.core)
        # the core's (Δx, Δy) pairs are GridSample's order: no pairwise swap, only the chunks' sums are joined
        assert ops.count("Concat") == (len(chunks) > 1)
        assert ops.count("GridSample") == len(chunks) * len(runs)
    assert all(len([i for i in node.input if i]) + len(node.output) <= STORAGE_BUFFERS for node in model.graph.node)
    assert_close(run_onnxruntime(model, inputs), _eager(case, inputs).astype(np.float64), rtol=1e-4)


#: Nodes (Constant nodes not counted) of a static 3x3 core of 4 groups exported by dynamo at opset 18, per lowering
#: and version: grid_sample reads the core's layouts as they are (DCNv4 cuts its padded offset_mask and splits it
#: into offsets and masks) and samples two chunks of two groups; gather is the layout steps (Transposes, the channel
#: Gathers) around the deform_conv2d lowering.
CORE_NODE_BUDGET = {("grid_sample", 3): 31, ("grid_sample", 4): 33, ("gather", 3): 195, ("gather", 4): 194}


@pytest.mark.parametrize("impl, version", sorted(CORE_NODE_BUDGET))
def test_a_static_core_stays_within_its_node_budget(impl, version):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 4, 2, version=version), (6, 6), 1)
    inputs = case.inputs(seed=3)
    model = export(case, "dynamo", 18, False, inputs, custom_translation_table=core_exports.translation_table(impl))
    assert sum(node.op_type != "Constant" for node in model.graph.node) <= CORE_NODE_BUDGET[impl, version]


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_translation_table_exports_through_the_lowering_asked_for(impl):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 2, version=3), (5, 5), 1)
    inputs = case.inputs(seed=1)
    model = export(case, "dynamo", 18, False, inputs, custom_translation_table=core_exports.translation_table(impl))
    ops = {node.op_type for node in model.graph.node}
    assert ("GridSample" in ops) == (impl == "grid_sample")
    assert_close(run_onnxruntime(model, inputs), _eager(case, inputs).astype(np.float64), rtol=1e-4)


def test_unregister_and_register_remove_and_restore_the_core_translations():
    registration.unregister()
    try:
        assert not any(registration._internals.current_translation(name) in
                       core_exports._TRANSLATIONS["auto"].values() for name in core_exports.QUALIFIED_NAMES.values())
    finally:
        registration.register()
    for version, name in core_exports.QUALIFIED_NAMES.items():
        assert registration._internals.current_translation(name) is core_exports._TRANSLATIONS["auto"][version]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bad_arguments_are_value_errors_at_export(exporter):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 4, version=3), (5, 5), 1)
    input, offset, mask = case.inputs()
    with pytest.raises(Exception) as info:
        export(case, exporter, 18, False, [input, offset[..., :-2], mask])
    causes, error = [], info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ValueError) and "offset dimension 3 must be 36" in str(e) for e in causes), causes


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_bfloat16_is_a_value_error_at_export(exporter):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 2, version=4), (4, 4), 1)
    args = tuple(torch.from_numpy(a).to(torch.bfloat16) for a in case.inputs())
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CoreModule(case.core), args, io.BytesIO() if exporter == "torchscript" else None,
                          dynamo=exporter == "dynamo", opset_version=18)
    causes, error = [], info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ValueError) and "float16, float32 or float64" in str(e) for e in causes), causes
