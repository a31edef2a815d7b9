"""Tests of :mod:`dcn_onnxscript.rewrite.own`: ``rewrite --impl native`` on files this package exported, over
the generated export matrix (exporter × lowering × opset × layer geometry × bias/mask variant × static or
dynamic sizes × a lone layer or a block around it, float32 and float16), also after onnxsim and onnxslim: each
layer becomes one ONNX ``DeformConv`` of the layer's type and the file computes what it computed before, on
onnxruntime; a float16 layer inside a float32 model becomes a float32 ``DeformConv`` between Casts.
Look-alikes (samplers that are not a deformable convolution) are left alone; the other lowerings leave this
package's files as they are."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torchvision

from dcn_onnxscript.__main__ import main
from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.rewrite.own import OWN_KIND
from helpers import GRAPH_TOOLS, assert_close
from matrix import DTYPES, GEOMETRIES, VARIANTS, Export, export_matrix_model, model_inputs, pairwise_slice, valid_export
from runtimes import run_onnxruntime

#: The first opset with ONNX DeformConv: what "native" writes at least.
NATIVE_OPSET = 19
#: Opsets of the exports: gather ("auto" below 16), grid_sample, the last before DeformConv, GridSample-20.
OPSETS = (13, 17, 18, 20)


#: The tolerance of float16 files: what the proof allows them (rounding to float16 is 5e-4 relative).
FLOAT16_RTOL = 1e-2


def own_cases(dtype: str) -> list[Export]:
    """Every meaningful export of a lone layer or a block in ``dtype``, static or dynamic."""
    values = itertools.product(("dynamo", "torchscript"), ("layer", "block"), ("auto", "gather", "grid_sample"),
                               OPSETS, (dtype,), VARIANTS, GEOMETRIES, ("static", "dims", "dynamic_axes"))
    return [export for export in itertools.starmap(Export, values) if valid_export(export)]


def pairwise(cases: list[Export], paired: tuple[str, ...] | None = None) -> set[Export]:
    """Cases holding every pair of values of the ``paired`` dimensions (default: of all), every value of each."""
    return {export for export, _ in pairwise_slice([(export, "onnxruntime") for export in cases], paired=paired)}


CASES = own_cases("float32")
#: The default run: every pair of exporter, lowering, opset, geometry and sizes; the rest under -m slow.
DEFAULT = pairwise(CASES, paired=("exporter", "lowering", "opset", "geometry", "shapes"))
#: float16 files: every pair of dimensions (under -m slow); by default, every value of each dimension, the
#: cheapest cases preferred (lone layers, then TorchScript exports: the dynamo exporter takes longer).
FLOAT16_CASES = sorted(pairwise(own_cases("float16")), key=Export.id)
FLOAT16_DEFAULT = pairwise(sorted(FLOAT16_CASES, key=lambda e: (e.context != "layer", e.exporter != "torchscript")),
                           paired=())


def rewritten_natively(model: onnx.ModelProto):
    """``rewrite --impl native`` at opset 19 (or the file's, if later)."""
    opset = max(NATIVE_OPSET, next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    return rewrite(ir.from_proto(model), impl="native", opset=opset)


def assert_one_deform_conv_computing_the_same(export: Export, model: onnx.ModelProto) -> None:
    """One DeformConv (in the layer's own type) in the layer's place, which computes what it computed."""
    result = rewritten_natively(model)
    assert not result.notes, result.notes
    assert dict(result.counts) == {OWN_KIND: 1}
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("DeformConv") == 1 and "GridSample" not in ops, ops
    if export.context == "layer":
        assert ops == ["DeformConv"]
    deform_conv = next(node for node in proto.graph.node if node.op_type == "DeformConv")
    layer_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[export.dtype]))
    assert elem_types(proto)[deform_conv.output[0]] == layer_type
    rtol = FLOAT16_RTOL if export.dtype == "float16" else 1e-4
    sizes = [None] + ([(11, 13)] if export.dynamic else [])
    for seed, size in enumerate(sizes):
        batch = 2 if export.dynamic else None
        inputs = model_inputs(export, seed, size=size, batch=batch)
        assert_close(run_onnxruntime(proto, inputs), run_onnxruntime(model, inputs), rtol=rtol)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> ONNX type, from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {tensor.name: tensor.data_type for tensor in inferred.initializer}
    types.update((info.name, info.type.tensor_type.elem_type)
                 for info in (*inferred.input, *inferred.value_info, *inferred.output))
    return types


@pytest.mark.parametrize("export", [pytest.param(e, id=e.id(), marks=() if e in DEFAULT else pytest.mark.slow)
                                    for e in CASES])
def test_own_layer_becomes_one_deform_conv(export: Export) -> None:
    _, model = export_matrix_model(export)
    assert_one_deform_conv_computing_the_same(export, model)


