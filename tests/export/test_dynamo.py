"""torch.onnx integration (dcn_onnxscript.registration): importing registers the portable translation; the
exported models hold no DeformConv, pass the full checker, run at new sizes and match torchvision."""

from __future__ import annotations

import onnx
import pytest
import torch

import dcn_onnxscript
from helpers import (
    Case,
    DeformBlock,
    DeformConvLayer,
    assert_close,
    default_opset,
    export_dynamo,
    layer_reference,
    make_inputs,
)
from matrix import GEOMETRIES
from runtimes import run_onnxruntime


def op_types(model_proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model_proto.graph.node} | {n.op_type for f in model_proto.functions for n in f.node}


def export_and_compare(case: Case, **export_options) -> onnx.ModelProto:
    """Export a torchvision layer for ``case``, check it fully and compare it with torchvision."""
    layer = DeformConvLayer(case).eval()
    inputs = make_inputs(case)
    proto = export_dynamo(layer, inputs, **export_options)
    onnx.checker.check_model(proto, full_check=True)
    assert_close(run_onnxruntime(proto, inputs), layer_reference(layer, inputs))
    return proto


@pytest.mark.parametrize(
    "case",
    [
        Case(in_channels=4, out_channels=6, kernel=(3, 2), groups=2, offset_groups=2),
        Case(bias=False, offset_groups=2),
        Case(mask=False),  # DCNv1
        Case(mask=False, bias=False),
        Case(kernel=(3, 3), stride=(2, 2), padding=(2, 2), dilation=(2, 2), size=(9, 8)),
    ],
    ids=["v2-bias-groups", "v2-no-bias", "v1-bias", "v1-no-bias", "stride-dilation"],
)
def test_import_registers_portable_translation(case) -> None:
    assert dcn_onnxscript.is_registered()
    assert "DeformConv" not in op_types(export_and_compare(case))


def _biased_convs(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2])


def test_zero_bias_is_dropped_from_the_graph() -> None:
    """torchvision passes a zero bias for bias=False; the export then uses the no-bias variant (the default
    lowering adds the bias in its first tap's Conv)."""
    with_bias, without_bias = (export_and_compare(Case(bias=b)) for b in (True, False))
    assert (_biased_convs(with_bias), _biased_convs(without_bias)) == (1, 0)


def test_dynamic_shapes_run_at_other_sizes_including_one_pixel() -> None:
    case = Case()
    batch, height, width = (torch.export.Dim(n, min=1, max=64) for n in ("batch", "height", "width"))
    out_h, out_w = torch.export.Dim("out_h", min=1, max=64), torch.export.Dim("out_w", min=1, max=64)
    per_output = {0: batch, 2: out_h, 3: out_w}
    proto = export_and_compare(case, dynamic_shapes=({0: batch, 2: height, 3: width}, per_output, per_output))
    layer = DeformConvLayer(case).eval()
    for batch_size, h, w in [(1, 1, 9), (3, 12, 1), (4, 20, 17)]:
        inputs = make_inputs(case, seed=h, size=(h, w), batch=batch_size)
        assert_close(run_onnxruntime(proto, inputs), layer_reference(layer, inputs))


def test_unregister_restores_native_deformconv_and_register_brings_it_back() -> None:
    layer = DeformConvLayer(Case()).eval()
    inputs = make_inputs(Case())
    try:
        dcn_onnxscript.unregister()
        assert not dcn_onnxscript.is_registered()
        assert "DeformConv" in op_types(export_dynamo(layer, inputs, opset=19))
        # The translation table works without the global registration.
        table = dcn_onnxscript.translation_table()
        assert "DeformConv" not in op_types(export_dynamo(layer, inputs, custom_translation_table=table))
    finally:
        dcn_onnxscript.register()
    assert dcn_onnxscript.is_registered()
    assert "DeformConv" not in op_types(export_dynamo(layer, inputs, opset=19))


