"""``register(impl=...)`` / ``translation_table(impl=...)``: "gather" (the portable function, default),
"grid_sample" (sampling through ONNX GridSample, opset >= 16) and "native" (ONNX DeformConv, opset >= 19) pass
the same parity checks on every runtime that has their ops; an impl the target opset cannot express fails at
export time with a clear message."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch

import dcn_onnxscript
from helpers import RUNNERS, Case, DeformConvLayer, assert_close, default_opset, export_dynamo, layer_reference, \
    make_inputs

CASE = Case(in_channels=4, out_channels=6, stride=(2, 1), groups=2, offset_groups=2)
#: Runtimes without an ONNX DeformConv kernel (measured: OpenVINO 2026.4's ONNX frontend leaves it
#: unconverted, tract 0.23 reports it unimplemented).
NATIVE_RUNTIMES = ["onnxruntime", "reference"]
#: What onnx's reference evaluator raises on GridSample-16's mode "bilinear" (onnx 1.23 implements only the
#: mode names of GridSample-20, "linear" and "cubic"); the exporter writes GridSample-16 below opset 20.
REFERENCE_GRID_SAMPLE_16 = "GridSample interpolation only supports nearest, linear, and cubic modes"


def export_with(impl: str, opset: int) -> onnx.ModelProto:
    layer = DeformConvLayer(CASE).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_dynamo(layer, make_inputs(CASE), opset=opset, dynamic=True,
                             custom_translation_table=dcn_onnxscript.translation_table(impl=impl))


@pytest.fixture(scope="module")
def models():
    return {(impl, 19): export_with(impl, 19) for impl in ("gather", "grid_sample", "native")}


@pytest.mark.parametrize("impl, runtime", [(i, r) for i in ("gather", "grid_sample") for r in sorted(RUNNERS)]
                         + [("native", r) for r in NATIVE_RUNTIMES])
def test_impl_matches_torchvision(models, impl, runtime):
    model = models[(impl, 19)]
    ops = {n.op_type for n in model.graph.node}
    assert ("DeformConv" in ops) == (impl == "native")
    assert ("GridSample" in ops) == (impl == "grid_sample")
    inputs = make_inputs(CASE, seed=3, size=(9, 5), batch=2)
    try:
        actual = RUNNERS[runtime](model, inputs)
    except RuntimeError as error:
        if runtime == "reference" and REFERENCE_GRID_SAMPLE_16 in str(error):
            pytest.skip(f"onnx {onnx.__version__}'s reference evaluator has no GridSample-16 mode 'bilinear' "
                        f"({error}); test_grid_sample_at_opsets_16_and_20_runs_on_every_runtime covers it at 20")
        raise
    assert_close(actual, layer_reference(DeformConvLayer(CASE), inputs))


@pytest.mark.parametrize("opset", [16, 20])
def test_grid_sample_at_opsets_16_and_20_runs_on_every_runtime(opset):
    """The lowest opset with GridSample (16, the function body emitted in that opset's form) and the first
    with GridSample-20, whose mode "linear" the exporter writes and the plain reference evaluator reads."""
    model = export_with("grid_sample", opset)
    assert default_opset(model) == opset
    onnx.checker.check_model(model, full_check=True)
    inputs = make_inputs(CASE, seed=5, size=(6, 8), batch=1)
    expected = layer_reference(DeformConvLayer(CASE), inputs)
    for runtime in sorted(RUNNERS):
        if runtime == "reference" and opset < 20:
            continue  # GridSample-16's "bilinear": see REFERENCE_GRID_SAMPLE_16
        assert_close(RUNNERS[runtime](model, inputs), expected)


def test_grid_sample_below_opset_16_fails_at_export_with_a_clear_error():
    with pytest.raises(ValueError, match=r"impl='grid_sample'.*opset >= 16, got opset_version=15"):
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
