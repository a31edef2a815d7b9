"""torch.onnx integration (dcn_onnxscript.registration): importing registers the portable translation; the
exported models hold no DeformConv, pass the full checker, run at new sizes and match torchvision."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import DeformConv2d

import dcn_onnxscript
from test_functions import assert_close, run_onnxruntime


class Layer(torch.nn.Module):
    """A torchvision DeformConv2d fed by (x, offset[, mask])."""

    def __init__(self, channels=4, out_channels=6, kernel=(3, 2), stride=1, padding=1, dilation=1,
                 groups=2, bias=True, use_mask=True):
        super().__init__()
        self.conv = DeformConv2d(channels, out_channels, kernel, stride, padding, dilation, groups, bias)
        self.use_mask = use_mask

    def forward(self, x, offset, mask=None):
        return self.conv(x, offset, mask if self.use_mask else None)

    def example(self, batch=2, height=7, width=6, offset_groups=2, seed=0):
        """(x, offset[, mask]) for this layer; offsets of a few pixels."""
        generator = torch.Generator().manual_seed(seed)
        kh, kw = self.conv.weight.shape[2:]
        ho, wo = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(
                (height, width), (kh, kw), self.conv.stride, self.conv.padding, self.conv.dilation
            )
        )
        taps = offset_groups * kh * kw
        x = torch.randn(batch, self.conv.weight.shape[1] * self.conv.groups, height, width, generator=generator)
        offset = 3 * torch.randn(batch, 2 * taps, ho, wo, generator=generator)
        mask = torch.rand(batch, taps, ho, wo, generator=generator)
        return (x, offset, mask) if self.use_mask else (x, offset)


def export(model, args, **kwargs) -> onnx.ModelProto:
    return torch.onnx.export(model.eval(), args, dynamo=True, verbose=False, **kwargs).model_proto


def reference(model, args) -> np.ndarray:
    with torch.no_grad():
        return model.double()(*(a.double() for a in args)).numpy()


def feeds(model_proto: onnx.ModelProto, args) -> dict[str, np.ndarray]:
    return {i.name: a.numpy() for i, a in zip(model_proto.graph.input, args)}


def op_types(model_proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model_proto.graph.node} | {n.op_type for f in model_proto.functions for n in f.node}


@pytest.mark.parametrize(
    "config",
    [
        dict(),  # DCNv2 with bias, groups, non-square kernel
        dict(bias=False),
        dict(use_mask=False),  # DCNv1
        dict(use_mask=False, bias=False),
        dict(kernel=3, stride=2, padding=2, dilation=2, groups=1),
    ],
    ids=["v2-bias", "v2-no-bias", "v1-bias", "v1-no-bias", "stride-dilation"],
)
def test_import_registers_portable_translation(config) -> None:
    assert dcn_onnxscript.is_registered()
    model = Layer(**config)
    args = model.example(offset_groups=2)
    proto = export(model, args)
    onnx.checker.check_model(proto, full_check=True)
    assert "DeformConv" not in op_types(proto)
    assert_close(run_onnxruntime(proto, feeds(proto, args)), reference(model, args))


def test_zero_bias_is_dropped_from_the_graph() -> None:
    """torchvision passes a zero bias for bias=False; the export then uses the no-bias variant."""
    with_bias, without_bias = (export(Layer(bias=b), Layer(bias=b).example()) for b in (True, False))
    assert len(without_bias.graph.node) < len(with_bias.graph.node)


def test_dynamic_shapes_run_at_other_sizes() -> None:
    model = Layer()
    batch, height, width = (torch.export.Dim(n, min=1, max=64) for n in ("batch", "height", "width"))
    out_h, out_w = torch.export.Dim("out_h", min=1, max=64), torch.export.Dim("out_w", min=1, max=64)
    image = {0: batch, 2: height, 3: width}
    per_output = {0: batch, 2: out_h, 3: out_w}
    proto = export(model, model.example(), dynamic_shapes=(image, per_output, per_output))
    onnx.checker.check_model(proto, full_check=True)
    for batch_size, h, w in [(1, 1, 9), (3, 12, 1), (4, 20, 17)]:
        args = model.example(batch=batch_size, height=h, width=w, seed=h)
        assert_close(run_onnxruntime(proto, feeds(proto, args)), reference(model, args))


def test_unregister_restores_native_deformconv_and_register_brings_it_back() -> None:
    model = Layer()
    args = model.example()
    try:
        dcn_onnxscript.unregister()
        assert not dcn_onnxscript.is_registered()
        assert "DeformConv" in op_types(export(model, args, opset_version=19))
        # The translation table works without the global registration.
        table = dcn_onnxscript.translation_table()
        assert "DeformConv" not in op_types(export(model, args, custom_translation_table=table))
    finally:
        dcn_onnxscript.register()
    assert dcn_onnxscript.is_registered()
    assert "DeformConv" not in op_types(export(model, args, opset_version=19))


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
    model = Layer()
    args = model.example()
    proto = export(model, args, optimize=False)
    onnx.checker.check_model(proto, full_check=True)
    assert "DeformConv" not in op_types(proto)
    assert_close(run_onnxruntime(proto, feeds(proto, args)), reference(model, args))


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
        export(model, args)
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
