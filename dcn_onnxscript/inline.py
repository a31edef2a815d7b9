"""Expand a script function into primitive ONNX nodes of a chosen opset, through a node-emitting callback.

The FunctionProtos of :mod:`dcn_onnxscript.functions` (opset 18) stay the single source of truth; this
module replays their bodies node by node, resolving attribute references and nested calls, and rewrites
the few nodes whose form changed after the target opset:

* ``Constant`` with ``value_int(s)``/``value_float(s)`` -> ``Constant`` with a tensor ``value`` (the form
  every opset and every runtime reads),
* ``Shape(start, end)`` (opset 15) -> ``Shape`` + ``Slice`` at every opset (the TorchScript exporter's
  C++ shape inference crashes on ``Reshape`` shapes built from ``Shape(start, end)`` at opset ≥ 15),
* ``CastLike(x, like)`` (opset 15) -> ``Cast(x, to=type of like)`` at every opset: the replay tracks
  every value's type (the TorchScript exporter's per-node shape inference crashes on some ``CastLike``
  results at opset ≥ 15, and ``Cast`` is older and equivalent),
* ``Unsqueeze``/``Squeeze`` with an ``axes`` input (opset 13) -> ``axes`` attribute below 13,
* ``ReduceMin`` with an ``axes`` input (opset 18) -> ``axes`` attribute below 18.

Users: the TorchScript symbolic (:mod:`dcn_onnxscript.torchscript`, callback ``g.op``) and the opset
conversion of dynamo exports (:mod:`dcn_onnxscript.opsets`).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Mapping, Optional, Sequence, TypeVar

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxscript import OnnxFunction

from dcn_onnxscript.functions import DOMAIN
from dcn_onnxscript.protos import function_protos

V = TypeVar("V")
#: emit(op_type, inputs, attributes, number of outputs) -> outputs. A ``Constant`` comes with a numpy
#: array as its ``value`` attribute; other attribute values are Python ints, floats, lists or strings.
Emit = Callable[[str, Sequence[V], Mapping[str, Any], int], Sequence[V]]

#: Ops whose output is BOOL; every other op's output type is fixed below or follows an input.
_BOOLEAN = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "IsNaN",
            "IsInf"}


def inline_function(function: OnnxFunction, inputs: Sequence[V], attributes: Mapping[str, Any],
                    emit: Emit, opset: int, float_type: int) -> Sequence[V]:
    """Emit the body of ``function`` (and of everything it calls) on ``inputs``, for ONNX ``opset``.

    ``inputs`` are the callback's values for the function's inputs, all of ``float_type`` (a
    ``TensorProto`` data type: the ``T`` of the functions); ``attributes`` override the function's
    attribute defaults. Returns the callback's values of the function's outputs.
    """
    inliner = _Inliner(function, emit, opset)
    for value in inputs:
        inliner.typed(value, float_type)
    return inliner.call(function.name, list(inputs), dict(attributes))


class _Inliner(Generic[V]):
    def __init__(self, function: OnnxFunction, emit: Emit, opset: int) -> None:
        self.protos = {proto.name: proto for proto in function_protos(function)}
        self.emit = emit
        self.opset = opset
        # Values are tracked by id(); keeping every value alive keeps the ids unique.
        self.alive: list = []
        self.types: dict[int, int] = {}  # value -> its TensorProto data type
        self.constants: dict[int, np.ndarray] = {}  # constant value -> its array

    def typed(self, value, data_type: int):
        self.alive.append(value)
        self.types[id(value)] = data_type
        return value

    def call(self, name: str, inputs: list, attributes: dict) -> list:
        proto = self.protos[name]
        values = dict(zip(proto.input, inputs))
        bound = {a.name: helper.get_attribute_value(a) for a in proto.attribute_proto}
        bound.update(attributes)
        for node in proto.node:
            node_attributes = {a.name: self._attribute(a, bound) for a in node.attribute}
            node_attributes = {k: v for k, v in node_attributes.items() if v is not None}
            node_inputs = [values[i] if i else None for i in node.input]
            if node.domain == DOMAIN:
                outputs = self.call(node.op_type, node_inputs, node_attributes)
            else:
                outputs = self._primitive(node.op_type, node_inputs, node_attributes, len(node.output))
            values.update(zip(node.output, outputs))
        return [values[o] for o in proto.output]

    @staticmethod
    def _attribute(attribute: onnx.AttributeProto, bound: Mapping[str, Any]) -> Any:
        if attribute.ref_attr_name:
            return bound.get(attribute.ref_attr_name)
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):  # a STRING attribute (GridSample's mode): str, as Emit promises
            return value.decode()
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value

    def _primitive(self, op_type: str, inputs: list, attributes: dict, n_outputs: int) -> list:
        opset = self.opset
        if op_type == "Constant":
            return [self._constant(_constant_array(attributes))]
        if op_type == "Shape" and ("start" in attributes or "end" in attributes):
            (shape,) = self._emit("Shape", inputs, {}, 1)
            start, end = attributes.get("start", 0), attributes.get("end", np.iinfo(np.int64).max)
            return self._emit("Slice", [shape, self._ints([start]), self._ints([end]), self._ints([0])], {}, 1)
        if op_type == "CastLike":
            return self._emit("Cast", inputs[:1], {"to": self.types[id(inputs[1])]}, 1)
        if op_type in ("Unsqueeze", "Squeeze") and opset < 13 or op_type == "ReduceMin" and opset < 18:
            if len(inputs) > 1 and inputs[1] is not None:
                attributes = {**attributes, "axes": self.constants[id(inputs[1])].tolist()}
            return self._emit(op_type, inputs[:1], attributes, n_outputs)
        return self._emit(op_type, inputs, attributes, n_outputs)

    def _emit(self, op_type: str, inputs: list, attributes: dict, n_outputs: int) -> list:
        outputs = list(self.emit(op_type, inputs, attributes, n_outputs))
        data_type = self._output_type(op_type, inputs, attributes)
        return [self.typed(output, data_type) for output in outputs]

    def _output_type(self, op_type: str, inputs: list, attributes: dict) -> Optional[int]:
        """The data type of the outputs of a node of the functions (all outputs of each op there share
        one type); ``None`` where unknown."""
        if op_type in _BOOLEAN:
            return onnx.TensorProto.BOOL
        if op_type in ("Shape", "Size"):
            return onnx.TensorProto.INT64
        if op_type == "Cast":
            return attributes["to"]
        typed_like = inputs[1] if op_type in ("Where", "CastLike") else inputs[0]
        return self.types.get(id(typed_like))

    def _constant(self, array: np.ndarray):
        (value,) = self.emit("Constant", [], {"value": array}, 1)
        self.typed(value, helper.np_dtype_to_tensor_dtype(array.dtype))
        self.constants[id(value)] = array
        return value

    def _ints(self, values: Sequence[int]):
        return self._constant(np.asarray(values, dtype=np.int64))


def _constant_array(attributes: Mapping[str, Any]) -> np.ndarray:
    """The value of a ``Constant`` node's attributes as a numpy array."""
    if "value" in attributes:
        return np.asarray(attributes["value"])
    for name, dtype in (("value_int", np.int64), ("value_ints", np.int64), ("value_float", np.float32),
                        ("value_floats", np.float32)):
        if name in attributes:
            return np.asarray(attributes[name], dtype=dtype)
    raise NotImplementedError(f"Constant with attributes {sorted(attributes)}")
