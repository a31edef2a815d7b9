"""``register(impl=...)`` / ``translation_table(impl=...)``: "auto" (default), "gather", "grid_sample" (ONNX
GridSample, opset >= 16) and "native" (ONNX DeformConv, opset >= 19); an impl the target opset cannot express
fails at export time with a clear message. (The portable impls' parity on every runtime is the matrix's.)"""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

import dcn_onnxscript
from helpers import Case, DeformConvLayer, assert_close, export_dynamo, layer_reference, make_inputs
from runtimes import RUNNERS

CASE = Case(in_channels=4, out_channels=6, stride=(2, 1), groups=2, offset_groups=2)
#: Runtimes without an ONNX DeformConv kernel (measured: OpenVINO 2026.4's ONNX frontend leaves it
#: unconverted, tract 0.23 reports it unimplemented).
NATIVE_RUNTIMES = ["onnxruntime", "reference"]


def export_with(impl: str, opset: int) -> onnx.ModelProto:
    layer = DeformConvLayer(CASE).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_dynamo(layer, make_inputs(CASE), opset=opset, dynamic=True,
                             custom_translation_table=dcn_onnxscript.translation_table(impl=impl))


@pytest.fixture(scope="module")
def models():
    return {(impl, 19): export_with(impl, 19) for impl in ("gather", "grid_sample", "native")}


@pytest.mark.parametrize("runtime", NATIVE_RUNTIMES)
def test_native_impl_matches_torchvision(models, runtime):
    model = models[("native", 19)]
    assert "DeformConv" in {n.op_type for n in model.graph.node}
    inputs = make_inputs(CASE, seed=3, size=(9, 5), batch=2)
    assert_close(RUNNERS[runtime](model, inputs), layer_reference(DeformConvLayer(CASE), inputs))


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_portable_impls_leave_no_deform_conv(models, impl):
    ops = {n.op_type for n in models[(impl, 19)].graph.node}
    assert "DeformConv" not in ops
    assert ("GridSample" in ops) == (impl == "grid_sample")


def test_grid_sample_below_opset_16_fails_at_export_with_a_clear_error():
    with pytest.raises(ValueError, match=r"deform_conv2d.*impl='grid_sample' needs opset >= 16, got opset 15"):
        export_with("grid_sample", 15)


def test_native_below_opset_19_fails_at_export_with_a_clear_error():
    with pytest.raises(Exception, match="opset_version >= 19"):
        export_with("native", 18)


def test_register_native_then_gather_switches_the_default_translation():
    layer, inputs = DeformConvLayer(CASE).eval(), make_inputs(CASE)
    args = tuple(torch.from_numpy(a) for a in inputs)
    try:
        dcn_onnxscript.register(impl="native")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            native = torch.onnx.export(layer, args, dynamo=True, opset_version=19, verbose=False).model_proto
    finally:
        dcn_onnxscript.register()
    assert "DeformConv" in {n.op_type for n in native.graph.node}
    assert dcn_onnxscript.is_registered()


@pytest.mark.parametrize("impl", ["bogus", "GridSample"])
def test_unknown_impl_is_refused(impl):
    with pytest.raises(ValueError, match="impl must be one of"):
        dcn_onnxscript.translation_table(impl=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        dcn_onnxscript.register(impl=impl)
    assert dcn_onnxscript.is_registered()
