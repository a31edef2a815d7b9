"""float16, float32 and float64 layers export with the input dtype kept on the output and match a float64
torchvision reference on onnxruntime within the dtype's tolerance; bfloat16 exports but onnxruntime's CPU
provider has no bfloat16 kernels for the arithmetic ops (Add, Mul, ...)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import dcn_onnxscript  # noqa: F401
from helpers import Case, DeformConvLayer, assert_close, export_dynamo, layer_reference, make_inputs, \
    run_onnxruntime

#: dtype -> (torch dtype, ONNX elem type, tolerance relative to max(1, output scale))
DTYPES = {
    np.float16: (torch.float16, onnx.TensorProto.FLOAT16, 2e-2),
    np.float32: (torch.float32, onnx.TensorProto.FLOAT, 1e-4),
    np.float64: (torch.float64, onnx.TensorProto.DOUBLE, 1e-10),
}
CASES = [Case(), Case(in_channels=6, out_channels=4, groups=2, offset_groups=3, mask=False)]


def export_in(case: Case, torch_dtype: torch.dtype, dynamic: bool = False) -> onnx.ModelProto:
    layer = DeformConvLayer(case).eval().to(torch_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if torch_dtype == torch.bfloat16:  # numpy has no bfloat16: export from torch tensors directly
            args = tuple(torch.from_numpy(a).to(torch_dtype) for a in make_inputs(case))
            return torch.onnx.export(layer, args, dynamo=True, verbose=False).model_proto
        dtype = torch.empty((), dtype=torch_dtype).numpy().dtype
        return export_dynamo(layer, make_inputs(case, dtype=dtype), dynamic=dynamic)


@pytest.mark.parametrize("case", CASES, ids=["dcnv2", "dcnv1_groups"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: np.dtype(d).name)
def test_dtype_is_kept_and_output_matches_torchvision(dtype, case):
    torch_dtype, elem_type, tolerance = DTYPES[dtype]
    model = export_in(case, torch_dtype, dynamic=True)
    assert model.graph.output[0].type.tensor_type.elem_type == elem_type
    # The layer's parameters are rounded to the dtype too, so the reference uses the rounded ones.
    layer = DeformConvLayer(case).eval().to(torch_dtype).double()
    inputs = make_inputs(case, seed=7, size=(9, 5), batch=2, dtype=dtype)
    actual = run_onnxruntime(model, inputs)
    assert actual.dtype == dtype
    assert_close(actual, layer_reference(layer, inputs), rtol=tolerance)


def test_bfloat16_exports_but_onnxruntime_cpu_cannot_run_it():
    model = export_in(Case(), torch.bfloat16)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
