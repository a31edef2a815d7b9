"""Dynamo exports at opsets below 18.

torch.onnx's dynamo exporter always builds the model at opset 18 and then converts it down (before its
optimizer inlines functions) with ``onnx.version_converter``. That converter has no down-adapter for
``Shape`` (15 -> 14), ``CastLike`` (new in 15) or ``ReduceMin`` (13 -> 12), all of which the function
body uses, so the conversion fails and the model silently stays at opset 18.

:func:`install` wraps the exporter's conversion step: below opset 18 every call of a
:mod:`dcn_onnxscript.functions` function in the main graph is first replaced by the function body emitted
directly in the target opset's form (:mod:`dcn_onnxscript.inline`, the same expansion as the TorchScript
symbolic); those nodes are kept out of ``onnx.version_converter``'s way under a private domain while the
rest of the model (torch's own ops) goes through the exporter's usual conversion, and are given back to the
default domain afterwards.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import onnx_ir as ir
from torch.onnx._internal._lazy_import import onnxscript_apis

from dcn_onnxscript import functions, grid_sample
from dcn_onnxscript.inline import inline_function
from dcn_onnxscript.lowerings import PORTABLE

#: Lowest opset the conversion was tested at (the function body needs opset ≥ 11 ops: Range, Gather-11).
MIN_OPSET = 12
_NATIVE_OPSET = 18
#: Domain that hides already-converted nodes from onnx.version_converter.
_HIDDEN_DOMAIN = "dcn_onnxscript.converted"
#: The public functions whose calls are expanded, by name: (function, lowest opset its body can be emitted
#: for, what to call it in the error below that opset).
_MIN_OPSETS = {
    "gather": (MIN_OPSET, "deform_conv2d"),
    "grid_sample": (grid_sample.MIN_OPSET, "impl='grid_sample' (deform_conv2d through ONNX GridSample)"),
}
_PUBLIC_FUNCTIONS = {
    f.name: (f, *_MIN_OPSETS[impl]) for impl, variants in PORTABLE.items() for f in variants.values()
}

_original_convert_version: Optional[Callable] = None


def install() -> None:
    """Wrap the dynamo exporter's version conversion (idempotent)."""
    global _original_convert_version
    if _original_convert_version is None:
        _original_convert_version = onnxscript_apis.convert_version
        # An instance attribute of torch's lazy module object wins over the module it stands for.
        onnxscript_apis.convert_version = convert_version


def uninstall() -> None:
    """Undo :func:`install` (idempotent)."""
    global _original_convert_version
    if _original_convert_version is not None:
        del onnxscript_apis.convert_version
        _original_convert_version = None


def convert_version(model: ir.Model, target_version: int) -> ir.Model:
    """The exporter's conversion of ``model`` (opset 18) to ``target_version``, with the deformable
    convolution calls expanded for the target opset first when it is below 18."""
    original = _original_convert_version or onnxscript_apis.convert_version
    if target_version >= _NATIVE_OPSET or not _expand_calls(model, target_version):
        return original(model, target_version)
    model.opset_imports[_HIDDEN_DOMAIN] = 1
    model = original(model, target_version)
    for node in model.graph:
        if node.domain == _HIDDEN_DOMAIN:
            node.domain = ""
    model.opset_imports.pop(_HIDDEN_DOMAIN, None)
    return model


def _expand_calls(model: ir.Model, opset: int) -> bool:
    """Replace each call of a public deformable-convolution function in the main graph by its body for
    ``opset``, under the hidden domain. Returns whether there was any."""
    calls = [n for n in model.graph if n.domain == functions.DOMAIN and n.op_type in _PUBLIC_FUNCTIONS]
    for call in calls:  # all checked before the model is touched
        _, min_opset, what = _PUBLIC_FUNCTIONS[call.op_type]
        if opset < min_opset:
            hint = "" if min_opset == MIN_OPSET else f"; use impl='gather' below opset {min_opset}"
            raise ValueError(f"{what} needs opset >= {min_opset}, got opset_version={opset}{hint}")
    for call in calls:
        emitted: list[ir.Node] = []
        attributes = {name: attr.value for name, attr in call.attributes.items()}
        outputs = inline_function(_PUBLIC_FUNCTIONS[call.op_type][0], list(call.inputs), attributes,
                                  _ir_emitter(emitted), opset, call.inputs[0].dtype.value)
        model.graph.insert_before(call, emitted)
        _replace_outputs(call.outputs, outputs)
        model.graph.remove(call, safe=True)
    return bool(calls)


def _ir_emitter(emitted: list[ir.Node]):
    def emit(op_type: str, inputs: Sequence[ir.Value], attributes: Mapping[str, Any], n_outputs: int):
        attributes = {k: ir.tensor(v) if isinstance(v, np.ndarray) else v for k, v in attributes.items()}
        node = ir.node(op_type, list(inputs), attributes, domain=_HIDDEN_DOMAIN, num_outputs=n_outputs)
        emitted.append(node)
        return node.outputs

    return emit


def _replace_outputs(old: Sequence[ir.Value], new: Sequence[ir.Value]) -> None:
    for old_value, new_value in zip(old, new):
        new_value.name, new_value.type, new_value.shape = old_value.name, old_value.type, old_value.shape
        old_value.name = None
        old_value.replace_all_uses_with(new_value, replace_graph_outputs=True)
