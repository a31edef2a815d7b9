"""The standalone cores (dcn_onnxscript.dcnv3 and dcnv4, :mod:`dcn_onnxscript.lowering.script.cores`): one-node
models calling them as model-local functions, every size symbolic, checked with onnx.checker's full check and
run on onnxruntime against the package's eager ops over generated cases (geometry, groups, offset_scale,
remove_center), in float16/float64, under hostile offsets, at the model opsets that respell their ops, inlined
on OpenVINO, eagerly through onnxscript; each is one self-contained proto of standard ops within its node
budget, built on first lookup only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch
from core_reference import CoreCase, core_reference, generated_cases

import dcn_onnxscript
import dcn_onnxscript.ops  # noqa: F401  (defines the eager ops)
from dcn_onnxscript import DOMAIN, function_protos
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.lowering.script import grid_sample
from dcn_onnxscript.lowering.script.protos import SCRIPT_OPSET
from dcn_onnxscript.tools.bench.internimage import CoreModule
from helpers import HOSTILE, assert_close, jsep_cpu_nodes, wider_than_webgpu
from runtimes import run_onnxruntime, run_openvino

CASES = {3: generated_cases(12, version=3, seed=20261205), 4: generated_cases(12, version=4, seed=20261206)}
NEWEST = onnx.defs.onnx_opset_version()
#: Most nodes a core's body may have: deform_conv2d's public function's (tests/lowering/test_script.py holds it
#: to 160; 154 today) and the layout steps computed from the attributes (tap points, channels, offset shift,
#: identity weight: about 110).
NODE_BUDGET = 265
_TYPES = {np.float16: onnx.TensorProto.FLOAT16, np.float32: onnx.TensorProto.FLOAT, np.float64: onnx.TensorProto.DOUBLE}


def function_of(version: int):
    return dcn_onnxscript.dcnv3 if version == 3 else dcn_onnxscript.dcnv4


def attributes(case: CoreCase) -> dict:
    c = case.core
    return dict(kernel_h=c.kernel[0], kernel_w=c.kernel[1], stride_h=c.stride[0], stride_w=c.stride[1],
                pad_h=c.padding[0], pad_w=c.padding[1], dilation_h=c.dilation[0], dilation_w=c.dilation[1],
                group=c.group, group_channels=c.group_channels, offset_scale=c.offset_scale,
                remove_center=int(c.remove_center))


def core_function_model(case: CoreCase, dtype=np.float32, opset: int = SCRIPT_OPSET) -> onnx.ModelProto:
    """One node calling the case's standalone core, its FunctionProto attached; all dimensions symbolic."""
    function = function_of(case.core.version)
    names = list(function.to_function_proto().input)
    node = onnx.helper.make_node(function.name, names, ["Y"], domain=DOMAIN, **attributes(case))
    inputs = [onnx.helper.make_tensor_value_info(n, _TYPES[dtype], [f"{n}{i}" for i in range(4)]) for n in names]
    output = onnx.helper.make_tensor_value_info("Y", _TYPES[dtype], ["N", "Ho", "Wo", "C"])
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node], function.name, inputs, [output]),
        opset_imports=[onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(function, opset), ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def eager(case: CoreCase, inputs: list[np.ndarray]) -> np.ndarray:
    """The package's eager op in float64."""
    return CoreModule(case.core)(*(torch.from_numpy(a.astype(np.float64)) for a in inputs)).numpy()


@pytest.mark.parametrize("case", CASES[3] + CASES[4], ids=str)
def test_matches_the_eager_op_on_onnxruntime(case: CoreCase) -> None:
    inputs = case.inputs(seed=1)
    assert_close(run_onnxruntime(core_function_model(case), inputs), eager(case, inputs), rtol=1e-4)


@pytest.mark.parametrize("version", [3, 4])
def test_eager_op_and_function_match_the_reference(version: int) -> None:
    """The comparison above is against an independent statement of the cores too."""
    case = CASES[version][1]
    inputs = case.inputs(seed=2)
    expected = core_reference(case.core, *inputs)
    assert_close(run_onnxruntime(core_function_model(case), inputs), expected, rtol=1e-4)


@pytest.mark.parametrize("opset", sorted({SCRIPT_OPSET, 20, NEWEST}))
@pytest.mark.parametrize("version", [3, 4])
def test_declared_at_the_models_opset(version: int, opset: int) -> None:
    case = CASES[version][2]
    inputs = case.inputs(seed=3)
    assert_close(run_onnxruntime(core_function_model(case, opset=opset), inputs), eager(case, inputs), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.float64], ids=["float16", "float64"])
