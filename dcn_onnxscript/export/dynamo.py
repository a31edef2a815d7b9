"""``torch.onnx.export(..., dynamo=True)``: the translation of ``torchvision::deform_conv2d`` and the
conversion step that lowers it.

The translation cannot see the model's final opset (torch builds exports asked for at opset 18 or below at
18 and converts them afterwards) nor the weights' values (torch gives the initializers their values after
translating). So it checks the layer and writes one placeholder node per layer (``DeformConv``'s inputs and
attributes, in :data:`dcn_onnxscript.rewrite.rewriter.PENDING_DOMAIN`, plus the lowering's name); torch's
conversion step, which every export runs with the final opset and the weights in place, then lowers each
placeholder through the rewriter (:func:`~dcn_onnxscript.rewrite.rewriter.lower_pending`): "auto" chosen
for that opset and dtype, weights folded into initializers, static sizes written as constants, and the
rest of the model converted by the schema rules of :mod:`dcn_onnxscript.rewrite.opsets`. A model holding
no placeholder goes through torch's own step unchanged.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnx.defs
import onnx_ir as ir
import torch  # noqa: F401  (torch before onnxscript's torch_lib)
from onnx.defs import OpSchema
from onnxscript import optimizer, version_converter
from onnxscript.values import Op, Opset

from dcn_onnxscript.export import _internals
from dcn_onnxscript.export.registration import NATIVE, NATIVE_MIN_OPSET
from dcn_onnxscript.lowering.layer import OffsetOrder
from dcn_onnxscript.lowering.validation import checked_layer, static_shape
from dcn_onnxscript.rewrite import opsets, rewriter

__all__ = ["NATIVE_MIN_OPSET", "convert_version", "placeholder", "translate"]


def _placeholder() -> Op:
    """The placeholder op: ONNX ``DeformConv`` (its newest schema's inputs, types and attributes) in
    :data:`~dcn_onnxscript.rewrite.rewriter.PENDING_DOMAIN`, plus the STRING attributes ``impl`` and
    ``offset_order`` (:data:`~dcn_onnxscript.rewrite.rewriter.OFFSET_ORDER`)."""
    native = onnx.defs.get_schema("DeformConv", onnx.defs.onnx_opset_version(), "")
    formal = [OpSchema.FormalParameter(p.name, p.type_str, param_option=p.option) for p in native.inputs]
    schema = OpSchema(
        native.name, rewriter.PENDING_DOMAIN, 1, doc="deform_conv2d, lowered at torch.onnx's conversion step",
        inputs=formal, outputs=[OpSchema.FormalParameter(p.name, p.type_str) for p in native.outputs],
        type_constraints=[(c.type_param_str, c.allowed_type_strs, c.description) for c in native.type_constraints],
        attributes=[*(OpSchema.Attribute(a.name, a.type, a.description) for a in native.attributes.values()),
                    OpSchema.Attribute("impl", OpSchema.AttrType.STRING, "the lowering's name"),
                    OpSchema.Attribute(rewriter.OFFSET_ORDER, OpSchema.AttrType.STRING,
                                       "the offset pairs' order, 'yx' or 'xy'")])
    return Op(Opset(rewriter.PENDING_DOMAIN, 1), native.name, schema)


_PLACEHOLDER = _placeholder()


def translate(impl: str, input, weight, offset, mask, bias, stride: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int], groups: int, offset_groups: int, use_mask: bool):
    """The translation of one ``torchvision::deform_conv2d`` call (inputs are the exporter's values):
    torch's own for ``impl="native"``, else the checked placeholder. ``ValueError`` naming the argument for
    an invalid layer."""
    if impl == NATIVE:
        if _internals.exporter_opset() < NATIVE_MIN_OPSET:
            raise ValueError(f"impl='native' maps deform_conv2d to ONNX DeformConv, which needs opset_version >= "
                             f"{NATIVE_MIN_OPSET}; use impl='auto' (the default) for lower opsets")
        return _internals.original_translation()(input, weight, offset, mask, bias, *stride, *padding, *dilation,
                                                 groups, offset_groups, use_mask)
    use_bias = not _is_zero(bias)
    checked_layer(
        input_shape=static_shape(input), weight_shape=static_shape(weight), offset_shape=static_shape(offset),
        mask_shape=static_shape(mask), bias_shape=static_shape(bias), stride=stride, padding=padding,
        dilation=dilation, groups=groups, offset_groups=offset_groups, dtype=int(input.dtype), bias=use_bias,
        mask=use_mask)
    return placeholder(impl, input, weight, offset, bias if use_bias else None, mask if use_mask else None, stride,
                       padding, dilation, groups, offset_groups)


def placeholder(impl: str, input, weight, offset, bias, mask, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], groups: int, offset_groups: int,
                offset_order: OffsetOrder = OffsetOrder.YX):
    """The placeholder of one checked deform_conv2d layer (``bias``, ``mask``: ``None`` where absent; ``offset``
    pairs in ``offset_order``), lowered through ``impl`` at the conversion step."""
    return _PLACEHOLDER(input, weight, offset, bias, mask, strides=list(stride), pads=[*padding, *padding],
                        dilations=list(dilation), group=groups, offset_group=offset_groups, impl=impl,
                        **{rewriter.OFFSET_ORDER: offset_order.value})


def _is_zero(value) -> bool:
    """Whether an exporter value is known at export time to be all zeros: torchvision passes
    ``torch.zeros(out_channels)`` as the bias of a layer without one, which reaches the exporter as a
    constant or as ``Expand(0, shape)``."""
    tensor = ir.convenience.get_const_tensor(value)
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Expand":
        tensor = ir.convenience.get_const_tensor(producer.inputs[0])
    return tensor is not None and not tensor.numpy().any()


#: The first opset whose Reshape has the ``allowzero`` attribute (14).
RESHAPE_ALLOWZERO_OPSET = min(version for version in range(1, onnx.defs.onnx_opset_version() + 1)
                              if "allowzero" in onnx.defs.get_schema("Reshape", version).attributes)


def convert_version(model: ir.Model, target_version: int, original: Callable[[ir.Model, int], ir.Model]) -> ir.Model:
    """The exporter's conversion step (``original(model, target_version)`` is torch's): a model without
    placeholders goes to ``original`` unchanged; otherwise they are lowered at ``target_version`` and the
    model converted (see the module docstring)."""
    if not rewriter.pending_nodes(model):
        return original(model, target_version)
    # torch imports the opsets its nodes use: a model of placeholders alone imports no ONNX opset yet
    model.opset_imports.setdefault("", target_version)
    current = opsets.default_opset(model)
    if target_version < RESHAPE_ALLOWZERO_OPSET <= current:
        # torch optimizes after this step, and onnxscript's optimizer writes Reshape(allowzero=1) whatever the
        # opset (invalid below 14): optimized here first, at the exporter's opset, the model leaves it nothing
        # to rewrite after the conversion.
        optimizer.optimize(model)

    def convert(m: ir.Model, target: int) -> ir.Model:
        if target > current:
            return original(m, target)
        # torch 2.6–2.8's own step refuses every opset below 18: onnxscript's converter, ONNX's C++ one as the
        # fallback, for what the schema rules leave.
        version_converter.convert_version(m, target, fallback=True)
        return m

    return rewriter.lower_pending(model, target_version, convert)
