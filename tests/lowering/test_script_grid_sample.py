"""Parity of the "grid_sample" lowering (dcn_onnxscript.grid_sample) with torchvision's CPU deform_conv2d, as
model-local functions on onnxruntime and, inlined, on OpenVINO (CPU, f32), tract and onnx.reference, over
the randomized sweep of test_functions and under hostile offsets.

OpenVINO and tract read no model-local functions: they get the model with the functions inlined, which is
also what torch.onnx's exporter writes. onnx 1.23's reference evaluator implements ``GridSample`` only with
the mode names of GridSample-20 ("linear"); on GridSample-16's "bilinear", which the function is written
with (opset 18), it raises. It runs here with that one name mapped (:class:`GridSample`); the plain
evaluator runs the opset-20 exports of test_lowerings.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_grid_sample

from dcn_onnxscript import function_protos, functions, grid_sample
from helpers import assert_close, run_onnxruntime, run_openvino, run_tract
from test_functions import RANKS, SEED, SWEEP, Case, attributes, far_away_offsets, hostile_offsets, sweep_reference

#: The public function for each (bias, mask) combination.
VARIANTS = {
    (True, True): grid_sample.deform_conv2d_grid_sample,
    (False, True): grid_sample.deform_conv2d_grid_sample_no_bias,
    (True, False): grid_sample.deform_conv2d_grid_sample_no_mask,
    (False, False): grid_sample.deform_conv2d_grid_sample_no_bias_no_mask,
}


def input_names(case: Case) -> list[str]:
    return list(VARIANTS[(case.use_bias, case.use_mask)].to_function_proto().input)


def grid_sample_model(case: Case) -> onnx.ModelProto:
    """A one-node model calling the case's grid_sample function, every function it needs attached; all
    dimensions symbolic."""
    function = VARIANTS[(case.use_bias, case.use_mask)]
    names = input_names(case)
    node = onnx.helper.make_node(function.name, names, ["Y"], domain=functions.DOMAIN, **attributes(case))
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [f"{n}{i}" for i in range(RANKS[n])])
              for n in names]
    output = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", "O", "Ho", "Wo"])
    return onnx.helper.make_model(
        onnx.helper.make_graph([node], "deform_conv2d_grid_sample", inputs, [output]),
        opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(functions.DOMAIN, 1)],
        functions=function_protos(function), ir_version=10,
    )


class GridSample(op_grid_sample.GridSample):
    """onnx.reference's GridSample, also taking GridSample-16's mode names (it knows only those of 20)."""

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):
        mode = mode or self.mode
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
        return super()._run(X, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def run_reference_grid_sample_16(model: onnx.ModelProto, inputs) -> np.ndarray:
    # new_ops does not reach nodes inside model-local functions: inline them first.
    session = ReferenceEvaluator(onnx.inliner.inline_local_functions(model), new_ops=[GridSample])
    return session.run(None, {i.name: v for i, v in zip(model.graph.input, inputs)})[0]


def inlined(run):
    return lambda model, inputs: run(onnx.inliner.inline_local_functions(model), inputs)


RUNTIMES = {
    "onnxruntime": run_onnxruntime,
    "openvino": inlined(run_openvino),
    "tract": inlined(run_tract),
    "reference": run_reference_grid_sample_16,
}


@pytest.fixture(scope="module")
def sweep_models():
    models = [grid_sample_model(case) for case in SWEEP]
    for model in models[:4]:
        onnx.checker.check_model(model, full_check=True)
    return models


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_sweep_matches_torchvision(sweep_models, runtime) -> None:
    """Kernels 1–7, stride/padding/dilation up to 3, groups and offset groups up to 4 (both > 1 too),
    1-pixel inputs, batch up to 3, offsets up to far outside, all four input variants."""
    for case, model in zip(SWEEP, sweep_models):
        arrays = case.arrays(np.random.default_rng(SEED))
        actual = RUNTIMES[runtime](model, [arrays[n] for n in input_names(case)])
        assert_close(actual, sweep_reference(case, arrays))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_hostile_offsets_never_raise_and_match_where_torchvision_is_finite(runtime) -> None:
    """NaN, ±Inf and ±1e30/3e38 offsets: moved far outside before GridSample, so they contribute zero."""
    case, arrays = hostile_offsets()
    with np.errstate(all="ignore"):
        actual = RUNTIMES[runtime](grid_sample_model(case), [arrays[n] for n in input_names(case)])
    assert np.isfinite(actual).all()
    assert_close(actual, sweep_reference(case, arrays))


def test_samples_pushed_outside_the_image_contribute_zero() -> None:
    """Every sample 1e6 pixels away: the output is exactly the bias, as torchvision gives."""
    case, arrays = far_away_offsets()
    actual = run_onnxruntime(grid_sample_model(case), [arrays[n] for n in input_names(case)])
    np.testing.assert_array_equal(actual, np.broadcast_to(arrays["B"][None, :, None, None], actual.shape))


def test_plain_reference_evaluator_lacks_gridsample_16_mode_names() -> None:
    """Why the reference runs above map "bilinear": remove the mapping once onnx's evaluator knows it."""
    case = SWEEP[0]
    arrays = case.arrays(np.random.default_rng(SEED))
    model = onnx.inliner.inline_local_functions(grid_sample_model(case))
    with pytest.raises(RuntimeError, match="only supports nearest, linear, and cubic"):
        ReferenceEvaluator(model).run(None, {n: arrays[n] for n in input_names(case)})


def test_columns_are_sampled_once_and_never_transposed() -> None:
    """One GridSample for the whole layer; every Transpose acts on the offset-sized grid or offsets, none on
    the sampled columns (the C/G-times larger tensor), which reach MatMul through reshapes only."""
    model = onnx.inliner.inline_local_functions(grid_sample_model(SWEEP[0]))
    nodes = list(model.graph.node)
    assert [n.op_type for n in nodes].count("GridSample") == 1
    consumers = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    (sampled,) = next(n for n in nodes if n.op_type == "GridSample").output
    frontier, seen = [sampled], set()
    while frontier:  # everything downstream of GridSample up to the MatMul
        value = frontier.pop()
        for n in consumers.get(value, []):
            assert n.op_type != "Transpose", n
            if n.op_type != "MatMul" and id(n) not in seen:
                seen.add(id(n))
                frontier.extend(n.output)
    assert seen  # the columns do flow to the MatMul