def test_register_and_unregister_are_idempotent() -> None:
    try:
        dcn_onnxscript.register()
        dcn_onnxscript.register()
        dcn_onnxscript.unregister()
        dcn_onnxscript.unregister()
        assert not dcn_onnxscript.is_registered()
    finally:
        dcn_onnxscript.register()
    assert dcn_onnxscript.is_registered()


def test_unoptimized_export_runs() -> None:
    """optimize=False: the exporter still inlines the function and every helper it calls."""
    assert "DeformConv" not in op_types(export_and_compare(Case(), optimize=False))


class RawOp(torch.nn.Module):
    """Calls torchvision::deform_conv2d directly, so inconsistent arguments reach the exporter."""

    def __init__(self, offset_groups: int, groups: int = 1) -> None:
        super().__init__()
        self.offset_groups, self.groups = offset_groups, groups

    def forward(self, x, weight, offset, mask, bias):
        return torch.ops.torchvision.deform_conv2d(
            x, weight, offset, mask, bias, 1, 1, 1, 1, 1, 1, self.groups, self.offset_groups, True
        )


def _export_error(model, args) -> str:
    with pytest.raises(Exception) as info:
        torch.onnx.export(model, args, dynamo=True, verbose=False)
    causes = []
    error: BaseException | None = info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    value_errors = [str(e) for e in causes if isinstance(e, ValueError)]
    assert value_errors, f"no ValueError in {causes!r}"
    return value_errors[0]


def test_channels_not_divisible_by_offset_groups_is_a_value_error_at_export() -> None:
    args = (torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(1, 36, 5, 5),
            torch.rand(1, 18, 5, 5), torch.zeros(4))
    message = _export_error(RawOp(offset_groups=2), args)
    assert "input dimension 1" in message and "offset_groups = 2" in message


def test_mask_channels_not_matching_kernel_is_a_value_error_at_export() -> None:
    args = (torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3), torch.randn(1, 18, 5, 5),
            torch.rand(1, 5, 5, 5), torch.zeros(4))
    message = _export_error(RawOp(offset_groups=1), args)
    assert "mask dimension 1 must be 9" in message


@pytest.mark.parametrize("geometry", ["plain", "groups"])
def test_default_export_folds_the_per_tap_kernels_into_initializers(geometry: str) -> None:
    """At torch's default opset the default lowering is grid_sample: every 1x1 Conv's kernel is an initializer
    (folded in the exporter's conversion step), and no node is left reading W."""
    case = GEOMETRIES[geometry]
    model = export_and_compare(case)
    initializers = {i.name for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 9 and all(n.input[1] in initializers for n in convs)
    assert not any(n.op_type == "Split" and n.input[0] in initializers for n in model.graph.node)


class _ClassifierHead(torch.nn.Module):
    """A :class:`DeformBlock` pooled to 1×1, flattened (a ``view``) and classified by a Linear: (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = DeformBlock(Case())
        self.classify = torch.nn.Linear(Case().out_channels, 4)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(self.block(x), 1)
        return self.classify(torch.flatten(pooled, 1))


@pytest.mark.parametrize("opset", [12, 13])
def test_dynamic_whole_model_below_opset_14_is_valid(opset: int) -> None:
    """torch optimizes after converting, and onnxscript's optimizer would make the flatten of a dynamic
    batch a Reshape with ``allowzero`` (an opset-14 attribute): the model must state and keep the requested
    opset, pass the full check and run like eager at another batch and size."""
    torch.manual_seed(0)
    model = _ClassifierHead().eval()
    auto = torch.export.Dim.AUTO
    program = torch.onnx.export(model, (torch.randn(2, 3, 12, 10),), dynamo=True, opset_version=opset,
                                dynamic_shapes=({0: auto, 2: auto, 3: auto},), verbose=False)
    exported = program.model_proto
    assert default_opset(exported) == opset
    onnx.checker.check_model(exported, full_check=True)
    x = torch.randn(3, 3, 9, 14)
    with torch.no_grad():
        expected = model(x).numpy()
    assert_close(run_onnxruntime(exported, [x.numpy()]), expected)
