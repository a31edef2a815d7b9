"""The standalone form (dcn_onnxscript.lowering.script): the public @script functions of both lowerings
against torchvision's CPU deform_conv2d over a seeded random sweep, as model-local functions on onnxruntime
and onnx.reference, eagerly through onnxscript, under hostile offsets; each public FunctionProto is
self-contained (no nested calls) and made of standard ops only."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_grid_sample

from dcn_onnxscript import DOMAIN, function_protos
from dcn_onnxscript.lowering.script import VARIANTS
from helpers import HOSTILE, SweepCase, assert_close, attributes, random_case, torchvision_reference
from runtimes import run_onnxruntime

SEED = 20261126
CASES = 32
RANKS = {"X": 4, "W": 4, "offset": 4, "B": 1, "mask": 4}
FUNCTIONS = VARIANTS
SWEEP = [random_case(np.random.default_rng([SEED, i])) for i in range(CASES)]


def function_of(lowering: str, case: SweepCase):
    return FUNCTIONS[lowering][(case.use_bias, case.use_mask)]


def function_model(lowering: str, case: SweepCase, elem_type: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """A one-node model calling the case's public function, its FunctionProto attached; all dimensions
    symbolic."""
    function = function_of(lowering, case)
    names = list(function.to_function_proto().input)
    node = onnx.helper.make_node(function.name, names, ["Y"], domain=DOMAIN, **attributes(case))
    inputs = [onnx.helper.make_tensor_value_info(n, elem_type, [f"{n}{i}" for i in range(RANKS[n])]) for n in names]
    output = onnx.helper.make_tensor_value_info("Y", elem_type, ["N", "O", "Ho", "Wo"])
    return onnx.helper.make_model(
        onnx.helper.make_graph([node], "deform_conv2d", inputs, [output]),
        opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(function), ir_version=10)


def feeds(lowering: str, case: SweepCase, arrays: dict) -> list[np.ndarray]:
    return [arrays[name] for name in function_of(lowering, case).to_function_proto().input]


def reference(case: SweepCase, arrays: dict) -> np.ndarray:
    return torchvision_reference(arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if case.use_mask else None,
                                 arrays["B"] if case.use_bias else None, case.stride, case.padding, case.dilation)


class GridSample(op_grid_sample.GridSample):  # the name new_ops matches
    """onnx.reference's GridSample, also taking GridSample-16's mode names (onnx 1.23 knows only 20's)."""

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode or self.mode, mode or self.mode)
        return super()._run(X, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def run_reference(model: onnx.ModelProto, inputs) -> np.ndarray:
    # new_ops does not reach nodes inside model-local functions: inline them first.
    session = ReferenceEvaluator(onnx.inliner.inline_local_functions(model), new_ops=[GridSample])
    return session.run(None, {i.name: v for i, v in zip(model.graph.input, inputs)})[0]


@pytest.mark.parametrize("lowering", sorted(FUNCTIONS))
@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(CASES)])
def test_matches_torchvision_on_onnxruntime_and_reference(lowering: str, case: SweepCase) -> None:
    arrays = case.arrays(np.random.default_rng(SEED))
    model = function_model(lowering, case)
    onnx.checker.check_model(model, full_check=True)
    expected = reference(case, arrays)
    assert_close(run_onnxruntime(model, feeds(lowering, case, arrays)), expected)
    assert_close(run_reference(model, feeds(lowering, case, arrays)), expected)


def test_sweep_covers_the_ranges() -> None:
    """Guards the sweep itself: kernels 1–7 non-square, stride 1–3, padding 0–3, dilation 1–3, groups and
    offset groups up to 4 together, 1-pixel rows and columns, batches, far offsets, every variant."""
    assert {c.kernel[0] for c in SWEEP} | {c.kernel[1] for c in SWEEP} == set(range(1, 8))
    assert any(c.kernel[0] != c.kernel[1] for c in SWEEP)
    assert {s for c in SWEEP for s in c.stride} == {1, 2, 3}
    assert {p for c in SWEEP for p in c.padding} == {0, 1, 2, 3}
    assert {d for c in SWEEP for d in c.dilation} == {1, 2, 3}
    assert any(c.groups > 1 and c.offset_groups > 1 for c in SWEEP)
    assert any(c.height == 1 for c in SWEEP) and any(c.width == 1 for c in SWEEP)
    assert any(c.batch > 1 for c in SWEEP) and any(c.offset_scale >= 20 for c in SWEEP)
    assert {(c.use_mask, c.use_bias) for c in SWEEP} == {(m, b) for m in (0, 1) for b in (0, 1)}


@pytest.mark.parametrize("lowering", sorted(FUNCTIONS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_hostile_offsets_never_raise_and_match_where_torchvision_is_finite(lowering: str, dtype) -> None:
    case = SweepCase(2, 4, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 2.0)
    rng = np.random.default_rng(SEED)
    arrays = case.arrays(np.random.default_rng(SEED))
    where = rng.random(arrays["offset"].shape) < 0.05
    arrays["offset"][where] = rng.choice(HOSTILE, size=int(where.sum()))
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    actual = run_onnxruntime(function_model(lowering, case, elem_type), feeds(lowering, case, arrays))
    assert np.isfinite(actual).all()
    assert_close(actual, reference(case, {k: v.astype(np.float64) for k, v in arrays.items()}),
                 rtol=1e-4 if dtype == np.float32 else 3e-2)


@pytest.mark.parametrize("lowering", sorted(FUNCTIONS))
def test_samples_far_outside_the_image_contribute_zero(lowering: str) -> None:
    """Every sample 1e6 pixels away: the output is exactly the bias, as torchvision gives."""
    case = SweepCase(1, 2, 3, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 1.0)
    arrays = case.arrays(np.random.default_rng(SEED))
    arrays["offset"] = np.full_like(arrays["offset"], 1e6)
    actual = run_onnxruntime(function_model(lowering, case), feeds(lowering, case, arrays))
    np.testing.assert_array_equal(actual, np.broadcast_to(arrays["B"][None, :, None, None], actual.shape))


@pytest.mark.parametrize("lowering", sorted(FUNCTIONS))
def test_eager_onnxscript_matches_torchvision(lowering: str) -> None:
    case = SWEEP[0]
    arrays = case.arrays(np.random.default_rng(SEED))
    actual = function_of(lowering, case)(*feeds(lowering, case, arrays), **attributes(case))
    assert_close(np.asarray(actual), reference(case, arrays))


@pytest.mark.parametrize("function", [f for variants in FUNCTIONS.values() for f in variants.values()],
                         ids=lambda f: f.name)
def test_public_function_is_one_self_contained_proto_of_standard_ops(function) -> None:
    """No nested calls (every consumer of model-local functions reads it, in any order), no DeformConv."""
    (proto,) = function_protos(function)
    assert proto.domain == DOMAIN and proto.name == function.name
    assert not function.function_ir.get_called_functions()
    for node in proto.node:
        assert node.domain == "", node
        assert onnx.defs.has(node.op_type) and node.op_type != "DeformConv", node.op_type
