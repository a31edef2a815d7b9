"""The standalone form (dcn_onnxscript.lowering.script): the public @script functions of both lowerings
against torchvision's CPU deform_conv2d over a seeded random sweep, as model-local functions on onnxruntime
and onnx.reference, inlined on OpenVINO, eagerly through onnxscript, in float16/float64, under hostile
offsets and at the chunk boundaries; each public FunctionProto is self-contained (no nested calls), made
of standard ops only, within the node budget and, inlined, within onnxruntime-web's WebGPU rules; importing
the package builds none of them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import pytest

from dcn_onnxscript import DOMAIN, function_protos
from dcn_onnxscript.lowering.script import VARIANTS, grid_sample
from dcn_onnxscript.lowering.script.protos import SCRIPT_OPSET
from helpers import (
    HOSTILE,
    SweepCase,
    assert_close,
    attributes,
    jsep_cpu_nodes,
    random_case,
    torchvision_reference,
    wider_than_webgpu,
)
from runtimes import run_onnxruntime, run_openvino, run_reference

SEED = 20261126
CASES = 32
RANKS = {"X": 4, "W": 4, "offset": 4, "B": 1, "mask": 4}
LOWERINGS = sorted(VARIANTS)
#: The lowering of the public functions (dcn_onnxscript.deform_conv2d and its variants).
PUBLIC = "grid_sample"
#: Most nodes a public function's body may have.
NODE_BUDGET = 160
SWEEP = [random_case(np.random.default_rng([SEED, i])) for i in range(CASES)]
#: The (lowering, sweep index) pairs run on OpenVINO: every other case of the public functions, and one of
#: the gather functions, whose large body OpenVINO compiles in seconds.
OPENVINO_CASES = [(PUBLIC, i) for i in range(0, CASES, 2)] + [("gather", 0)]
#: Model opsets the functions are declared at: the functions' own, GridSample's respelling (20) and the
#: newest run by default, every other one with -m slow.
NEWEST = onnx.defs.onnx_opset_version()
OPSETS = [pytest.param(opset, marks=[] if opset in (SCRIPT_OPSET, 20, NEWEST) else [pytest.mark.slow])
          for opset in range(SCRIPT_OPSET, NEWEST + 1)]
#: Worst error relative to the output scale: the public functions compute in float32 whatever the type.
TOLERANCE = {np.float16: {PUBLIC: 3e-3, "gather": 3e-3}, np.float64: {PUBLIC: 1e-5, "gather": 1e-12}}


def function_of(lowering: str, case: SweepCase):
    return VARIANTS[lowering][(case.use_bias, case.use_mask)]


def function_model(lowering: str, case: SweepCase, elem_type: int = onnx.TensorProto.FLOAT,
                   opset: int = SCRIPT_OPSET) -> onnx.ModelProto:
    """A one-node model at ``opset`` calling the case's public function, its FunctionProto attached; all
    dimensions symbolic."""
    function = function_of(lowering, case)
    names = list(function.to_function_proto().input)
    node = onnx.helper.make_node(function.name, names, ["Y"], domain=DOMAIN, **attributes(case))
    inputs = [onnx.helper.make_tensor_value_info(n, elem_type, [f"{n}{i}" for i in range(RANKS[n])]) for n in names]
    output = onnx.helper.make_tensor_value_info("Y", elem_type, ["N", "O", "Ho", "Wo"])
    return onnx.helper.make_model(
        onnx.helper.make_graph([node], "deform_conv2d", inputs, [output]),
        opset_imports=[onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(function, opset), ir_version=10)


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its local functions inlined (for runtimes that read none, like OpenVINO), checked."""
    flat = onnx.inliner.inline_local_functions(model)
    onnx.checker.check_model(flat, full_check=True)
    return flat


def feeds(lowering: str, case: SweepCase, arrays: dict) -> list[np.ndarray]:
    return [arrays[name] for name in function_of(lowering, case).to_function_proto().input]


def reference(case: SweepCase, arrays: dict) -> np.ndarray:
    return torchvision_reference(arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if case.use_mask else None,
                                 arrays["B"] if case.use_bias else None, case.stride, case.padding, case.dilation)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(CASES)])
