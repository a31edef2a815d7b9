"""``torch.onnx.export(..., dynamo=True)``: the translation of ``torchvision::deform_conv2d``.

The translation is a trace-time function (like onnxscript's ``trace_only`` torch_lib ops): it reads the
layer's static facts (kernel, strides, pads, groups, channels, dtype) and writes the lowering's nodes
straight into the exporter's graph, so the exported model holds a flat, short run of standard ops per
layer. :func:`register` makes it the translation of every export (through torch_lib's registry, see
:mod:`dcn_onnxscript.export._internals`); :func:`translation_table` gives it for one export.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)
import torch
import torchvision  # noqa: F401  (loads the torchvision::deform_conv2d operator)
from onnxscript import opset18, version_converter
from onnxscript.values import Opset, TracedOnnxFunction

from dcn_onnxscript import _autoregister
from dcn_onnxscript.export import _internals
from dcn_onnxscript.lowering import opsets, table
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.validation import checked_layer, static_shape

_NATIVE = "native"
#: The names :func:`register` and :func:`translation_table` accept: the lowerings of the table, and
#: "native" (ONNX ``DeformConv``, torch's own translation, opset >= 19).
IMPLS = (*table.NAMES, _NATIVE)
NATIVE_MIN_OPSET = 19
_DOMAIN = Opset("dcn_onnxscript", 1)


class TracerEmitter(Emitter):
    """Writes into the graph torch.onnx is building (of opset ``opset``), through onnxscript's opset-18 ops:
    every op the lowerings use has the same form from 18 on. torch 2.6's tracer gives a node as many outputs
    as its schema lists (one for ``Split``): there ``split`` writes ``Slice`` nodes."""

    def __init__(self, opset: int) -> None:
        super().__init__(opset)
        self.multiple_outputs = _internals.tracer_writes_multiple_outputs()

    def _node(self, op_type: str, inputs: list, attributes: dict[str, Any], outputs: int):
        return getattr(opset18, op_type)(*inputs, **attributes)

    def _constant(self, array: np.ndarray):
        return opset18.Constant(value=ir.tensor(array))


def _portable_translation(impl: str) -> TracedOnnxFunction:
    """The translation of ``torchvision::deform_conv2d`` through lowering ``impl``."""

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dilation_h: int, dilation_w: int, groups: int, offset_groups: int, use_mask: bool):
        """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""  # noqa: E501
        use_bias = not _is_zero(bias)
        layer = checked_layer(
            input_shape=static_shape(input), weight_shape=static_shape(weight), offset_shape=static_shape(offset),
            mask_shape=static_shape(mask), bias_shape=static_shape(bias), stride=(stride_h, stride_w),
            padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w), groups=groups, offset_groups=offset_groups,
            dtype=int(input.dtype), bias=use_bias, mask=use_mask)
        opset = _internals.exporter_opset()
        return table.build(_lowering_at(impl, opset, layer.dtype), TracerEmitter(opset), layer, input, weight,
                           offset, bias if use_bias else None, mask if use_mask else None)

    return TracedOnnxFunction(_DOMAIN, deform_conv2d)


def _lowering_at(impl: str, exporter_opset: int, dtype: int) -> str:
    """The lowering ``impl`` stands for in a graph of ``exporter_opset`` for a layer of type ``dtype``. torch
    builds every export asked for at opset 18 or below at 18 and converts it afterwards, so there "auto"
    cannot know the final opset and takes the lowering that every opset has ("gather"); above 18 the
    graph's opset is the final one."""
    if impl == table.AUTO and exporter_opset <= opsets.BUILD_OPSET:
        return table.resolve(impl, opsets.MIN_OPSET, dtype)
    return table.resolve(impl, exporter_opset, dtype)


def _is_zero(value) -> bool:
    """Whether an exporter value is known at export time to be all zeros: torchvision passes
    ``torch.zeros(out_channels)`` as the bias of a layer without one, which reaches the exporter as a
    constant or as ``Expand(0, shape)``."""
    tensor = ir.convenience.get_const_tensor(value)
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Expand":
        tensor = ir.convenience.get_const_tensor(producer.inputs[0])
    return tensor is not None and not tensor.numpy().any()


def _native_translation(*args):
    """torch's own translation (ONNX ``DeformConv``), refusing opsets that do not have the op."""
    if _internals.exporter_opset() < NATIVE_MIN_OPSET:
        raise ValueError(f"impl='native' maps deform_conv2d to ONNX DeformConv, which needs opset_version >= "
                         f"{NATIVE_MIN_OPSET}; use impl='auto' (the default) for lower opsets")
    return _internals.original_translation()(*args)


