"""The legacy TorchScript exporter (dynamo=False): registration. Its exports at every opset it supports,
with static and dynamic axes, are part of the generated matrix (tests/export/test_matrix.py)."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch

import dcn_onnxscript
from helpers import Case, DeformConvLayer, assert_close, make_inputs
from runtimes import run_onnxruntime

CASE = Case(in_channels=4, out_channels=6, stride=(2, 1), groups=2, offset_groups=2)


def export_torchscript(case: Case, opset: int) -> onnx.ModelProto:
    names = ["x", "offset", "mask"][: 3 if case.mask else 2]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DeformConvLayer(case).eval(), tuple(torch.from_numpy(a) for a in make_inputs(case)),
                          buffer, dynamo=False, opset_version=opset, input_names=names)
    return onnx.load_from_string(buffer.getvalue())


def test_unregister_removes_the_torchscript_symbolic():
    dcn_onnxscript.unregister()
    try:
        # torch then fails on the emptied symbolic group ("min() arg is an empty sequence") rather than with
        # its UnsupportedOperatorError; either way the export no longer goes through the function.
        with pytest.raises(Exception):
            export_torchscript(CASE, 17)
    finally:
        dcn_onnxscript.register()


class _DeepThenDeform(torch.nn.Module):
    """``depth`` elementwise layers on x and on the offset (as deep as a ResNet-50's graph before its last
    deformable layer, whose offsets a convolution computes), then the deformable layer of ``case``."""

    def __init__(self, case: Case, depth: int) -> None:
        super().__init__()
        self.layer, self.depth = DeformConvLayer(case), depth

    def forward(self, x, offset, mask):
        for _ in range(self.depth):
            x, offset = torch.relu(x) * 1.0001, offset * 1.0001
        return self.layer(x, offset, mask)


@pytest.mark.parametrize("opset", [13, 17])
def test_a_layer_deep_in_a_network_exports(opset: int):
    """The symbolic looks up whether a value comes from the weights alone; a value computed from the image
    must not be followed back through the whole network one Python frame per node (a RecursionError on the
    DCNv2 ResNet-50 below opset 16)."""
    case = Case()
    model = _DeepThenDeform(case, depth=1200).eval()
    inputs = tuple(torch.from_numpy(a) for a in make_inputs(case))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset, input_names=["x", "offset", "mask"])
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported, full_check=True)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    assert_close(run_onnxruntime(exported, [a.numpy() for a in inputs]), expected)
