"""The standalone functions' domain and opset, and their finishing: self-contained FunctionProtos.

The standalone functions are authored with one helper function per step of the equation. A consumer of
model-local functions that needs callees listed before callers (``onnx.reference``), or one that does not
follow nested calls, then fails on a model built by ``to_model_proto()`` of a caller. :func:`flatten`
inlines every helper into the public function's own body once, when the function is built, so that each
public function is one ``FunctionProto`` without nested calls, however the caller builds its model, and
merges what the inlined helpers compute alike (their constants, the sizes each reads with ``Shape``).

This module imports neither onnxscript nor onnx_ir at import time: ``import dcn_onnxscript`` reads
:data:`DOMAIN` from here without building any function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    from onnxscript import OnnxFunction

#: The ONNX domain of every standalone function.
DOMAIN = "dcn_onnxscript"
#: Version of :data:`DOMAIN`.
DOMAIN_VERSION = 1
#: The ONNX opset the script functions are written against (``onnxscript.opset18``).
SCRIPT_OPSET = 18


def flatten(function: OnnxFunction) -> OnnxFunction:
    """Inline, in place, every function ``function`` calls into its body, then merge nodes that compute the
    same (common subexpression elimination: a constant or a ``Shape`` each helper writes once); returns
    ``function``."""
    import onnx_ir as ir
    from onnx_ir.passes.common import InlinePass

    body = function.function_ir
    callees = [f.function_ir for f in body.get_called_functions().values()]
    imports = dict(body.opset_imports)
    for callee in callees:
        for domain, version in callee.opset_imports.items():
            imports.setdefault(domain, version)
    if callees:
        holder = ir.Model(ir.Graph([], [], nodes=[], name="holder", opset_imports=dict(imports)),
                          ir_version=10, functions=[*callees, body])
        InlinePass(criteria=lambda f: f is not body)(holder)
    _merge_common_nodes(body.graph)
    used = {node.domain for node in body.graph}
    body.opset_imports.clear()
    body.opset_imports.update({domain: imports.get(domain, SCRIPT_OPSET) for domain in used})
    for node in body.graph:
        node.meta.pop("callee", None)
    return function


def function_protos(function: OnnxFunction, opset: int = SCRIPT_OPSET) -> list[onnx.FunctionProto]:
    """``function`` as the FunctionProtos to add to a model: one, since the public functions are flat.

    Add them with ``model.functions.extend(function_protos(deform_conv2d, opset))`` and import their domain
    (:data:`DOMAIN`, version :data:`DOMAIN_VERSION`) in ``model.opset_import``. ``opset``: the model's ONNX
    opset (:data:`SCRIPT_OPSET` or later), which the function is declared at: ``onnx.checker`` and
    ``onnx.inliner`` refuse a function whose ops resolve to other versions than the model's. The functions'
    ops mean the same from :data:`SCRIPT_OPSET` on (``GridSample`` is left at its defaults, whose spelling
    changed in opset 20).
    """
    if opset < SCRIPT_OPSET:
        raise ValueError(f"opset must be >= {SCRIPT_OPSET} (the functions' own), got {opset}")
    proto = function.to_function_proto()
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = opset
    return [proto]


def _merge_common_nodes(graph) -> None:
    """Common subexpression elimination in ``graph`` (an ``onnx_ir`` graph): a node with the op, inputs and
    attributes of an earlier one is dropped, its users read the earlier one's outputs. (onnx_ir's own pass
    cannot read a function's reference attributes, such as ``Constant(value_ints=@strides)``.)"""
    import onnx_ir as ir

    seen: dict[tuple, ir.Node] = {}
    for node in list(graph):
        key = (node.op_identifier(), tuple(id(value) for value in node.inputs),
               tuple(sorted((name, _attribute_key(attr)) for name, attr in node.attributes.items())))
        earlier = seen.setdefault(key, node)
        if earlier is not node and not any(value.is_graph_output() for value in node.outputs):
            ir.convenience.replace_all_uses_with(node.outputs, earlier.outputs)
            graph.remove(node, safe=True)


def _attribute_key(attr) -> tuple:
    """A hashable, comparable form of an attribute's value (or of the attribute it refers to)."""
    import onnx_ir as ir

    if attr.is_ref():
        return ("ref", attr.ref_attr_name)
    if attr.type == ir.AttributeType.TENSOR:
        array = attr.value.numpy()
        return ("tensor", array.dtype.str, array.shape, array.tobytes())
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return ("graph", id(attr))  # never merged
    value = attr.value
    return (attr.type.name, tuple(value) if isinstance(value, (list, tuple)) else value)
