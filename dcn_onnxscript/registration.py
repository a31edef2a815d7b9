"""Hooking the ONNX function into ``torch.onnx.export`` as the translation of ``torchvision::deform_conv2d``.

The dynamo exporter builds its registry from onnxscript's torch_lib registry at every export, so
:func:`register` swaps the torch_lib entry for ``torchvision::deform_conv2d`` and :func:`unregister` puts the
original (native ``DeformConv``) back. :func:`translation_table` gives the same translation for a single
export through ``custom_translation_table=``.
"""

from __future__ import annotations

from typing import Callable, Optional

import onnx_ir as ir
import torch
import torchvision  # noqa: F401  (loads the torchvision::deform_conv2d operator)
from onnxscript import OnnxFunction, evaluator
from onnxscript.function_libs.torch_lib import registration as torchlib_registration
from onnxscript.values import TracedOnnxFunction

from dcn_onnxscript import functions, opsets, torchscript
from dcn_onnxscript.lowerings import PORTABLE, Variants
from dcn_onnxscript.validation import check_deform_conv2d_args, static_shape

_QUALIFIED_NAME = "torchvision::deform_conv2d"


def _portable_translation(variants: Variants) -> TracedOnnxFunction:
    """The translation of ``torchvision::deform_conv2d`` into a call of one of ``variants``."""

    def _deform_conv2d_translation(
        input,
        weight,
        offset,
        mask,
        bias,
        stride_h: int,
        stride_w: int,
        pad_h: int,
        pad_w: int,
        dilation_h: int,
        dilation_w: int,
        groups: int,
        offset_groups: int,
        use_mask: bool,
    ):
        """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""
        check_deform_conv2d_args(
            input_shape=static_shape(input),
            weight_shape=static_shape(weight),
            offset_shape=static_shape(offset),
            mask_shape=static_shape(mask) if use_mask else None,
            bias_shape=static_shape(bias),
            stride=(stride_h, stride_w),
            padding=(pad_h, pad_w),
            dilation=(dilation_h, dilation_w),
            groups=groups,
            offset_groups=offset_groups,
        )
        attributes = dict(
            strides=[stride_h, stride_w],
            pads=[pad_h, pad_w, pad_h, pad_w],
            dilations=[dilation_h, dilation_w],
            group=groups,
            offset_group=offset_groups,
        )
        use_bias = not _is_zero(bias)
        function = variants[(use_bias, use_mask)]
        # DeformConv's input order: the bias before the mask.
        inputs = (input, weight, offset) + ((bias,) if use_bias else ()) + ((mask,) if use_mask else ())
        _record_called_functions(function)
        return function(*inputs, **attributes)

    return TracedOnnxFunction(functions.dcn, _deform_conv2d_translation)


def _record_called_functions(function: OnnxFunction) -> None:
    """Add the helper functions that ``function`` calls to the model being exported: the exporter adds the
    function it is handed but not the functions that function calls."""
    recorder = evaluator.default()
    recorded = getattr(recorder, "functions", None)
    if recorded is None:  # not inside torch.onnx's graph builder (e.g. eager evaluation)
        return
    for callee in function.function_ir.get_called_functions().values():
        recorded.setdefault((callee.function_ir.domain, callee.name, ""), callee)


def _is_zero(value) -> bool:
    """Whether an exporter value is known at export time to be all zeros: torchvision passes
    ``torch.zeros(out_channels)`` as the bias of a layer without one, which reaches the exporter as a
    constant or as ``Expand(0, shape)``."""
    tensor = ir.convenience.get_const_tensor(value)
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Expand":
        tensor = ir.convenience.get_const_tensor(producer.inputs[0])
    return tensor is not None and not tensor.numpy().any()


_original_overloads: Optional[list] = None
#: The lowerings :func:`register` and :func:`translation_table` accept: the portable function of
#: :mod:`dcn_onnxscript.functions` ("gather", any opset from 12), the one of
#: :mod:`dcn_onnxscript.grid_sample` ("grid_sample", ONNX ``GridSample``, opset ≥ 16; lower opsets are
#: refused at export by :mod:`dcn_onnxscript.opsets`) and ONNX ``DeformConv`` ("native", torch's own
#: mapping, opset ≥ 19).
IMPLS = ("gather", "grid_sample", "native")
_NATIVE_MIN_OPSET = 19


def _native_translation(*args):
    """torch's own translation (ONNX ``DeformConv``), refusing opsets that do not have the op."""
    opset = evaluator.default().opset.version  # the exporter's registry opset: max(18, requested)
    if opset < _NATIVE_MIN_OPSET:
        raise ValueError(f"impl='native' maps deform_conv2d to ONNX DeformConv, which needs opset_version >= "
                         f"{_NATIVE_MIN_OPSET}; use impl='gather' for lower opsets")
    return _native_overload()(*args)


def _native_overload():
    return (_original_overloads or _torchlib_entry().overloads)[0]


_TRANSLATIONS = {
    "gather": _portable_translation(PORTABLE["gather"]),
    "grid_sample": _portable_translation(PORTABLE["grid_sample"]),
    "native": TracedOnnxFunction(functions.dcn, _native_translation),
}


def _translation(impl: str) -> TracedOnnxFunction:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return _TRANSLATIONS[impl]


def translation_table(impl: str = "gather") -> dict[Callable, Callable]:
    """``{torch.ops.torchvision.deform_conv2d.default: translation}`` for ``torch.onnx.export(...,
    custom_translation_table=translation_table())``; works whether or not :func:`register` is active."""
    return {torch.ops.torchvision.deform_conv2d.default: _translation(impl)}


def register(impl: str = "gather") -> None:
    """Make every ``torch.onnx.export`` translate ``torchvision::deform_conv2d`` through ``impl`` (one of
    :data:`IMPLS`; done with "gather" on ``import dcn_onnxscript``). With "gather" this covers the dynamo
    exporter at every opset from 12 (:mod:`dcn_onnxscript.opsets`), with "grid_sample" from 16; the
    TorchScript exporter (``dynamo=False``, :mod:`dcn_onnxscript.torchscript`) always gets "gather".
    Idempotent."""
    global _original_overloads
    translation = _translation(impl)
    entry = _torchlib_entry()
    if _original_overloads is None:
        _original_overloads = list(entry.overloads)
    entry.overloads[:] = [translation]
    opsets.install()
    torchscript.register()


def unregister() -> None:
    """Restore torch's default translation (native ONNX ``DeformConv``, opset ≥ 19) and the exporters'
    own behaviour. Idempotent."""
    global _original_overloads
    if _original_overloads is None:
        return
    _torchlib_entry().overloads[:] = _original_overloads
    _original_overloads = None
    opsets.uninstall()
    torchscript.unregister()


def is_registered() -> bool:
    """Whether :func:`register` is in effect."""
    return any(t in _torchlib_entry().overloads for t in _TRANSLATIONS.values())


def _torchlib_entry() -> torchlib_registration.OverloadedFunction:
    # Importing the ops module fills torch_lib's default registry.
    from onnxscript.function_libs.torch_lib import ops  # noqa: F401

    registry = torchlib_registration.default_registry
    if _QUALIFIED_NAME not in registry:
        registry._registry[_QUALIFIED_NAME] = torchlib_registration.OverloadedFunction(_QUALIFIED_NAME)
    return registry[_QUALIFIED_NAME]
