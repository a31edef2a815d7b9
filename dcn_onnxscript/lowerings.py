"""The portable lowerings of deformable convolution, by name, and their public functions by the optional
inputs they take. Shared by the torch.onnx registration and the rewriter."""

from __future__ import annotations

from onnxscript import OnnxFunction

from dcn_onnxscript import functions, grid_sample

#: A lowering's public functions, by the optional inputs they take: (bias, mask). Every one has the
#: inputs ``(X, W, offset[, B][, mask])`` and the attributes of ``DeformConv``-19.
Variants = dict[tuple[bool, bool], OnnxFunction]

#: "gather": primitive ops (:mod:`dcn_onnxscript.functions`), opset ≥ 12 via the exporter's conversion;
#: "grid_sample": sampling through ONNX ``GridSample`` (:mod:`dcn_onnxscript.grid_sample`), opset ≥ 16.
PORTABLE: dict[str, Variants] = {
    "gather": {
        (True, True): functions.deform_conv2d,
        (False, True): functions.deform_conv2d_no_bias,
        (True, False): functions.deform_conv2d_no_mask,
        (False, False): functions.deform_conv2d_no_bias_no_mask,
    },
    "grid_sample": {
        (True, True): grid_sample.deform_conv2d_grid_sample,
        (False, True): grid_sample.deform_conv2d_grid_sample_no_bias,
        (True, False): grid_sample.deform_conv2d_grid_sample_no_mask,
        (False, False): grid_sample.deform_conv2d_grid_sample_no_bias_no_mask,
    },
}
