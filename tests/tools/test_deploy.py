"""Faults of deployment runtimes and tools, each as the smallest ONNX graph that shows it, run as an xfail
that is strict for the releases where the fault was seen (``faults.Fault``: a release that fixes it flips the
case to XPASS, which fails) beside a control graph that passes, so that the fault is pinned to one pattern.
docs/deploy.md has the texts.

Tool faults that no graph change can fix:
- onnxruntime-openvino 1.24 (OpenVINO 2025.4 inside): GridSample-20's mode "linear" is refused; "bilinear"
  (GridSample-16) is taken. At opset 20 "bilinear" is not a valid mode, so an opset-20 graph cannot avoid it.
- tinygrad 0.14's ONNX runner has no GridSample at all, and its Gather fails on constant indices of rank 2
  (which the gather lowering no longer writes).
- onnx_tool 1.0.1's shape inference of a GridSample whose image comes from a Conv adds a tuple to a list.

- OpenCV 4.x's DNN importer (OpenCV 5.0's "classic engine") refuses dynamic exports (the matrix's opencv4
  cases: a BOOL constant, or ``Shape`` of an input of dynamic size): they need static shapes there.
- OpenCV 4.x (4.14.0, the newest 4.x) has no GridSample layer: ``rewrite --for opencv4`` writes each
  GridSample of static sizes as a Gather of its four neighbours, which it runs.
- rknn-toolkit2 2.5.0 merges every two Gather nodes that read one tensor, keeping one node's indices:
  ``rewrite --for rknn`` writes them as one Gather of all their indices (the gather lowering writes one per tap).

Ones the lowerings avoid, kept as lints of the pattern:
- OpenCV 4.x's DNN importer segfaults on the CumSum of a constant (the lowerings fold such constants where
  shapes are static).
- The OpenVINO EP leaves a ReduceSum or Reshape whose result has rank 0 to the CPU EP (the lowerings keep
  such sizes at shape (1,), or Squeeze them).
- pnnx turns a Split whose part sizes are not written out into an ncnn Slice without slices, on which ncnn
  crashes (the lowerings write the sizes); ncnn has no select (``rewrite --for ncnn`` writes the lowering's
  one comparison as a Clip).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from dcn_onnxscript.rewrite import targets
from faults import DEPLOY, OPENCV4, OVEP, RKNN, Fault
from runtimes import run_onnxruntime, run_runtime, run_worker

#: The IR version of the reproductions: the oldest runtimes here (onnxruntime-openvino 1.24, pnnx's
#: onnxruntime) refuse onnx 1.23's default.
IR_VERSION = 8
IMAGE, GRID = (1, 2, 4, 5), (1, 3, 3, 2)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "repro", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_then_grid_sample(opset: int) -> onnx.ModelProto:
    """x (1, 2, 4, 5) -> 1x1 Conv -> GridSample (bilinear: "bilinear" before opset 20, "linear" from 20) at grid
    (1, 3, 3, 2) -> y (1, 2, 3, 3)."""
    mode = "linear" if opset >= 20 else "bilinear"
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("GridSample", ["c", "grid"], ["y"], mode=mode, align_corners=0)]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], np.eye(2, dtype=np.float32).ravel())
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, IMAGE),
                          helper.make_tensor_value_info("grid", TensorProto.FLOAT, GRID)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], [weight], opset=opset)


def grid_sample_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(IMAGE).astype(np.float32), rng.uniform(-1.2, 1.2, GRID).astype(np.float32)]


def cumsum_of_constant(constant: bool) -> onnx.ModelProto:
    """x (1, 3) + CumSum(t, axis 1), t the ones of a ``ConstantOfShape`` of a constant shape (``constant``),
    or x itself."""
    ones = helper.make_node("ConstantOfShape", ["shape"], ["t"],
                            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    nodes = [ones] if constant else [helper.make_node("Identity", ["x"], ["t"])]
    nodes += [helper.make_node("CumSum", ["t", "axis"], ["steps"]), helper.make_node("Add", ["x", "steps"], ["y"])]
    initializers = [helper.make_tensor("axis", TensorProto.INT64, [], [1])]
    if constant:
        initializers.append(helper.make_tensor("shape", TensorProto.INT64, [2], [1, 3]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializers)


def _assert_runs_as_onnxruntime(runtime: str, model: onnx.ModelProto, inputs: list[np.ndarray]) -> None:
    expected = run_onnxruntime(model, inputs)
    np.testing.assert_allclose(run_runtime(runtime, model, inputs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.deploy
@pytest.mark.parametrize("opset", [
    16,
    pytest.param(20, marks=Fault("onnxruntime-openvino", "1.24.1", "'linear' is not a member of enum "
                                 "op::v9::GridSample::InterpolationMode", OVEP).mark()),
])
def test_openvino_ep_takes_grid_sample(opset):
    """The OpenVINO EP (CPU fallback disabled) takes GridSample-16 ("bilinear") but refuses GridSample-20's
    name for the same mode ("linear"). (A model of a GridSample alone is left to the CPU EP either way: the
    Conv gives the provider a subgraph it takes.)"""
    _assert_runs_as_onnxruntime("openvino_ep", conv_then_grid_sample(opset), grid_sample_inputs())


@pytest.mark.deploy
@Fault("tinygrad", "0.14.0", "op='GridSample' is not supported", DEPLOY).mark()
def test_tinygrad_runs_grid_sample():
    _assert_runs_as_onnxruntime("tinygrad", conv_then_grid_sample(16), grid_sample_inputs())


@pytest.mark.parametrize("after_conv", [
    False,
    pytest.param(True, marks=Fault("onnx-tool", "1.0.1", "GridSample's shape is a Conv's shape (a tuple) + the "
                                   "grid's (a list)").mark(raises=TypeError)),
])
def test_onnx_tool_profiles_grid_sample(after_conv):
    """onnx_tool's ``model_profile`` of a GridSample whose image is a graph input works; of one whose image
    a Conv computes, it fails in shape inference (its GridSample node reads ``shape`` where the others call
    ``get_shape()``)."""
    onnx_tool = pytest.importorskip("onnx_tool")
    model = conv_then_grid_sample(20)
    if not after_conv:
        del model.graph.node[0]
        model.graph.node[0].input[0] = "x"
        del model.graph.initializer[:]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        onnx_tool.model_profile(path, save_profile=os.path.join(tmp, "profile.csv"))


@pytest.mark.parametrize("runtime, constant", [
    ("opencv", True),
    ("opencv", False),
    pytest.param("opencv4", False, marks=pytest.mark.deploy),
    pytest.param("opencv4", True, marks=[pytest.mark.deploy, Fault(
        "opencv-python-headless", "4.14.0.94", "segfault on the CumSum of a constant", OPENCV4).mark()]),
])
def test_opencv_runs_cumsum(runtime, constant):
    """OpenCV DNN runs x + CumSum(x), and OpenCV 5 x + CumSum(ones), but OpenCV 4.x's importer segfaults
    when the CumSum's input is a constant (the lowerings fold such constants where shapes are static)."""
    if runtime == "opencv":
        pytest.importorskip("cv2")
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    _assert_runs_as_onnxruntime(runtime, cumsum_of_constant(constant), [x])


