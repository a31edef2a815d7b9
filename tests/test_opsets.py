"""Dynamo exports at every opset from 12 to the newest that onnx and onnxruntime both support: the model
declares the requested opset, passes the full checker and matches torchvision at a new dynamic size."""

from __future__ import annotations

import functools
import warnings

import onnx
import onnxruntime
import pytest

import dcn_onnxscript  # noqa: F401
from dcn_onnxscript import opsets
from helpers import Case, DeformConvLayer, assert_close, default_opset, export_dynamo, layer_reference, \
    make_inputs, run_onnxruntime, run_reference


@functools.lru_cache(maxsize=None)
def newest_common_opset() -> int:
    """The newest opset that both onnx and onnxruntime know."""
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    for opset in range(onnx.defs.onnx_opset_version(), 17, -1):
        model = onnx.helper.make_model(identity, opset_imports=[onnx.helper.make_opsetid("", opset)])
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001  (onnxruntime raises its own error types)
            continue
    return 18


CASE = Case(in_channels=4, out_channels=6, stride=(2, 1), groups=2, offset_groups=2)
OPSETS = list(range(opsets.MIN_OPSET, newest_common_opset() + 1))


def export_at(opset: int, dynamic: bool) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_dynamo(DeformConvLayer(CASE).eval(), make_inputs(CASE), opset=opset, dynamic=dynamic)


@pytest.mark.parametrize("opset", OPSETS)
def test_dynamic_export_at_opset_is_valid_and_correct(opset):
    model = export_at(opset, dynamic=True)
    assert default_opset(model) == opset
    onnx.checker.check_model(model, full_check=True)
    inputs = make_inputs(CASE, seed=3, size=(9, 5), batch=2)
    assert_close(run_onnxruntime(model, inputs), layer_reference(DeformConvLayer(CASE), inputs))


@pytest.mark.parametrize("opset", [12, 14, 16])
def test_static_export_below_18_runs_on_the_reference_evaluator(opset):
    model = export_at(opset, dynamic=False)
    assert default_opset(model) == opset
    onnx.checker.check_model(model, full_check=True)
    inputs = make_inputs(CASE, seed=4)
    assert_close(run_reference(model, inputs), layer_reference(DeformConvLayer(CASE), inputs))


def test_opset_below_12_is_refused_with_a_clear_error():
    with pytest.raises(Exception, match="opset >= 12"):
        export_at(11, dynamic=False)
