"""Conversion of models holding the lowerings' nodes to opsets below the one they were built at.

torch.onnx's dynamo exporter builds every model at opset 18 and then converts it down with ONNX's version
converter; the rewriter converts models the same way (``--opset``). That converter has no down-adapter for
several ops whose form has not changed since opset 12 for the way they are used here: ``Shape`` without
start/end (15 -> 14), ``Pad`` without axes (18 -> 17), ``ConstantOfShape``, ``Expand``, ... The conversion
then fails, and torch keeps the model at opset 18 with a warning.

:func:`convert_version` wraps the converter (the exporter's conversion step through
:mod:`dcn_onnxscript.export._internals`, ``onnx.version_converter`` in the rewriter): below opset 18 the
nodes whose form is the same at the target opset (:func:`is_stable`) are kept out of the converter's way
under a private domain and given back to the default domain afterwards; the converter handles every other
node (torch's own ops) as usual. This covers every node the lowerings write, and torch's own ``Shape`` and
``Pad`` too.
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from dcn_onnxscript.lowering import emitter, grid_sample

#: The lowest opset a dynamo export can be converted to.
MIN_OPSET = emitter.MIN_OPSET
#: The opset torch.onnx's dynamo exporter builds at (it converts to the requested one afterwards).
BUILD_OPSET = 18
#: Nodes of this domain are kept from the converter and put into the default domain after it; the rewriter
#: writes its nodes, already in the target opset's form, into it.
HIDDEN_DOMAIN = "dcn_onnxscript.stable"

#: Ops whose schema from opset 12 (13 where noted) to 18 changed only by added input types or by
#: attributes/inputs checked in :func:`is_stable`.
_STABLE_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Concat", "ConstantOfShape", "Conv", "CumSum", "Div", "Equal", "Expand", "Flatten",
    "Floor", "Gather",
    "Constant", "GatherND", "Greater", "Less", "MatMul", "Max", "Min", "Mul", "Not", "Pad", "Range", "Reciprocal",
    "Reshape", "Shape", "Slice", "Split", "GridSample", "Sub", "Transpose", "Where",
})


def is_stable(node: ir.Node, opset: int) -> bool:
    """Whether ``node`` (of the default domain, built at opset 18) means the same at ``opset`` as it is."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _STABLE_OPS:
        return False
    if node.op_type == "Shape" and ("start" in node.attributes or "end" in node.attributes):
        return False  # opset 15
    if node.op_type == "Reshape" and node.attributes.get_int("allowzero", 0):
        return False  # opset 14
    if node.op_type == "Pad" and len(node.inputs) > 3:
        return False  # the axes input, opset 18
    if node.op_type == "Split":
        return opset >= 13 and len(node.inputs) == 1 and "num_outputs" not in node.attributes  # 13: split input
    if node.op_type == "GridSample":
        return opset >= 16 and node.attributes.get_string("mode", "bilinear") != "linear"
    return True


def convert_version(model: ir.Model, target_version: int, convert: Callable[[ir.Model, int], ir.Model]) -> ir.Model:
    """``convert(model, target_version)`` (the exporter's conversion), with the stable nodes hidden from it
    when ``target_version`` is below 18."""
    if target_version >= BUILD_OPSET and not any(n.domain == HIDDEN_DOMAIN for n in model.graph.all_nodes()):
        return convert(model, target_version)
    if target_version < MIN_OPSET:
        raise ValueError(f"opset_version must be >= {MIN_OPSET} for deform_conv2d, got {target_version}")
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type == "GridSample" and target_version < grid_sample.MIN_OPSET:
            low = grid_sample.MIN_OPSET
            raise ValueError(f"impl='grid_sample' writes ONNX GridSample, which needs opset_version >= {low}, got "
                             f"{target_version}; use impl='gather' below opset {low}")
        if target_version < 15 and node.op_type == "Shape":
            _shape_then_slice(node)
        elif target_version < 18 and node.op_type == "Split" and len(node.inputs) == 1:
            node.attributes.pop("num_outputs", None)  # opset 18; before, the count of outputs says it
        elif target_version < 13 and node.op_type == "ReduceSum" and _axes_to_attribute(node):
            node.domain = HIDDEN_DOMAIN
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if is_stable(node, target_version):
            node.domain = HIDDEN_DOMAIN
            if node.op_type == "Reshape" and target_version < 14:
                node.attributes.pop("allowzero", None)
    model.opset_imports[HIDDEN_DOMAIN] = 1
    converted = convert(model, target_version)
    reached = converted.opset_imports.get("", converted.opset_imports.get("ai.onnx"))
    if reached != target_version:  # torch's conversion step logs the converter's error and goes on
        raise ValueError(f"ONNX's version converter could not convert the model to opset {target_version} (it "
                         f"stayed at {reached}; see the converter's message above)")
    for node in ir.traversal.RecursiveGraphIterator(converted.graph):
        if node.domain == HIDDEN_DOMAIN:
            node.domain = ""
    converted.opset_imports.pop(HIDDEN_DOMAIN, None)
    return converted


def _shape_then_slice(node: ir.Node) -> None:
    """``Shape(x, start, end)`` (opset 15) as ``Slice(Shape(x), start, end)``."""
    start, end = node.attributes.get("start"), node.attributes.get("end")
    if start is None and end is None or node.domain not in ("", "ai.onnx"):
        return
    bounds = [start.as_int() if start is not None else 0, end.as_int() if end is not None else 2**62]
    shape = ir.node("Shape", [node.inputs[0]])
    constants = [ir.node("Constant", [], {"value": ir.tensor([b], dtype=ir.DataType.INT64)}) for b in bounds]
    sliced = ir.node("Slice", [shape.outputs[0], constants[0].outputs[0], constants[1].outputs[0]])
    graph = node.graph
    graph.insert_before(node, [shape, *constants, sliced])
    sliced.outputs[0].name = node.outputs[0].name
    node.outputs[0].replace_all_uses_with(sliced.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _axes_to_attribute(node: ir.Node) -> bool:
    """``ReduceSum`` with a constant ``axes`` input (opset 13) in its opset-11 form, axes as an attribute.
    Returns whether the node was changed."""
    axes = ir.convenience.get_const_tensor(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    if axes is None or node.attributes.get_int("noop_with_empty_axes", 0):
        return False
    node.attributes.pop("noop_with_empty_axes", None)
    node.attributes["axes"] = ir.AttrInt64s("axes", [int(a) for a in axes.numpy().reshape(-1)])
    node.resize_inputs(1)
    return True
