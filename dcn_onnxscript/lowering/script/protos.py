"""Self-contained public functions: their bodies hold the helpers' nodes, not calls of them.

The standalone functions are authored with one helper function per step of the equation. A consumer of
model-local functions that needs callees listed before callers (``onnx.reference``), or one that does not
follow nested calls, then fails on a model built by ``to_model_proto()`` of a caller. :func:`flatten`
inlines every helper into the public function's own body once, at import, so that each public function is
one ``FunctionProto`` without nested calls, however the caller builds its model.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass
from onnxscript import OnnxFunction

#: The ONNX opset the script functions are written against (``onnxscript.opset18``).
SCRIPT_OPSET = 18


def flatten(function: OnnxFunction) -> OnnxFunction:
    """Inline, in place, every function ``function`` calls into its body; returns ``function``."""
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
    used = {node.domain for node in body.graph}
    body.opset_imports.clear()
    body.opset_imports.update({domain: imports.get(domain, SCRIPT_OPSET) for domain in used})
    for node in body.graph:
        node.meta.pop("callee", None)
    return function


def function_protos(function: OnnxFunction) -> list[onnx.FunctionProto]:
    """``function`` as the FunctionProtos to add to a model: one, since the public functions are flat.

    Add them with ``model.functions.extend(function_protos(deform_conv2d))`` and import their domain
    (:data:`dcn_onnxscript.DOMAIN`, version 1) in ``model.opset_import``.
    """
    return [function.to_function_proto()]
