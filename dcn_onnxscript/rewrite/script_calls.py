"""The rewriter's fallback for a node whose weight shape is unknown (a model-local function's input, say):
a call of the standalone script function (dynamic in every size and attribute,
:mod:`dcn_onnxscript.lowering.script`), inlined afterwards. Heavier than the lowerings (the script body
reads every size at run time) and written at opset 18, so only for graphs at opset 18 or later."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from dcn_onnxscript.lowering.script import DOMAIN, VARIANTS, function_protos
from dcn_onnxscript.lowering.script.protos import SCRIPT_OPSET


def call_node(node: ir.Node, call, impl: str) -> ir.Node:
    """A call of the script function for ``call`` (a :class:`~dcn_onnxscript.rewrite.rewriter.DeformConvCall`)
    in place of ``node``."""
    function = VARIANTS[impl][(call.B is not None, call.mask is not None)]
    inputs = [call.X, call.W, call.offset] + [v for v in (call.B, call.mask) if v is not None]
    attributes = [ir.AttrInt64s("strides", call.strides), ir.AttrInt64s("pads", call.pads),
                  ir.AttrInt64s("dilations", call.dilations), ir.AttrInt64("group", call.group),
                  ir.AttrInt64("offset_group", call.offset_group)]
    return ir.Node(DOMAIN, function.name, inputs, attributes, num_outputs=1, name=node.name)


def inline(model: ir.Model) -> None:
    """Add the called script functions to ``model`` (declared at its opset), inline every call, and remove
    them again."""
    called = {n.op_type for graph in _graphs(model) for n in ir.traversal.RecursiveGraphIterator(graph)
              if n.domain == DOMAIN}
    version = model.opset_imports.get("", SCRIPT_OPSET)
    for variants in VARIANTS.values():
        for key in variants:
            if variants.name_of(key) in called:
                (proto,) = function_protos(variants[key], version)
                body = ir.serde.deserialize_function(proto)
                model.functions[body.identifier()] = body
    model.opset_imports[DOMAIN] = 1
    for function in model.functions.values():
        if any(n.domain == DOMAIN for n in function):
            function.opset_imports[DOMAIN] = 1
    before = {n for graph in _graphs(model) for n in ir.traversal.RecursiveGraphIterator(graph)}
    InlinePass(criteria=lambda function: function.domain == DOMAIN)(model)
    for graph in _graphs(model):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node not in before:
                _tidy(node)
    for key in [key for key in model.functions if key[0] == DOMAIN]:
        del model.functions[key]
    model.opset_imports.pop(DOMAIN, None)
    for function in model.functions.values():
        function.opset_imports.pop(DOMAIN, None)


def _graphs(model: ir.Model):
    yield model.graph
    for function in model.functions.values():
        yield function.graph


def _tidy(node: ir.Node) -> None:
    """An inlined node in the form every runtime reads: ``Constant(value=tensor)`` (OpenVINO refuses
    ``value_ints`` and friends), no typeless value info."""
    if node.op_type == "Constant":
        for name, dtype in (("value_int", np.int64), ("value_ints", np.int64), ("value_float", np.float32),
                            ("value_floats", np.float32)):
            if name in node.attributes:
                attr = node.attributes.pop(name)
                value = attr.as_ints() if name.endswith("s") and "int" in name else attr.value
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.array(value, dtype=dtype)))
    for value in node.outputs:
        if value.shape is None:  # a type without a shape is no valid value_info
            value.type = None
