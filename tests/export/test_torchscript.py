"""The legacy TorchScript exporter (dynamo=False) exports through the same function body at every opset
it supports, with dynamic axes, and the result matches torchvision."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch

import dcn_onnxscript
from dcn_onnxscript import torchscript
from helpers import Case, DeformConvLayer, assert_close, default_opset, layer_reference, make_inputs, \
    run_onnxruntime, run_openvino

# The newest opset of the TorchScript exporter (torch.onnx keeps it frozen).
TORCHSCRIPT_MAX_OPSET = 20
CASES = {"dcnv2_groups": Case(in_channels=4, out_channels=6, stride=(2, 1), groups=2, offset_groups=2),
         "dcnv1_no_bias": Case(mask=False, bias=False, dilation=(2, 2), padding=(2, 2))}


def export_torchscript(case: Case, opset: int) -> onnx.ModelProto:
    names = ["x", "offset", "mask"][: 3 if case.mask else 2]
    axes = {name: {0: "n", 2: f"{name}_h", 3: f"{name}_w"} for name in names}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DeformConvLayer(case).eval(), tuple(torch.from_numpy(a) for a in make_inputs(case)),
                          buffer, dynamo=False, opset_version=opset, input_names=names, dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", range(torchscript.MIN_OPSET, TORCHSCRIPT_MAX_OPSET + 1))
@pytest.mark.parametrize("name", sorted(CASES))
def test_torchscript_export_at_opset_matches_torchvision(name, opset):
    case = CASES[name]
    model = export_torchscript(case, opset)
    assert default_opset(model) == opset
    assert {n.op_type for n in model.graph.node}.isdisjoint({"DeformConv", "deform_conv2d"})
    onnx.checker.check_model(model, full_check=True)
    inputs = make_inputs(case, seed=3, size=(9, 5), batch=2)
    assert_close(run_onnxruntime(model, inputs), layer_reference(DeformConvLayer(case), inputs))


def test_torchscript_export_runs_on_openvino():
    case = CASES["dcnv2_groups"]
    inputs = make_inputs(case, seed=5, size=(6, 8))
    assert_close(run_openvino(export_torchscript(case, 13), inputs), layer_reference(DeformConvLayer(case), inputs))


def test_unregister_removes_the_torchscript_symbolic():
    dcn_onnxscript.unregister()
    try:
        # torch then fails on the emptied symbolic group ("min() arg is an empty sequence") rather than with
        # its UnsupportedOperatorError; either way the export no longer goes through the function.
        with pytest.raises(Exception):
            export_torchscript(CASES["dcnv2_groups"], 17)
    finally:
        dcn_onnxscript.register()
