"""The legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): a symbolic for
``torchvision::deform_conv2d`` that writes the default lowering ("auto": grid_sample from opset 16, gather
below and for float64 layers) through ``g.op`` at the export's opset, which the symbolic knows. The
weights are graph values here; the exporter's constant folding turns the lowering's steps on them (the
per-tap kernels, the weight matrix) into initializers afterwards.

torchvision registers no TorchScript symbolic for ``deform_conv2d``, so without this the legacy exporter
fails with ``UnsupportedOperatorError`` at every opset (:mod:`dcn_onnxscript.export.registration`
registers it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from torch.onnx import symbolic_helper

from dcn_onnxscript.export import _internals
from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.validation import checked_layer

_ONNX_TYPES = {"Half": onnx.TensorProto.FLOAT16, "Float": onnx.TensorProto.FLOAT,
               "Double": onnx.TensorProto.DOUBLE, "BFloat16": onnx.TensorProto.BFLOAT16}


class GraphEmitter(Emitter):
    """Writes through a TorchScript symbolic's ``g.op``; ``weights`` are the layer's parameter values (W, B),
    which the exporter's constant folding turns into initializers."""

    def __init__(self, g, weights: tuple = ()) -> None:
        super().__init__(g.opset)
        self.g = g
        self.weights = weights

    def _node(self, op_type: str, inputs: list, attributes: dict[str, Any], outputs: int):
        return self.g.op(op_type, *inputs, **{_suffixed(k, v): v for k, v in attributes.items()}, outputs=outputs)

    def _constant(self, array: np.ndarray):
        return self.g.op("Constant", value_t=self._tensor(array))

    def split(self, value: Any, parts: int, size: int, axis: int) -> list:
        """As :meth:`Emitter.split`, but one ``Slice`` per part where ``value`` is computed from the weights and
        constants alone: the exporter's constant folding folds ``Slice``, not ``Split``, so a layer's
        per-tap kernels become initializers."""
        if parts == 1 or not self._from_weights(value):
            return super().split(value, parts, size, axis)
        step = size // parts
        return [self.emit("Slice", [value, np.array([start]), np.array([start + step]), np.array([axis])], {})
                for start in range(0, size, step)]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array))

    def _from_weights(self, value: Any) -> bool:
        """Whether a TorchScript value is computed from :attr:`weights` and constants alone: a walk up its
        producers (iterative, each value once: a value computed from the image reaches back through the whole
        network, deeper than Python's recursion limit in a ResNet-50)."""
        weights = {weight.unique() for weight in self.weights}
        pending, seen = [value], set()
        while pending:
            value = pending.pop()
            if value.unique() in seen or value.unique() in weights:
                continue
            seen.add(value.unique())
            node = value.node()
            if node.kind() in _CONSTANTS:
                continue
            if not node.kind().startswith("onnx::"):
                return False
            pending.extend(node.inputs())
        return True


#: Node kinds of constants in a TorchScript graph.
_CONSTANTS = ("prim::Constant", "onnx::Constant")


def _suffixed(name: str, value: Any) -> str:
    """``g.op`` reads an attribute's kind from a suffix: ``axis_i``, ``mode_s``, ``value_t``."""
    kind = {str: "s", float: "f", torch.Tensor: "t"}.get(type(value), "i")
    return f"{name}_{kind}"


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def deform_conv2d_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                           dilation_h, dilation_w, groups, offset_groups, use_mask):
    """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""  # noqa: E501
    sizes = _internals.tensor_sizes
    layer = checked_layer(
        input_shape=sizes(input), weight_shape=sizes(weight), offset_shape=sizes(offset), mask_shape=sizes(mask),
        bias_shape=sizes(bias), stride=(stride_h, stride_w), padding=(pad_h, pad_w),
        dilation=(dilation_h, dilation_w), groups=groups, offset_groups=offset_groups,
        dtype=_ONNX_TYPES[input.type().scalarType()], bias=True, mask=bool(use_mask))
    # torchvision passes a zero bias for a layer without one: adding it costs one Add.
    op = GraphEmitter(g, weights=(weight, bias))
    return table.build(table.AUTO, op, layer, input, weight, offset, bias, mask if use_mask else None)
