"""The standalone form: onnxscript functions (``@script``) for reuse in any ONNX or onnxscript graph,
dynamic in every size and attribute; see :mod:`.gather` and :mod:`.grid_sample`."""

from dcn_onnxscript.lowering.script.gather import (
    DOMAIN,
    deform_conv2d,
    deform_conv2d_no_bias,
    deform_conv2d_no_bias_no_mask,
    deform_conv2d_no_mask,
)
from dcn_onnxscript.lowering.script.protos import function_protos

__all__ = ["DOMAIN", "deform_conv2d", "deform_conv2d_no_bias", "deform_conv2d_no_bias_no_mask",
           "deform_conv2d_no_mask", "function_protos"]
