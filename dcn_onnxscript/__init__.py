"""Portable deformable convolution for ONNX.

``import dcn_onnxscript`` registers the portable translation of ``torchvision::deform_conv2d`` with the
dynamo-based ``torch.onnx`` exporter (see :func:`register`).
"""

from dcn_onnxscript.functions import (
    DOMAIN,
    deform_conv2d,
    deform_conv2d_no_bias,
    deform_conv2d_no_bias_no_mask,
    deform_conv2d_no_mask,
)
from dcn_onnxscript.protos import function_protos
from dcn_onnxscript.registration import is_registered, register, translation_table, unregister
from dcn_onnxscript.rewrite import rewrite_model
from dcn_onnxscript.validation import check_deform_conv2d_args

__all__ = [
    "DOMAIN",
    "check_deform_conv2d_args",
    "deform_conv2d",
    "deform_conv2d_no_bias",
    "deform_conv2d_no_bias_no_mask",
    "deform_conv2d_no_mask",
    "function_protos",
    "is_registered",
    "register",
    "rewrite_model",
    "translation_table",
    "unregister",
]

register()