def gather_rows(indices: np.ndarray) -> onnx.ModelProto:
    """x (3, 4) -> Gather(x, ``indices``, axis 0), the indices an initializer."""
    nodes = [helper.make_node("Gather", ["x", "indices"], ["y"], axis=0)]
    constant = helper.make_tensor("indices", TensorProto.INT64, indices.shape, indices.ravel())
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*indices.shape, 4])], [constant])


@pytest.mark.deploy
@pytest.mark.parametrize("indices", [
    np.array([0, 2, 1]),
    pytest.param(np.array([[0, 2], [1, 0]]), marks=Fault(
        "tinygrad", "0.14.0", "'<' not supported between instances of 'list' and 'int'", DEPLOY).mark()),
], ids=["rank1", "rank2"])
def test_tinygrad_gathers_with_constant_indices(indices):
    """tinygrad's fast path for constant Gather indices reads them as a flat list: rank 1 works, rank 2
    fails."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    _assert_runs_as_onnxruntime("tinygrad", gather_rows(indices), [x])


def size_plus_one(rank_0: bool) -> onnx.ModelProto:
    """x (N, 3) -> N counted as the ReduceSum of N ones, of shape () (``rank_0``) or (1,), plus one."""
    shape = [1] if not rank_0 else []
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "first"], ["n"]),
             helper.make_node("ConstantOfShape", ["n"], ["ones"],
                              value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
             helper.make_node("ReduceSum", ["ones"], ["count"], keepdims=0 if rank_0 else 1),
             helper.make_node("Add", ["count", "plus"], ["y"])]
    initializers = [helper.make_tensor("first", TensorProto.INT64, [1], [0]),
                    helper.make_tensor("plus", TensorProto.INT64, shape, [1])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                  [helper.make_tensor_value_info("y", TensorProto.INT64, shape)], initializers, opset=13)


@pytest.mark.deploy
@pytest.mark.parametrize("rank_0", [
    False,
    pytest.param(True, marks=Fault("onnxruntime-openvino", "1.24.1", "a ReduceSum of rank-0 result is 'assigned "
                                   "to the default CPU EP'", OVEP).mark()),
])
def test_openvino_ep_takes_a_counted_size(rank_0):
    """The OpenVINO EP (CPU fallback disabled) takes a ReduceSum whose result has shape (1,), but leaves one
    whose result is a scalar to the CPU EP (a Reshape to () too)."""
    _assert_runs_as_onnxruntime("openvino_ep", size_plus_one(rank_0), [np.zeros((5, 3), dtype=np.float32)])


def channels_reversed(sizes_written: bool) -> onnx.ModelProto:
    """x (1, 4, 3, 5) -> an identity 1x1 Conv (from which pnnx learns that axis 0 is the batch) -> Split into
    its 4 channels (the sizes an input, or only the count of outputs) -> Concat in reverse order."""
    parts = [f"c{i}" for i in range(4)]
    split_inputs = ["features", "sizes"] if sizes_written else ["features"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["features"]),
             helper.make_node("Split", split_inputs, parts, axis=1),
             helper.make_node("Concat", parts[::-1], ["y"], axis=1)]
    initializers = [helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=np.float32).ravel())]
    if sizes_written:
        initializers.append(helper.make_tensor("sizes", TensorProto.INT64, [4], [1] * 4))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 5])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 5])], initializers)


@pytest.mark.deploy
@pytest.mark.parametrize("sizes_written", [
    True,
    pytest.param(False, marks=Fault("pnnx", "20261020", "an ncnn Slice without slices; ncnn crashes",
                                    DEPLOY).mark(raises=AssertionError)),
])
def test_ncnn_splits_channels(sizes_written):
    """pnnx converts a Split whose part sizes are an input; one whose sizes only its count of outputs gives
    becomes an ncnn ``Slice`` without slices, and ncnn crashes on it."""
    x = np.arange(60, dtype=np.float32).reshape(1, 4, 3, 5)
    _assert_runs_as_onnxruntime("ncnn", channels_reversed(sizes_written), [x])


def at_most_two(select: bool) -> onnx.ModelProto:
    """x (1, 2, 3, 4) at most 2: ``Where(x < 2, x, 2)`` (``select``) or ``Clip(x, max=2)``."""
    nodes = [helper.make_node("Less", ["x", "two"], ["inside"]),
             helper.make_node("Where", ["inside", "x", "two"], ["y"])] if select else \
        [helper.make_node("Clip", ["x", "", "two"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])],
                  [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])


@pytest.mark.deploy
@pytest.mark.parametrize("select", [
    False,
    pytest.param(True, marks=Fault("ncnn", "1.0.20261020", "layer torch.lt not exists or registered",
                                   DEPLOY).mark(raises=AssertionError)),
])
def test_ncnn_bounds_a_value(select):
    """ncnn bounds a value with a Clip, but has no comparison or select for ``Where(x < 2, x, 2)``."""
    x = np.linspace(-3, 5, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    _assert_runs_as_onnxruntime("ncnn", at_most_two(select), [x])


@pytest.mark.deploy
@pytest.mark.parametrize("opset", [16, 20])
@pytest.mark.parametrize("for_opencv4", [
    True,
    pytest.param(False, marks=Fault("opencv-python-headless", "4.14.0.94", "Can't create layer of type "
                                    "'GridSample'", OPENCV4).mark(raises=AssertionError)),
])
def test_opencv4_runs_grid_sample(opset, for_opencv4):
    """OpenCV 4.x has no GridSample layer; after ``rewrite --for opencv4`` (a Gather of the four neighbours,
    :func:`dcn_onnxscript.rewrite.targets.grid_samples_as_gather`) it matches onnxruntime, grid values far
    outside the image included."""
    model, inputs = conv_then_grid_sample(opset), grid_sample_inputs()
    inputs[1].flat[:4] = [7.0, -1e30, 3.9, -4.0]  # outside the image: zero, as GridSample reads
    expected = run_onnxruntime(model, inputs)
    if for_opencv4:
        retargeted = ir.from_proto(model)
        assert targets.for_target(retargeted, "opencv4") == 1
        model = ir.to_proto(retargeted)
        assert "GridSample" not in {node.op_type for node in model.graph.node}
    np.testing.assert_allclose(run_worker("opencv4", model, inputs), expected, rtol=1e-5, atol=1e-5)


def two_gathers_of_one_table() -> onnx.ModelProto:
    """x (1, 2, 4, 5) as a table (20, 2) of its pixels; rows (2, 6) (float, cut to int64 in the graph) split into
    two (1, 6), each gathered from the table by a ``Gather`` of its own, concatenated: y (2, 6, 2)."""
    nodes = [helper.make_node("Transpose", ["x"], ["pixels"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["pixels", "table_shape"], ["table"]),
             helper.make_node("Cast", ["rows"], ["indices"], to=TensorProto.INT64),
             helper.make_node("Split", ["indices", "parts"], ["first", "second"], axis=0),
             helper.make_node("Gather", ["table", "first"], ["a"], axis=0),
             helper.make_node("Gather", ["table", "second"], ["b"], axis=0),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
    constants = [onnx.numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "table_shape"),
                 onnx.numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "parts")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(IMAGE)),
                          helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 2])], constants, opset=13)


@pytest.mark.deploy
@pytest.mark.parametrize("for_rknn", [
    True,
    pytest.param(False, marks=Fault("rknn-toolkit2", "2.5.0", "remove_parallel_gather merges two Gather nodes of "
                                    "one table and keeps the first one's indices", RKNN).mark(raises=AssertionError)),
])
def test_rknn_gathers_two_index_sets_from_one_table(for_rknn):
    """rknn-toolkit2 merges the two ``Gather`` nodes of one table, the second then reads the first's rows;
    after ``rewrite --for rknn`` (one ``Gather`` of both, :func:`dcn_onnxscript.rewrite.targets.gathers_per_table`)
    it matches onnxruntime."""
    model, rng = two_gathers_of_one_table(), np.random.default_rng(0)
    inputs = [rng.standard_normal(IMAGE).astype(np.float32), rng.permutation(20)[:12].reshape(2, 6).astype(np.float32)]
    expected = run_onnxruntime(model, inputs)
    if for_rknn:
        retargeted = ir.from_proto(model)
        assert targets.for_target(retargeted, "rknn") == 1
        model = ir.to_proto(retargeted)
    # float16 NPU arithmetic: each value is a pixel, read to float16's precision
    np.testing.assert_allclose(run_worker("rknn", model, inputs), expected, rtol=1e-3, atol=1e-3)