_TRANSLATIONS = {name: _portable_translation(name) for name in table.NAMES}
_TRANSLATIONS[_NATIVE] = TracedOnnxFunction(_DOMAIN, _native_translation)


def _constant(value: Optional[ir.Value]) -> Optional[np.ndarray]:
    """``value``'s contents when it is an initializer or a constant, or a ``Reshape``/``Cast`` of one."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        return tensor.numpy()
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("Reshape", "Cast"):
        return None
    data = _constant(node.inputs[0])
    if data is None:
        return None
    if node.op_type == "Cast":
        return data.astype(ir.DataType(node.attributes.get_int("to")).numpy())
    shape = _constant(node.inputs[1])
    return None if shape is None or 0 in shape else data.reshape(shape)


def fold_tap_weights(model: ir.Model) -> None:
    """Fold the per-tap kernels of the grid_sample lowering into initializers.

    At translation time torch has not yet given the weights their values, so the translation splits W at
    run time (``Reshape``, ``Cast``, ``Split``); onnxscript's optimizer folds no ``Split`` (it has more than
    one output). The exporter's conversion step, which runs next, has the values: every ``Split`` of the main
    graph whose input is an initializer, or a ``Reshape``/``Cast`` of one, and whose outputs all feed
    ``Conv`` kernels becomes one initializer per part; the nodes left unused are removed."""
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        if not all(use.node.op_type == "Conv" and use.idx == 1 for out in node.outputs for use in out.uses()):
            continue
        data = _constant(node.inputs[0])
        if data is None:
            continue
        parts = np.split(data, len(node.outputs), axis=node.attributes.get_int("axis", 0))
        for number, (output, part) in enumerate(zip(node.outputs, parts)):
            folded = ir.Value(name=f"{node.name or 'split'}_tap{number}",
                              const_value=ir.tensor(np.ascontiguousarray(part)))
            folded.type, folded.shape = ir.TensorType(folded.const_value.dtype), ir.Shape(part.shape)
            graph.register_initializer(folded)
            output.replace_all_uses_with(folded)
    ir.passes.common.RemoveUnusedNodesPass()(model)


def _convert_version(model: ir.Model, target_version: int, original: Callable) -> ir.Model:
    """The exporter's conversion of ``model`` to ``target_version`` through :mod:`dcn_onnxscript.lowering.opsets`,
    with onnxscript's public converter (ONNX's C++ one as the fallback): torch 2.6–2.8's own step refuses
    every opset below 18. The per-tap kernels are folded first (:func:`fold_tap_weights`)."""
    fold_tap_weights(model)
    if target_version >= opsets.BUILD_OPSET:
        return original(model, target_version)

    def convert(m: ir.Model, target: int) -> ir.Model:
        version_converter.convert_version(m, target, fallback=True)
        return m

    return opsets.convert_version(model, target_version, convert)


def _translation(impl: str) -> TracedOnnxFunction:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return _TRANSLATIONS[impl]


def translation_table(impl: str = table.DEFAULT) -> dict[Callable, Callable]:
    """``{torch.ops.torchvision.deform_conv2d.default: translation}`` for ``torch.onnx.export(...,
    custom_translation_table=translation_table())``; works whether or not :func:`register` is active."""
    return {torch.ops.torchvision.deform_conv2d.default: _translation(impl)}


def register(impl: str = table.DEFAULT) -> None:
    """Make every ``torch.onnx.export`` translate ``torchvision::deform_conv2d`` through ``impl`` (one of
    :data:`IMPLS`; done with the default, "auto", on ``import dcn_onnxscript``): the dynamo exporter with
    ``impl``, the TorchScript exporter (``dynamo=False``) with "gather". Idempotent."""
    from dcn_onnxscript.export import torchscript

    _internals.set_translation(_translation(impl))
    _internals.wrap_convert_version(_convert_version)
    torchscript.register()


def unregister() -> None:
    """Restore torch's default translation (native ONNX ``DeformConv``, opset >= 19) and the TorchScript
    exporter's own behaviour (no symbolic). Idempotent."""
    from dcn_onnxscript.export import torchscript

    _internals.restore_translation()
    _internals.unwrap_convert_version()
    torchscript.unregister()


def is_registered() -> bool:
    """Whether :func:`register` is in effect."""
    return _internals.current_translation() in _TRANSLATIONS.values()



_autoregister.finish_deferred()
