"""Smoke slice for the lowest declared dependency versions (``bash .ci/lowest`` runs it in a venv that holds
exactly those, ``.ci/lowest-constraints.txt``); it runs in the main suite too.

Only public API: ``import dcn_onnxscript`` then ``torch.onnx.export`` of a torchvision ``DeformConv2d``
through the dynamo exporter (default opset, opset 12, and grid_sample at opset 20) and the TorchScript one
(opset 13), and the ncnn rewrite of an export; the ONNX model must hold
no ``DeformConv``, pass the full checker and match torchvision on onnxruntime.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision

import dcn_onnxscript  # noqa: F401  (registers the portable translation)

pytestmark = pytest.mark.lowest


def _layer_and_inputs(bias: bool):
    torch.manual_seed(0)
    layer = torchvision.ops.DeformConv2d(4, 6, kernel_size=3, padding=1, bias=bias).eval()
    if bias:
        with torch.no_grad():
            layer.bias.uniform_(-1.0, 1.0)
    x = torch.randn(1, 4, 8, 8)
    offset = 2.0 * torch.randn(1, 2 * 9, 8, 8)
    mask = torch.rand(1, 9, 8, 8)
    return layer, (x, offset, mask)


def _export(layer, inputs, path, dynamo: bool, opset=None, impl=None) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation, dynamo progress notes
        if dynamo:
            table = dcn_onnxscript.translation_table(impl) if impl else None
            torch.onnx.export(layer, inputs, str(path), dynamo=True, opset_version=opset,
                              custom_translation_table=table)
        else:
            torch.onnx.export(layer, inputs, str(path), dynamo=False, opset_version=13,
                              input_names=["input", "offset", "mask"])
    return onnx.load(str(path))


def _op_types(model: onnx.ModelProto) -> set[str]:
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return {n.op_type for n in nodes}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dynamo, opset, impl", [(True, None, None), (True, 12, None), (True, 20, "grid_sample"),
                                                 (False, 13, None)],
                         ids=["dynamo", "dynamo_opset12", "dynamo_opset20_grid_sample", "torchscript_opset13"])
def test_export_matches_torchvision_on_onnxruntime(tmp_path, dynamo, opset, impl, bias):
    layer, inputs = _layer_and_inputs(bias)
    path = tmp_path / "deform_conv2d.onnx"
    model = _export(layer, inputs, path, dynamo, opset, impl)

    assert "DeformConv" not in _op_types(model)
    if impl == "grid_sample":
        assert {"GridSample", "Conv"} <= _op_types(model)
    onnx.checker.check_model(model, full_check=True)
    if opset is not None:
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    (actual,) = session.run(None, feeds)
    with torch.no_grad():
        expected = layer(*inputs).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_rewrite_for_ncnn_keeps_the_result(tmp_path):
    """``rewrite --for ncnn`` (onnxscript's pattern rewriter) on a grid_sample export: the guard becomes a
    ``Clip`` and onnxruntime's result stays."""
    from dcn_onnxscript.__main__ import main

    layer, inputs = _layer_and_inputs(bias=True)
    path = tmp_path / "deform_conv2d.onnx"
    _export(layer, inputs, path, dynamo=True, opset=20, impl="grid_sample")
    assert main(["rewrite", str(path), str(tmp_path / "ncnn.onnx"), "--for", "ncnn"]) == 0
    rewritten = onnx.load(str(tmp_path / "ncnn.onnx"))
    assert "Clip" in _op_types(rewritten) and "Less" not in _op_types(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    outputs = []
    for model_path in (path, tmp_path / "ncnn.onnx"):
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0])
    np.testing.assert_array_equal(outputs[1], outputs[0])