def test_matches_torchvision_on_onnxruntime_and_reference(lowering: str, case: SweepCase) -> None:
    arrays = case.arrays(np.random.default_rng(SEED))
    model = function_model(lowering, case)
    onnx.checker.check_model(model, full_check=True)
    expected = reference(case, arrays)
    assert_close(run_onnxruntime(model, feeds(lowering, case, arrays)), expected)
    assert_close(run_reference(model, feeds(lowering, case, arrays)), expected)


@pytest.mark.parametrize(("lowering", "index"), OPENVINO_CASES, ids=[f"{lw}-case{i}" for lw, i in OPENVINO_CASES])
def test_matches_torchvision_on_openvino_after_inlining(lowering: str, index: int) -> None:
    case = SWEEP[index]
    arrays = case.arrays(np.random.default_rng(SEED))
    actual = run_openvino(inlined(function_model(lowering, case)), feeds(lowering, case, arrays))
    assert_close(actual, reference(case, arrays))


@pytest.mark.parametrize("opset", OPSETS)
def test_declared_at_the_models_opset_every_consumer_reads_it(opset: int) -> None:
    """The functions are written at opset 18; declared at a later model's opset (function_protos(f, opset))
    onnx.checker and onnx.inliner take them, and every runtime computes the same."""
    case = SWEEP[1]
    arrays = case.arrays(np.random.default_rng(SEED))
    model = function_model(PUBLIC, case, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    expected = reference(case, arrays)
    for run in (run_onnxruntime, run_reference):
        assert_close(run(model, feeds(PUBLIC, case, arrays)), expected)
    assert_close(run_openvino(inlined(model), feeds(PUBLIC, case, arrays)), expected)


def test_an_opset_before_the_functions_own_is_refused() -> None:
    with pytest.raises(ValueError, match="opset must be >= 18"):
        function_protos(VARIANTS[PUBLIC][(True, True)], SCRIPT_OPSET - 1)


def test_sweep_covers_the_ranges() -> None:
    """Guards the sweep itself: kernels 1–7 non-square, stride 1–3, padding 0–3, dilation 1–3, groups and
    offset groups up to 4 together and not multiples of each other, 1-pixel rows and columns, batches, far
    offsets, every variant."""
    assert {c.kernel[0] for c in SWEEP} | {c.kernel[1] for c in SWEEP} == set(range(1, 8))
    assert any(c.kernel[0] != c.kernel[1] for c in SWEEP)
    assert {s for c in SWEEP for s in c.stride} == {1, 2, 3}
    assert {p for c in SWEEP for p in c.padding} == {0, 1, 2, 3}
    assert {d for c in SWEEP for d in c.dilation} == {1, 2, 3}
    assert any(c.groups > 1 and c.offset_groups > 1 for c in SWEEP)
    assert any(c.groups % c.offset_groups and c.offset_groups % c.groups for c in SWEEP)
    assert any(c.height == 1 for c in SWEEP) and any(c.width == 1 for c in SWEEP)
    assert any(c.batch > 1 for c in SWEEP) and any(c.offset_scale >= 20 for c in SWEEP)
    assert {(c.use_mask, c.use_bias) for c in SWEEP} == {(m, b) for m in (0, 1) for b in (0, 1)}


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
@pytest.mark.parametrize("index", range(0, CASES, 8), ids=[f"case{i}" for i in range(0, CASES, 8)])
def test_other_float_types_match_torchvision_on_onnxruntime(lowering: str, dtype, index: int) -> None:
    case = SWEEP[index]
    arrays = {k: v.astype(dtype) for k, v in case.arrays(np.random.default_rng(SEED)).items()}
    model = function_model(lowering, case, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    actual = run_onnxruntime(model, feeds(lowering, case, arrays))
    assert actual.dtype == dtype
    expected = reference(case, {k: v.astype(np.float64) for k, v in arrays.items()})
    assert_close(actual, expected, rtol=TOLERANCE[dtype][lowering])


#: A layer with two offset groups, in which a few offsets are NaN, ±Inf or huge.
HOSTILE_CASE = SweepCase(2, 4, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 2.0)


def hostile_arrays(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    arrays = HOSTILE_CASE.arrays(np.random.default_rng(SEED))
    where = rng.random(arrays["offset"].shape) < 0.05
    arrays["offset"][where] = rng.choice(HOSTILE, size=int(where.sum()))
    with np.errstate(over="ignore"):  # ±3e38 overflows float16 to ±Inf, which is hostile too
        return {k: v.astype(dtype) for k, v in arrays.items()}


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["float16", "float32"])
def test_hostile_offsets_never_raise_and_match_where_torchvision_is_finite(lowering: str, dtype) -> None:
    arrays = hostile_arrays(dtype)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    actual = run_onnxruntime(function_model(lowering, HOSTILE_CASE, elem_type), feeds(lowering, HOSTILE_CASE, arrays))
    assert np.isfinite(actual).all()
    assert_close(actual, reference(HOSTILE_CASE, {k: v.astype(np.float64) for k, v in arrays.items()}),
                 rtol=1e-4 if dtype == np.float32 else 3e-2)


@pytest.mark.parametrize("precision", ["f32", None], ids=["f32", "default"])
def test_hostile_offsets_on_openvino_in_any_precision(precision) -> None:
    """OpenVINO's default precision on this CPU is bf16: the safety of the public function must not depend
    on the precision the runtime computes the positions in."""
    arrays = hostile_arrays(np.float32)
    model = inlined(function_model(PUBLIC, HOSTILE_CASE))
    actual = run_openvino(model, feeds(PUBLIC, HOSTILE_CASE, arrays), precision=precision)
    assert np.isfinite(actual).all()
    if precision == "f32":
        assert_close(actual, reference(HOSTILE_CASE, {k: v.astype(np.float64) for k, v in arrays.items()}))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_samples_far_outside_the_image_contribute_zero(lowering: str) -> None:
    """Every sample 1e6 pixels away: the output is exactly the bias, as torchvision gives."""
    case = SweepCase(1, 2, 3, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 1.0)
    arrays = case.arrays(np.random.default_rng(SEED))
    arrays["offset"] = np.full_like(arrays["offset"], 1e6)
    actual = run_onnxruntime(function_model(lowering, case), feeds(lowering, case, arrays))
    np.testing.assert_array_equal(actual, np.broadcast_to(arrays["B"][None, :, None, None], actual.shape))


#: Output positions P around the public functions' chunk count: fewer positions than chunks, one short of
#: equal chunks, equal chunks, one more.
BOUNDARY_POSITIONS = [1, grid_sample.CHUNKS - 1, grid_sample.CHUNKS, grid_sample.CHUNKS + 1, 3 * grid_sample.CHUNKS + 1]


@pytest.mark.parametrize("positions", BOUNDARY_POSITIONS)
def test_every_output_position_is_computed_once_at_the_chunk_boundaries(positions: int) -> None:
    """A 1 x P output (3x3 kernel, padding 1): the padding of the last chunk never shows in Y, and no chunk
    is empty (OpenVINO cannot take an empty tensor)."""
    case = SweepCase(2, 3, 2, 1, positions, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 2.0)
    arrays = case.arrays(np.random.default_rng(SEED))
    model = function_model(PUBLIC, case)
    expected = reference(case, arrays)
    assert expected.shape[2:] == (1, positions)
    assert_close(run_onnxruntime(model, feeds(PUBLIC, case, arrays)), expected)
    assert_close(run_openvino(inlined(model), feeds(PUBLIC, case, arrays)), expected)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_eager_onnxscript_matches_torchvision(lowering: str) -> None:
    case = SWEEP[0]
    arrays = case.arrays(np.random.default_rng(SEED))
    actual = function_of(lowering, case)(*feeds(lowering, case, arrays), **attributes(case))
    assert_close(np.asarray(actual), reference(case, arrays))


@pytest.mark.parametrize("function", [f for variants in VARIANTS.values() for f in variants.values()],
                         ids=lambda f: f.name)
def test_public_function_is_one_self_contained_proto_of_standard_ops(function) -> None:
    """No nested calls (every consumer of model-local functions reads it, in any order), no DeformConv."""
    (proto,) = function_protos(function)
    assert proto.domain == DOMAIN and proto.name == function.name
    assert not function.function_ir.get_called_functions()
    for node in proto.node:
        assert node.domain == "", node
        assert onnx.defs.has(node.op_type) and node.op_type != "DeformConv", node.op_type


@pytest.mark.parametrize("function", list(VARIANTS[PUBLIC].values()), ids=lambda f: f.name)
def test_public_function_body_is_within_the_node_budget(function) -> None:
    (proto,) = function_protos(function)
    assert len(proto.node) <= NODE_BUDGET
    assert sum(node.op_type == "GridSample" for node in proto.node) == grid_sample.CHUNKS


#: Every public function of both lowerings, and the model opsets its WebGPU lints run at: its own and the newest.
FUNCTIONS = [pytest.param(lowering, key, id=VARIANTS[lowering].name_of(key)) for lowering in LOWERINGS
             for key in VARIANTS[lowering]]


def _case_for(key: tuple[bool, bool], index: int = 0) -> SweepCase:
    """Sweep case ``index`` with the bias and mask of the function ``key`` = (bias, mask)."""
    return dataclasses.replace(SWEEP[index], use_bias=key[0], use_mask=key[1])


@pytest.mark.parametrize("lowering, key", FUNCTIONS)
@pytest.mark.parametrize("opset", [SCRIPT_OPSET, NEWEST])
def test_public_function_writes_no_op_that_jsep_runs_on_the_cpu(lowering: str, key, opset: int) -> None:
    """Inlined, no Min, Max or And and no Clip or Split of integers (:func:`helpers.jsep_cpu_nodes`), as the
    exported lowerings (``tests/lowering/test_lowerings.py``)."""
    assert not jsep_cpu_nodes(function_model(lowering, _case_for(key), opset=opset))


@pytest.mark.parametrize("lowering, key", FUNCTIONS)
@pytest.mark.parametrize("opset", [SCRIPT_OPSET, NEWEST])
def test_no_node_of_a_public_function_needs_more_storage_buffers_than_webgpu_guarantees(lowering: str, key,
                                                                                       opset: int) -> None:
    """Inlined, no node binds more than 8 storage buffers (:func:`helpers.wider_than_webgpu`): no ``Split`` of
    more than 6 outputs, no ``Concat`` of more than 7 inputs."""
    wide = wider_than_webgpu(function_model(lowering, _case_for(key), opset=opset))
    assert not wide, wide


@pytest.mark.parametrize("function", list(VARIANTS[PUBLIC].values()), ids=lambda f: f.name)
def test_public_function_splits_without_num_outputs(function) -> None:
    """Every ``Split`` is given its sizes, never ``num_outputs`` (opset 18), which onnxruntime-web's JSEP gets
    wrong (``tests/web/test_split_num_outputs.py``)."""
    (proto,) = function_protos(function)
    splits = [n for n in proto.node if n.op_type == "Split"]
    assert splits and all(len(n.input) == 2 and n.input[1] for n in splits)
    assert not [a.name for n in splits for a in n.attribute if a.name == "num_outputs"]


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


#: The modules whose import builds the script functions.
FUNCTION_MODULES = ("dcn_onnxscript.lowering.script.grid_sample", "dcn_onnxscript.lowering.script.gather")


def imported(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh process has imported after running ``code``."""
    printed = python(f"{code}\nimport sys\nprint(sorted(set(sys.modules) & {set(modules)!r}))")
    return eval(printed.splitlines()[-1])


def test_importing_the_package_builds_no_function() -> None:
    code = "import dcn_onnxscript\nfrom dcn_onnxscript import DOMAIN, function_protos"
    assert imported(code, (*FUNCTION_MODULES, "onnxscript")) == []


def test_rewrite_command_line_help_builds_no_function() -> None:
    code = ("import runpy, sys\nsys.argv = ['dcn_onnxscript', 'rewrite', '--help']\ntry:\n"
            "    runpy.run_module('dcn_onnxscript', run_name='__main__')\nexcept SystemExit:\n    pass")
    assert imported(code, FUNCTION_MODULES) == []


def test_the_first_lookup_builds_the_public_functions_only() -> None:
    code = "import dcn_onnxscript\nassert dcn_onnxscript.deform_conv2d.name == 'deform_conv2d'"
    assert imported(code, FUNCTION_MODULES) == [FUNCTION_MODULES[0]]
