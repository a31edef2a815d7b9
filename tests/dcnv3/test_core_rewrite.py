"""``rewrite`` on files holding InternImage's ``mmdeploy::TRTDCNv3`` nodes, exported through an autograd
function whose symbolic writes the node as InternImage's ``DCNv3Function.symbolic`` does."""

from __future__ import annotations

import io
import warnings

import onnx
import onnx_ir as ir
import pytest
import torch
from core_reference import CoreCase, core_reference, generated_cases

import dcn_onnxscript.ops  # noqa: F401
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.rewrite import rewriter
from helpers import assert_close
from runtimes import run_onnxruntime


class _DCNv3Function(torch.autograd.Function):
    """Eager: this package's op; ONNX: ``mmdeploy::TRTDCNv3`` with InternImage's attributes."""

    @staticmethod
    def forward(ctx, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
        return torch.ops.dcn_onnxscript.dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                              pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                                              bool(remove_center))

    @staticmethod
    def symbolic(g, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
        return g.op("mmdeploy::TRTDCNv3", input, offset, mask, kernel_h_i=kernel_h, kernel_w_i=kernel_w,
                    stride_h_i=stride_h, stride_w_i=stride_w, pad_h_i=pad_h, pad_w_i=pad_w, dilation_h_i=dilation_h,
                    dilation_w_i=dilation_w, group_i=group, group_channels_i=group_channels,
                    offset_scale_f=offset_scale, im2col_step_i=im2col_step, remove_center_i=int(remove_center))


class _Block(torch.nn.Module):
    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core

    def forward(self, input, offset, mask):
        c = self.core
        return _DCNv3Function.apply(input, offset, mask, *c.kernel, *c.stride, *c.padding, *c.dilation, c.group,
                                    c.group_channels, c.offset_scale, 256, int(c.remove_center)) * 2


def trt_dcnv3_model(case: CoreCase, inputs, opset: int, dynamic: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    names = ["input", "offset", "mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Block(case.core), tuple(torch.from_numpy(a) for a in inputs), buffer, dynamo=False,
                          opset_version=opset, input_names=names,
                          dynamic_axes={n: {0: "n", 1: f"{n}_h", 2: f"{n}_w"} for n in names} if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


CASES = generated_cases(6, version=3, seed=31)
VARIANTS = [(impl, opset, dynamic) for impl, opset in [("auto", 12), ("grid_sample", 16), ("gather", 17)]
            for dynamic in (False, True)]
#: Each case with one variant by default, every variant in the slow run.
COVERING = [(case, *VARIANTS[i % len(VARIANTS)]) for i, case in enumerate(CASES)]
EVERY = [(case, *variant) for case in CASES for variant in VARIANTS if (case, *variant) not in COVERING]


def _id(param) -> str:
    return "-".join(map(str, param))


@pytest.mark.parametrize("param", COVERING, ids=_id)
def test_rewrite_makes_trt_dcnv3_portable(param):
    _rewrite_and_compare(*param)


@pytest.mark.slow
@pytest.mark.parametrize("param", EVERY, ids=_id)
def test_rewrite_makes_trt_dcnv3_portable_in_every_variant(param):
    _rewrite_and_compare(*param)


def _rewrite_and_compare(case, impl, opset, dynamic):
    inputs = case.inputs(seed=4)
    model = trt_dcnv3_model(case, inputs, opset, dynamic)
    assert any(node.op_type == "TRTDCNv3" for node in model.graph.node)
    result = rewriter.rewrite(ir.from_proto(model), impl=impl)
    assert dict(result.counts) == {"mmdeploy::TRTDCNv3": 1}
    rewritten = ir.to_proto(result.model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert {node.domain for node in rewritten.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in rewritten.opset_import} <= {"", "ai.onnx"}
    assert_close(run_onnxruntime(rewritten, inputs), 2 * core_reference(case.core, *inputs), rtol=1e-4)


def test_rewrite_refuses_a_trt_dcnv3_node_with_inconsistent_shapes():
    case = CASES[1]
    input, offset, mask = case.inputs()
    model = trt_dcnv3_model(case, [input, offset, mask], 16, False)
    model.graph.input[2].type.tensor_type.shape.dim[3].dim_value += 1
    with pytest.raises(rewriter.RewriteError, match="mmdeploy::TRTDCNv3 node .*mask dimension 3 must be"):
        rewriter.rewrite(ir.from_proto(model))


@pytest.mark.parametrize("dynamic", [False, True])
def test_rewrite_to_native_writes_the_layout_steps_around_onnx_deform_conv(dynamic: bool):
    """``impl="native"``: the core is its layout steps around one ONNX ``DeformConv`` (groups = offset groups = G,
    the identity weight), which onnxruntime runs."""
    case = next((c for c in CASES if c.core.remove_center), CASES[0])
    inputs = case.inputs(seed=4)
    model = trt_dcnv3_model(case, inputs, 19, dynamic)
    result = rewriter.rewrite(ir.from_proto(model), impl="native")
    assert dict(result.counts) == {"mmdeploy::TRTDCNv3": 1}
    rewritten = ir.to_proto(result.model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [node.op_type for node in rewritten.graph.node].count("DeformConv") == 1
    assert_close(run_onnxruntime(rewritten, inputs), 2 * core_reference(case.core, *inputs), rtol=1e-4)


def test_rewrite_to_native_below_opset_19_is_refused():
    case = CASES[0]
    model = trt_dcnv3_model(case, case.inputs(), 16, False)
    with pytest.raises(rewriter.RewriteError,
                       match="mmdeploy::TRTDCNv3 node '/TRTDCNv3': impl='native' writes ONNX DeformConv"):
        rewriter.rewrite(ir.from_proto(model), impl="native")