@pytest.mark.parametrize("version", [3, 4])
def test_other_float_types(version: int, dtype) -> None:
    """The function computes in float32 whatever the type, and returns the input's type."""
    case = CASES[version][3]
    inputs = case.inputs(seed=4, dtype=dtype)
    actual = run_onnxruntime(core_function_model(case, dtype), inputs)
    assert actual.dtype == dtype
    assert_close(actual, eager(case, inputs), rtol=5e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("version", [3, 4])
def test_hostile_offsets_contribute_zero(version: int) -> None:
    """NaN, ±Inf and huge offsets: finite outputs, as the eager op (which moves them far away) gives."""
    core = Core((3, 3), (1, 1), (1, 1), (1, 1), group=2, group_channels=3, offset_scale=0.5, remove_center=True,
                version=version)
    case = CoreCase(core, size=(5, 6), batch=2)
    inputs = case.inputs(seed=5)
    rng = np.random.default_rng(5)
    at = rng.random(inputs[1].shape) < 0.1
    if version == 4:  # the masks stay finite: a hostile mask is the model's own value, not a position
        P = case.core.points
        at &= (np.arange(inputs[1].shape[3]) % (3 * P) < 2 * P)[None, None, None, :]
    inputs[1][at] = rng.choice(HOSTILE, int(at.sum())).astype(np.float32)
    actual = run_onnxruntime(core_function_model(case), inputs)
    assert np.isfinite(actual).all()
    assert_close(actual, eager(case, inputs), rtol=1e-4)


@pytest.mark.parametrize("version", [3, 4])
def test_inlined_runs_on_openvino(version: int) -> None:
    """OpenVINO reads no model-local functions: the model as onnx.inliner flattens it."""
    case = CASES[version][5]
    inputs = case.inputs(seed=7)
    flat = onnx.inliner.inline_local_functions(core_function_model(case))
    onnx.checker.check_model(flat, full_check=True)
    assert_close(run_openvino(flat, inputs), eager(case, inputs), rtol=1e-4)


@pytest.mark.parametrize("version", [3, 4])
def test_eager_onnxscript_call_matches_the_eager_op(version: int) -> None:
    case = CASES[version][4]
    inputs = case.inputs(seed=6)
    actual = function_of(version)(*inputs, **attributes(case))
    assert_close(np.asarray(actual), eager(case, inputs), rtol=1e-4)


@pytest.mark.parametrize("version", [3, 4])
def test_is_one_self_contained_proto_of_standard_ops(version: int) -> None:
    function = function_of(version)
    (proto,) = function_protos(function)
    assert proto.domain == DOMAIN and proto.name == f"dcnv{version}"
    assert not function.function_ir.get_called_functions()
    assert all(node.domain == "" and onnx.defs.has(node.op_type) for node in proto.node)


@pytest.mark.parametrize("version", [3, 4])
def test_body_is_within_the_node_budget(version: int) -> None:
    (proto,) = function_protos(function_of(version))
    assert len(proto.node) <= NODE_BUDGET
    assert sum(node.op_type == "GridSample" for node in proto.node) == grid_sample.CHUNKS


@pytest.mark.parametrize("version", [3, 4])
def test_inlined_body_keeps_to_onnxruntime_webs_webgpu_rules(version: int) -> None:
    """No op that onnxruntime-web's JSEP runs on the CPU (Min, Max, And; Clip or Split of integers) and no node
    binding more than 8 storage buffers (:func:`helpers.jsep_cpu_nodes`, :func:`helpers.wider_than_webgpu`)."""
    model = core_function_model(CASES[version][0])
    assert not jsep_cpu_nodes(model)
    assert not wider_than_webgpu(model)


def test_built_on_first_lookup_only() -> None:
    code = ("import sys, dcn_onnxscript\nbefore = 'dcn_onnxscript.lowering.script.cores' in sys.modules\n"
            "assert dcn_onnxscript.dcnv3.name == 'dcnv3'\n"
            "print(before, 'dcn_onnxscript.lowering.script.cores' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "True"]