@pytest.mark.parametrize("export", [pytest.param(e, id=e.id(), marks=() if e in FLOAT16_DEFAULT else pytest.mark.slow)
                                    for e in FLOAT16_CASES])
def test_own_float16_layer_becomes_one_float16_deform_conv(export: Export) -> None:
    _, model = export_matrix_model(export)
    assert_one_deform_conv_computing_the_same(export, model)


TOOL_CASES = [Export("dynamo", "block", "grid_sample", 18, "float32", "dcnv2", "plain", "static"),
              Export("torchscript", "block", "auto", 13, "float32", "dcnv1", "strided", "dynamic_axes")]


@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim"])
@pytest.mark.parametrize("export", TOOL_CASES, ids=Export.id)
def test_own_layer_after_graph_tools_becomes_one_deform_conv(export: Export, tool: str) -> None:
    transform, _ = GRAPH_TOOLS[tool]
    _, model = export_matrix_model(export)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_one_deform_conv_computing_the_same(export, transform(model))


def test_the_other_lowerings_leave_own_layers_as_they_are() -> None:
    _, model = export_matrix_model(Export("dynamo", "layer", "grid_sample", 18, "float32", "dcnv2", "plain", "static"))
    for impl in ("auto", "gather", "grid_sample"):
        result = rewrite(ir.from_proto(model), impl=impl)
        assert not result.counts and not result.notes
        assert len(ir.to_proto(result.model).graph.node) == len(model.graph.node)


class TwoWarps(torch.nn.Module):
    """Not a deformable convolution: x warped twice by grids predicted from it (a spatial transformer) and
    the two warps multiplied, so that Y is not a weighted sum of samples."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.predict = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grids = torch.tanh(self.predict(x)).permute(0, 2, 3, 1)
        first = torch.nn.functional.grid_sample(x, grids[..., :2], align_corners=False)
        second = torch.nn.functional.grid_sample(x, grids[..., 2:], align_corners=False)
        return first * second


def test_look_alike_samplers_are_left_alone() -> None:
    x = torch.randn(1, 4, 9, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(TwoWarps().eval(), (x,), dynamo=True, opset_version=19, verbose=False).model_proto
    result = rewrite(ir.from_proto(model), impl="native")
    assert not result.counts
    proto = ir.to_proto(result.model)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in model.graph.node]
    assert_close(run_onnxruntime(proto, [x.numpy()]), run_onnxruntime(model, [x.numpy()]))


def test_command_line_writes_own_layers_as_deform_conv(tmp_path) -> None:
    export = Export("dynamo", "block", "gather", 17, "float32", "dcnv2", "groups", "dims")
    _, model = export_matrix_model(export)
    onnx.save(model, tmp_path / "own.onnx")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["rewrite", str(tmp_path / "own.onnx"), str(tmp_path / "native.onnx"), "--impl", "native",
                     "--opset", "19", "--check"])
    assert code == 0, out.getvalue()
    assert f"rewrote 1 node: {OWN_KIND} x1 (impl native, opset 19) -> " in out.getvalue()
    ops = [n.op_type for n in onnx.load(tmp_path / "native.onnx").graph.node]
    assert ops.count("DeformConv") == 1 and not np.isin(["GridSample", "GatherND"], ops).any()


class Float16Layer(torch.nn.Module):
    """A float16 deformable layer in a float32 model: its inputs cast to float16, its output back to float32."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torchvision.ops.DeformConv2d(4, 6, 3, padding=1).half()

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layer(x.half(), offset.half(), mask.half()).float()


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_float16_layer_of_a_float32_model_computes_in_float32_between_casts(exporter: str) -> None:
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 4, 8, 8)), rng.standard_normal((1, 18, 8, 8)), rng.random((1, 9, 8, 8))]
    inputs = [array.astype(np.float32) for array in inputs]
    args = tuple(torch.from_numpy(array) for array in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            model = torch.onnx.export(Float16Layer().eval(), args, dynamo=True, opset_version=18,
                                      verbose=False).model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(Float16Layer().eval(), args, buffer, dynamo=False, opset_version=17)
            model = onnx.load_from_string(buffer.getvalue())
    result = rewritten_natively(model)
    assert dict(result.counts) == {OWN_KIND: 1}, result.notes
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    deform_conv = next(node for node in proto.graph.node if node.op_type == "DeformConv")
    types = elem_types(proto)
    assert {types[name] for name in (*deform_conv.input, *deform_conv.output)} == {onnx.TensorProto.FLOAT}
    assert "Cast" in {node.op_type for node in proto.graph.node}
    assert_close(run_onnxruntime(proto, inputs), run_onnxruntime(model, inputs), rtol=FLOAT16_RTOL)
