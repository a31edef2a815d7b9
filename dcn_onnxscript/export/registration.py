"""Registration with torch.onnx: what ``import dcn_onnxscript`` does (through :mod:`dcn_onnxscript._autoregister`)
and what :func:`register`, :func:`unregister` and :func:`translation_table` do.

Three hooks, each a thin callable that reaches the real work only when an export calls it:

- the dynamo exporter's translation of ``torchvision::deform_conv2d`` (torch_lib's registry entry), served by
  :func:`dcn_onnxscript.export.dynamo.translate`;
- the dynamo exporter's opset-conversion step, served by :func:`dcn_onnxscript.export.dynamo.convert_version`
  (it lowers the placeholders the translation wrote; a model without any goes to torch's own step unchanged);
- the TorchScript exporter's symbolic, served by :func:`dcn_onnxscript.export.torchscript.deform_conv2d_symbolic`.

This module imports torch.onnx and onnxscript only: it may be imported while torch.onnx finishes loading,
in the middle of importing :mod:`.dynamo` or :mod:`.torchscript` (which import torch), so it must not need
them until an export runs.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
from onnxscript.values import Opset, TracedOnnxFunction

from dcn_onnxscript.export import _internals
from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.table import IMPLS, NATIVE, NATIVE_MIN_OPSET  # noqa: F401  (the exporters' names)

_DOMAIN = Opset("dcn_onnxscript", 1)
#: Modules whose ``register(impl)`` and ``unregister()`` follow :func:`register` and :func:`unregister`: the
#: DCNv3/DCNv4 cores' exports, once :mod:`dcn_onnxscript.ops` has loaded them whole (:func:`follow`). A list
#: that modules join when they are loaded, not a look-up in ``sys.modules``: the hook may register in the
#: middle of their import (torch.onnx loads while :mod:`dcn_onnxscript.export.dcnv3` imports it), when the
#: module found there would be partly loaded.
_followers: list[ModuleType] = []


def _translation(impl: str) -> TracedOnnxFunction:
    """The dynamo translation of ``torchvision::deform_conv2d`` through ``impl``."""

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dilation_h: int, dilation_w: int, groups: int, offset_groups: int, use_mask: bool):
        """torchvision::deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int offset_groups, bool use_mask) -> Tensor"""  # noqa: E501
        from dcn_onnxscript.export import dynamo

        return dynamo.translate(impl, input, weight, offset, mask, bias, (stride_h, stride_w), (pad_h, pad_w),
                                (dilation_h, dilation_w), groups, offset_groups, use_mask)

    return TracedOnnxFunction(_DOMAIN, deform_conv2d)


_TRANSLATIONS = {impl: _translation(impl) for impl in IMPLS}


def _checked_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _convert_version(model, target_version: int, original: Callable):
    from dcn_onnxscript.export import dynamo

    return dynamo.convert_version(model, target_version, original)


def _symbolic(g, *args):
    from dcn_onnxscript.export import torchscript

    return torchscript.deform_conv2d_symbolic(g, *args)


def translation_table(impl: str = table.DEFAULT) -> dict[Callable, Callable]:
    """``{torch.ops.torchvision.deform_conv2d.default: translation}`` for ``torch.onnx.export(...,
    custom_translation_table=translation_table())``; works whether or not :func:`register` is active (it
    installs the conversion step that lowers the translation's placeholders, which leaves every other
    model to torch). ``impl``: one of :data:`IMPLS`."""
    import torchvision  # noqa: F401  (loads the torchvision::deform_conv2d operator)

    _internals.wrap_convert_version(_convert_version)
    return {torch.ops.torchvision.deform_conv2d.default: _TRANSLATIONS[_checked_impl(impl)]}


def register(impl: str = table.DEFAULT) -> None:
    """Make every ``torch.onnx.export`` translate ``torchvision::deform_conv2d`` through ``impl`` (one of
    :data:`IMPLS`; done with the default, "auto", on ``import dcn_onnxscript``): the dynamo exporter with
    ``impl``, the TorchScript exporter (``dynamo=False``) with "auto". The DCNv3/DCNv4 cores too, once
    :mod:`dcn_onnxscript.ops` is imported ("native" has no form for them: they keep theirs). Idempotent."""
    _internals.set_translation(_TRANSLATIONS[_checked_impl(impl)])
    _internals.wrap_convert_version(_convert_version)
    torch.onnx.register_custom_op_symbolic(_internals.QUALIFIED_NAME, _symbolic, table.MIN_OPSET)
    if impl != NATIVE:
        for exports in _followers:
            exports.register(impl)


def unregister() -> None:
    """Restore torch's default translation (native ONNX ``DeformConv``, opset >= 19), its own conversion step
    and the TorchScript exporter's own behaviour (no symbolic). Idempotent."""
    _internals.restore_translation()
    _internals.unwrap_convert_version()
    torch.onnx.unregister_custom_op_symbolic(_internals.QUALIFIED_NAME, table.MIN_OPSET)
    for exports in _followers:
        exports.unregister()


def follow(exports: ModuleType) -> None:
    """Make :func:`register` and :func:`unregister` register and unregister ``exports`` (a module with
    ``register(impl)`` and ``unregister()``: :mod:`dcn_onnxscript.export.dcnv3`) too, and register it now (with
    the default lowering) where :func:`register` is in effect. Idempotent."""
    if exports not in _followers:
        _followers.append(exports)
    if is_registered():
        exports.register()


def is_registered() -> bool:
    """Whether :func:`register` is in effect."""
    return _internals.current_translation() in _TRANSLATIONS.values()
