"""The standalone form: onnxscript functions (``@script``) for reuse in any ONNX or onnxscript graph,
dynamic in every size and attribute; see :mod:`.gather` and :mod:`.grid_sample`."""

from dcn_onnxscript.lowering.script import gather, grid_sample
from dcn_onnxscript.lowering.script.gather import (
    DOMAIN,
    deform_conv2d,
    deform_conv2d_no_bias,
    deform_conv2d_no_bias_no_mask,
    deform_conv2d_no_mask,
)
from dcn_onnxscript.lowering.script.protos import function_protos

#: lowering -> (bias, mask) -> its public script function
VARIANTS = {
    "gather": {(True, True): gather.deform_conv2d, (False, True): gather.deform_conv2d_no_bias,
               (True, False): gather.deform_conv2d_no_mask, (False, False): gather.deform_conv2d_no_bias_no_mask},
    "grid_sample": {(True, True): grid_sample.deform_conv2d_grid_sample,
                    (False, True): grid_sample.deform_conv2d_grid_sample_no_bias,
                    (True, False): grid_sample.deform_conv2d_grid_sample_no_mask,
                    (False, False): grid_sample.deform_conv2d_grid_sample_no_bias_no_mask},
}

__all__ = ["DOMAIN", "VARIANTS", "deform_conv2d", "deform_conv2d_no_bias", "deform_conv2d_no_bias_no_mask",
           "deform_conv2d_no_mask", "function_protos"]
