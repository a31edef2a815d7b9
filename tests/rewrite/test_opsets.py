"""Conversion to lower opsets from ONNX's schemas (dcn_onnxscript.rewrite.opsets): a graph of the ops torch
writes at opset 18, converted to every opset 12 … 17, must pass the full checker, state the target opset and
compute what it computed; an op that cannot go down fails with an error naming it and the opset. The slow
test takes every node test case of ONNX's own backend suite written at opset 13 … 18 down to every lower
opset from 12: either an error naming the op, or the expected outputs on onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime
import pytest

from dcn_onnxscript.rewrite import opsets
from dcn_onnxscript.rewrite.rewriter import _onnx_converter

FLOAT = onnx.TensorProto.FLOAT
SOURCE = 18


def _torch_like_graph(dtype: int = FLOAT) -> onnx.ModelProto:
    """x (2, 4, 6, 6) → Conv → BatchNormalization (training_mode 0) → Relu → ReduceMean whose axes are a
    Reshape of a constant → Reshape (allowzero 1) → Softmax on the last axis → CastLike of a constant → Mul →
    Split (num_outputs) → LayerNormalization of one part → Concat with a Shape(start=1) → Cast: the forms
    torch's dynamo exporter writes at opset 18, before its optimizer."""
    rng = np.random.default_rng(0)

    def tensor(name, array):
        return onnx.numpy_helper.from_array(np.asarray(array), name)

    initializers = [tensor("w", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)),
                    tensor("scale", rng.random(4).astype(np.float32) + 0.5),
                    tensor("bias", rng.standard_normal(4).astype(np.float32)),
                    tensor("mean", rng.standard_normal(4).astype(np.float32) * 0.1),
                    tensor("var", rng.random(4).astype(np.float32) + 0.5),
                    tensor("axes_flat", np.array([2, 3], dtype=np.int64)),
                    tensor("axes_shape", np.array([2], dtype=np.int64)),
                    tensor("shape", np.array([2, 4], dtype=np.int64)),
                    tensor("two", np.array(2.0, dtype=np.float64)),
                    tensor("ln_scale", np.ones(2, dtype=np.float32)),
                    tensor("ln_bias", np.zeros(2, dtype=np.float32))]
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"], training_mode=0),
        oh.make_node("Relu", ["bn"], ["relu"]),
        oh.make_node("Reshape", ["axes_flat", "axes_shape"], ["axes"]),
        oh.make_node("ReduceMean", ["relu", "axes"], ["pooled"], keepdims=0),
        oh.make_node("Reshape", ["pooled", "shape"], ["flat"], allowzero=1),
        oh.make_node("Softmax", ["flat"], ["soft"], axis=-1),
        oh.make_node("CastLike", ["two", "soft"], ["two_like"]),
        oh.make_node("Mul", ["soft", "two_like"], ["scaled"]),
        oh.make_node("Split", ["scaled"], ["left", "right"], axis=1, num_outputs=2),
        oh.make_node("LayerNormalization", ["left", "ln_scale", "ln_bias"], ["normed"], axis=-1),
        oh.make_node("Shape", ["conv"], ["tail"], start=1),
        oh.make_node("Cast", ["tail"], ["tail_float"], to=FLOAT),
        oh.make_node("Concat", ["normed", "right"], ["joined"], axis=1),
        oh.make_node("ReduceSum", ["tail_float"], ["tail_sum"], keepdims=1),
        oh.make_node("Add", ["joined", "tail_sum"], ["y"]),
    ]
    graph = oh.make_graph(nodes, "torch_like", [oh.make_tensor_value_info("x", dtype, [2, 4, 6, 6])],
                          [oh.make_tensor_value_info("y", dtype, [2, 4])], initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", SOURCE)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _convert(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    return ir.to_proto(opsets.convert_version(ir.from_proto(model), target, _onnx_converter))


@pytest.mark.parametrize("target", range(opsets.MIN_OPSET, SOURCE))
def test_torch_like_graph_goes_down_to_every_opset_and_computes_the_same(target):
    model = _torch_like_graph()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    converted = _convert(model, target)
    onnx.checker.check_model(converted, full_check=True)
    assert [e.version for e in converted.opset_import if e.domain == ""] == [target]
    assert all(node.domain == "" for node in converted.graph.node)
    np.testing.assert_allclose(_run(converted, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def _single_node(node: onnx.NodeProto, inputs: list, source: int = SOURCE) -> onnx.ModelProto:
    values = [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs]
    output = oh.make_tensor_value_info(node.output[0], inputs[0][1], inputs[0][2])  # the ops here keep the shape
    graph = oh.make_graph([node], "one", values, [output])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", source)], ir_version=8)


def test_softmax_over_a_middle_axis_goes_down_between_transposes():
    """Softmax over a middle axis means another computation before opset 13 (ONNX's own converter gives it
    the old opset as it is, and it computes something else)."""
    model = _single_node(oh.make_node("Softmax", ["x"], ["y"], axis=1), [("x", FLOAT, [2, 3, 4])])
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)}
    converted = _convert(model, 12)
    onnx.checker.check_model(converted, full_check=True)
    np.testing.assert_allclose(_run(converted, feeds)[0], _run(model, feeds)[0], rtol=1e-6)


@pytest.mark.parametrize("node, inputs, target, reason", [
    (oh.make_node("Mul", ["x", "x"], ["y"]), [("x", onnx.TensorProto.BFLOAT16, [2])], 12,
     r"Mul: A of type tensor\(bfloat16\) is not accepted at opset 12"),
    (oh.make_node("ReduceMean", ["x", "axes"], ["y"]), [("x", FLOAT, [2, 3]), ("axes", onnx.TensorProto.INT64, [1])],
     17, "ReduceMean: 2 inputs, opset 17 takes 1 to 1"),
    (oh.make_node("GridSample", ["x", "grid"], ["y"]), [("x", FLOAT, [1, 1, 2, 2]), ("grid", FLOAT, [1, 2, 2, 2])],
     15, "GridSample: exists from opset 16 on"),
])
def test_what_cannot_go_down_is_named_with_the_opset(node, inputs, target, reason):
    with pytest.raises(ValueError, match=f"from opset {SOURCE} to {target} .*{reason}"):
        _convert(_single_node(node, inputs), target)


#: GridSample's interpolation modes at opset 16 and their names from opset 20 on.
GRID_SAMPLE_MODES = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}


