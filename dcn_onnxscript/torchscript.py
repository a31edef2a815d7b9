"""The legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): a symbolic for
``torchvision::deform_conv2d`` that emits the body of the same ONNX function, inlined through ``g.op``
for the export's opset (see :mod:`dcn_onnxscript.inline`).

torchvision registers no TorchScript symbolic for ``deform_conv2d`` at all, so without this the legacy
exporter fails with ``UnsupportedOperatorError`` at every opset.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch.onnx import symbolic_helper

from dcn_onnxscript.lowerings import PORTABLE
from dcn_onnxscript.inline import inline_function
from dcn_onnxscript.validation import check_deform_conv2d_args

_QUALIFIED_NAME = "torchvision::deform_conv2d"
#: Lowest opset of the symbolic: the registry then serves it at every opset from there up.
MIN_OPSET = 12

_ONNX_TYPES = {"Half": onnx.TensorProto.FLOAT16, "Float": onnx.TensorProto.FLOAT,
               "Double": onnx.TensorProto.DOUBLE, "BFloat16": onnx.TensorProto.BFLOAT16}


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def deform_conv2d_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                           dilation_h, dilation_w, groups, offset_groups, use_mask):
    """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""
    check_deform_conv2d_args(
        input_shape=symbolic_helper._get_tensor_sizes(input),
        weight_shape=symbolic_helper._get_tensor_sizes(weight),
        offset_shape=symbolic_helper._get_tensor_sizes(offset),
        mask_shape=symbolic_helper._get_tensor_sizes(mask) if use_mask else None,
        bias_shape=symbolic_helper._get_tensor_sizes(bias),
        stride=(stride_h, stride_w), padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w),
        groups=groups, offset_groups=offset_groups,
    )
    # torchvision passes a zero bias for a layer without one: adding it costs one Add.
    function = PORTABLE["gather"][(True, use_mask)]
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    attributes = dict(strides=[stride_h, stride_w], pads=[pad_h, pad_w, pad_h, pad_w],
                      dilations=[dilation_h, dilation_w], group=groups, offset_group=offset_groups)

    def emit(op_type: str, node_inputs: Sequence, node_attributes: Mapping[str, Any], n_outputs: int):
        outputs = g.op(op_type, *node_inputs, outputs=n_outputs,
                       **{_suffixed(k): _jit_value(v) for k, v in node_attributes.items()})
        return list(outputs) if n_outputs > 1 else [outputs]

    (output,) = inline_function(function, inputs, attributes, emit, g.opset,
                                _ONNX_TYPES[input.type().scalarType()])
    return output


def _suffixed(name: str) -> str:
    """``g.op`` reads an attribute's kind from a suffix: ``axis_i``, ``value_t``. The functions' bodies
    hold only the tensor ``value`` of ``Constant`` and int or int-list attributes."""
    return f"{name}_t" if name == "value" else f"{name}_i"


def _jit_value(value: Any) -> Any:
    return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value


def register() -> None:
    """Serve ``torchvision::deform_conv2d`` in ``torch.onnx.export(..., dynamo=False)`` at every opset
    from :data:`MIN_OPSET` up."""
    torch.onnx.register_custom_op_symbolic(_QUALIFIED_NAME, deform_conv2d_symbolic, MIN_OPSET)


def unregister() -> None:
    """Undo :func:`register`."""
    torch.onnx.unregister_custom_op_symbolic(_QUALIFIED_NAME, MIN_OPSET)
