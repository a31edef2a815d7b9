"""The legacy TorchScript exporter (dynamo=False): registration. Its exports at every opset it supports,
with static and dynamic axes, are part of the generated matrix (tests/export/test_matrix.py)."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch

import dcn_onnxscript
from helpers import Case, DeformConvLayer, make_inputs

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