@pytest.mark.parametrize("mode", sorted(GRID_SAMPLE_MODES))
@pytest.mark.parametrize("source, target", [(20, 19), (20, 16), (21, 17), (16, 20), (19, 21)])
def test_grid_sample_modes_take_the_names_of_the_target_opset(mode: str, source: int, target: int):
    """Opset 20 renamed GridSample's modes (bilinear -> linear, bicubic -> cubic): a node converted across 20,
    either way, takes the target's name, so onnxruntime loads it and it samples as before."""
    written = mode if source < 20 else GRID_SAMPLE_MODES[mode]
    node = oh.make_node("GridSample", ["x", "grid"], ["y"], mode=written, align_corners=0)
    graph = oh.make_graph([node], "one", [oh.make_tensor_value_info("x", FLOAT, [1, 2, 5, 4]),
                                          oh.make_tensor_value_info("grid", FLOAT, [1, 3, 3, 2])],
                          [oh.make_tensor_value_info("y", FLOAT, [1, 2, 3, 3])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", source)], ir_version=8)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((1, 2, 5, 4)).astype(np.float32),
             "grid": rng.uniform(-1.2, 1.2, (1, 3, 3, 2)).astype(np.float32)}
    converted = _convert(model, target)
    onnx.checker.check_model(converted, full_check=True)
    (attribute,) = [a for a in converted.graph.node[0].attribute if a.name == "mode"]
    assert attribute.s.decode() == (mode if target < 20 else GRID_SAMPLE_MODES[mode])
    np.testing.assert_allclose(_run(converted, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def _backend_cases():
    """ONNX's backend node test cases written at opsets 13 … 18, each with every lower target from 12."""
    import onnx.backend.test.case.node as node_cases

    for case in node_cases.collect_testcases(None):
        source = next((e.version for e in case.model.opset_import if e.domain in ("", "ai.onnx")), None)
        if source is None or not 13 <= source <= SOURCE or len(case.model.opset_import) > 1:
            continue
        for target in range(opsets.MIN_OPSET, source):
            yield pytest.param(case, target, id=f"{case.name}-{target}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function is test_onnx_backend_node_cases_go_down_or_fail_naming_the_op:
        # collecting ONNX's cases takes seconds: only where slow tests are selected
        deselected = re.search(r"\bnot\s+slow\b", metafunc.config.getoption("markexpr") or "")
        metafunc.parametrize("case, target", [] if deselected else list(_backend_cases()))


@pytest.mark.slow
def test_onnx_backend_node_cases_go_down_or_fail_naming_the_op(case, target):
    inputs, outputs = case.data_sets[0]
    feeds = {value.name: array for value, array in zip(case.model.graph.input, inputs)}
    try:
        _run(case.model, feeds)
    except Exception:  # noqa: BLE001  (onnxruntime lacks the op at its own opset: nothing to compare with)
        pytest.skip("onnxruntime does not run the original")
    op_types = {node.op_type for node in case.model.graph.node}
    try:
        converted = _convert(case.model, target)
    except ValueError as error:
        assert f"to {target}" in str(error) and any(op in str(error) for op in op_types), str(error)
        return
    onnx.checker.check_model(converted, full_check=True)
    for actual, expected in zip(_run(converted, feeds), outputs):
        _assert_close(actual, expected, case.rtol or 1e-4, case.atol or 1e-6)


def _assert_close(actual, expected, rtol: float, atol: float) -> None:
    """Tensors, or sequences of them (sequence-typed outputs), element by element."""
    if isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _assert_close(a, e, rtol, atol)
    elif expected is None:
        assert actual is None
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
