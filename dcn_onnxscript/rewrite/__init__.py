"""Rewriting ONNX models exported elsewhere: native ``DeformConv`` and mmcv/mmdeploy nodes become the
portable lowering (:mod:`.rewriter`); ``python -m dcn_onnxscript rewrite`` is :mod:`.cli`. The names below
are served from :mod:`.rewriter` on first use, so that the command line's ``--help`` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcn_onnxscript.rewrite.rewriter import RewriteError, RewriteResult, rewrite, rewrite_model

__all__ = ["RewriteError", "RewriteResult", "rewrite", "rewrite_model"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from dcn_onnxscript.rewrite import rewriter

    return getattr(rewriter, name)
