"""Portable deformable convolution for ONNX.

``import dcn_onnxscript`` registers the portable translation of ``torchvision::deform_conv2d`` with
``torch.onnx.export`` (see :func:`register`). torch itself is imported only when it is needed: at once if
``torch.onnx`` is already loaded, otherwise when it loads; so :mod:`dcn_onnxscript.rewrite` and the
standalone ONNX functions work without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dcn_onnxscript import _autoregister
from dcn_onnxscript._version import __version__
from dcn_onnxscript.lowering.script.protos import DOMAIN, function_protos

if TYPE_CHECKING:  # served by __getattr__ (imported or built on first use); re-exports for type checkers
    from dcn_onnxscript.lowering.script.cores import dcnv3 as dcnv3
    from dcn_onnxscript.lowering.script.cores import dcnv4 as dcnv4
    from dcn_onnxscript.lowering.script.grid_sample import deform_conv2d as deform_conv2d
    from dcn_onnxscript.lowering.script.grid_sample import deform_conv2d_no_bias as deform_conv2d_no_bias
    from dcn_onnxscript.lowering.script.grid_sample import (
        deform_conv2d_no_bias_no_mask as deform_conv2d_no_bias_no_mask,
    )
    from dcn_onnxscript.lowering.script.grid_sample import deform_conv2d_no_mask as deform_conv2d_no_mask
    from dcn_onnxscript.lowering.validation import check_deform_conv2d_args as check_deform_conv2d_args

#: Names served from :mod:`dcn_onnxscript.export.registration`, :mod:`dcn_onnxscript.rewrite`, the
#: standalone functions' module and the argument checks, imported on first use (the first imports torch,
#: the standalone functions are built then; ``import dcn_onnxscript`` itself imports neither numpy nor onnx).
_LAZY = {
    **dict.fromkeys(["deform_conv2d", "deform_conv2d_no_bias", "deform_conv2d_no_bias_no_mask",
                     "deform_conv2d_no_mask", "dcnv3", "dcnv4"], "dcn_onnxscript.lowering.script"),
    "register": "dcn_onnxscript.export.registration",
    "unregister": "dcn_onnxscript.export.registration",
    "is_registered": "dcn_onnxscript.export.registration",
    "translation_table": "dcn_onnxscript.export.registration",
    "rewrite_model": "dcn_onnxscript.rewrite",
    "check_deform_conv2d_args": "dcn_onnxscript.lowering.validation",
}

__all__ = ["DOMAIN", "__version__", "function_protos", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dcn_onnxscript' has no attribute {name!r}")
    import importlib

    if _LAZY[name] == "dcn_onnxscript.export.registration":
        _autoregister.settle()
    return getattr(importlib.import_module(_LAZY[name]), name)


_autoregister.install()
