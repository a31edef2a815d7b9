"""Rewriting ONNX models exported elsewhere: native ``DeformConv`` and mmcv/mmdeploy nodes become the
portable lowering (:mod:`.rewriter`); ``python -m dcn_onnxscript rewrite`` is :mod:`.cli`."""

from dcn_onnxscript.rewrite.rewriter import RewriteError, RewriteResult, rewrite, rewrite_model

__all__ = ["RewriteError", "RewriteResult", "rewrite", "rewrite_model"]
