"""Portable deformable convolution for ONNX.

``import dcn_onnxscript`` registers the portable translation of ``torchvision::deform_conv2d`` with
``torch.onnx.export`` (see :func:`register`). torch itself is imported only when it is needed: at once if
``torch.onnx`` is already loaded, otherwise when it loads; so :mod:`dcn_onnxscript.rewrite` and the
standalone ONNX functions work without torch.
"""

from __future__ import annotations

from typing import Any

from dcn_onnxscript import _autoregister
from dcn_onnxscript._version import __version__
from dcn_onnxscript.lowering.script import (
    DOMAIN,
    deform_conv2d,
    deform_conv2d_no_bias,
    deform_conv2d_no_bias_no_mask,
    deform_conv2d_no_mask,
    function_protos,
)
from dcn_onnxscript.lowering.validation import check_deform_conv2d_args

#: Names served from :mod:`dcn_onnxscript.export.registration` and :mod:`dcn_onnxscript.rewrite`, imported on
#: first use (the first imports torch).
_LAZY = {
    "register": "dcn_onnxscript.export.registration",
    "unregister": "dcn_onnxscript.export.registration",
    "is_registered": "dcn_onnxscript.export.registration",
    "translation_table": "dcn_onnxscript.export.registration",
    "rewrite_model": "dcn_onnxscript.rewrite",
}

__all__ = [
    "DOMAIN",
    "__version__",
    "check_deform_conv2d_args",
    "deform_conv2d",
    "deform_conv2d_no_bias",
    "deform_conv2d_no_bias_no_mask",
    "deform_conv2d_no_mask",
    "function_protos",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dcn_onnxscript' has no attribute {name!r}")
    import importlib

    if name != "rewrite_model":
        _autoregister.settle()
    return getattr(importlib.import_module(_LAZY[name]), name)


_autoregister.install()
