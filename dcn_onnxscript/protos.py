"""The ONNX ``FunctionProto``\\ s behind a script function, for adding to any ONNX model."""

from __future__ import annotations

import onnx
from onnxscript import OnnxFunction


def function_protos(function: OnnxFunction) -> list[onnx.FunctionProto]:
    """``function`` and every function it calls, directly or not, as FunctionProtos, each callee before
    its callers (the order ``onnx.reference.ReferenceEvaluator`` needs in ``ModelProto.functions``).

    Add them to a model with ``model.functions.extend(function_protos(deform_conv2d))`` and import their
    domain (:data:`dcn_onnxscript.DOMAIN`, version 1) in ``model.opset_import``.
    """
    ordered: dict[tuple[str, str], onnx.FunctionProto] = {}

    def visit(f: OnnxFunction) -> None:
        key = (f.function_ir.domain, f.name)
        if key in ordered:
            return
        for callee in f.function_ir.get_called_functions().values():
            visit(callee)
        ordered[key] = f.to_function_proto()

    visit(function)
    return list(ordered.values())
