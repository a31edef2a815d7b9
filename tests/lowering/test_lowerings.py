"""The lowerings themselves (dcn_onnxscript.lowering.gather and .grid_sample), written through an onnx_ir
tape without torch.onnx: property-based random configurations against torchvision on onnxruntime and
onnx.reference, every opset from 12 (16 for grid_sample), float16 without out-of-bounds reads under
hostile offsets, offsets in either pair order, and the node budget of one layer."""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.layer import Layer, OffsetOrder
from helpers import (
    HOSTILE,
    SweepCase,
    assert_close,
    inferred_values,
    jsep_cpu_nodes,
    lowering_model,
    pass_through_weights,
    sweep_layer,
    torchvision_reference,
    wider_than_webgpu,
)
from runtimes import run_onnxruntime, run_reference, run_runtime, run_tract

#: Nodes one deformable layer may add, per lowering (Constant nodes excluded: exporters and the rewriter keep
#: constants as initializers). gather writes five nodes per tap (the tap's rows cut from the plan by a Gather,
#: the neighbours' Gather, blend, MatMul by w_k, Add).
NODE_BUDGET = {"gather": 129, "grid_sample": 67}
#: What a dynamic grid_sample layer spends on top of NODE_BUDGET to read each size from one input: X's N cut
#: into offset and mask (a Slice of X's Shape, two Slices, the mask's ends as a Concat of N and Ho, Wo),
#: H, W and Ho, Wo sliced from Shapes (onnx_tool ignores Shape's start), the (y, x) swap as Split + Concat
#: (converters misread a Gather of the channels): 71 nodes (float16 72). A static grid_sample layer folds its
#: grid into constants: 52 (float16 56). Both spend seven nodes on WebGPU's storage-buffer rule (wide Splits
#: and Concats written as trees).
GRID_SAMPLE_DYNAMIC_SIZES = 5


@st.composite
def sweep_cases(draw) -> SweepCase:
    """Random layers: kernels 1–5 (non-square), stride, padding and dilation 1–3 (padding from 0), conv
    and offset groups 1–3, 1-pixel images, batches, offsets from within a pixel to far outside."""
    groups, offset_groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    case = SweepCase(
        batch=draw(st.integers(1, 3)), channels=int(np.lcm(groups, offset_groups)) * draw(st.integers(1, 2)),
        out_channels=groups * draw(st.integers(1, 2)), height=height, width=width, kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, groups=groups, offset_groups=offset_groups,
        use_mask=draw(st.booleans()), use_bias=draw(st.booleans()),
        offset_scale=draw(st.sampled_from([0.5, 3.0, 40.0])))
    assume(min(case.output_size) >= 1)
    return case


def _with_static_sizes(layer: Layer, shapes: dict) -> Layer:
    """``layer`` with the sizes the exporters fill in from static shapes: N, (H, W) of X, (Ho, Wo) of offset."""
    (n, _, h, w), (ho, wo) = shapes["X"], shapes["offset"][2:]
    return dataclasses.replace(layer, batch=n, input_size=(h, w), output_size=(ho, wo))


#: How a test model's shapes are given: every size symbolic, every size static (and in the Layer, as
#: exporters give them), or only the batch symbolic (the common export with a dynamic batch).
SHAPES = ("dynamic", "static", "dynamic_batch")


def _shaped_model(lowering: str, layer: Layer, arrays: dict, shapes: str, opset: int = 18) -> onnx.ModelProto:
    """The layer's model with the arrays' shapes given as ``shapes`` (one of SHAPES)."""
    if shapes == "dynamic":
        return lowering_model(lowering, layer, opset)
    static = {name: list(value.shape) for name, value in arrays.items()}
    layer = _with_static_sizes(layer, static)
    if shapes == "dynamic_batch":
        static = {name: ["N", *shape[1:]] if name in ("X", "offset", "mask") else shape
                  for name, shape in static.items()}
        layer = dataclasses.replace(layer, batch=None)
    return lowering_model(lowering, layer, opset, static_shapes=static)


def _feeds(case: SweepCase, arrays: dict, order: OffsetOrder = OffsetOrder.YX) -> list[np.ndarray]:
    """The model's inputs, the offsets' pairs in ``order``."""
    arrays = {**arrays, "offset": _in_order(arrays["offset"], order)}
    return [arrays[n] for n in ("X", "W", "offset", "B", "mask")
            if n in ("X", "W", "offset") or (n == "B" and case.use_bias) or (n == "mask" and case.use_mask)]


def _in_order(offset: np.ndarray, order: OffsetOrder) -> np.ndarray:
    """deform_conv2d's ``offset`` (N, 2·G·K, Ho, Wo), (Δy, Δx) pairs, with its pairs in ``order``."""
    N, C, Ho, Wo = offset.shape
    pairs = order.ordered(np.moveaxis(offset.reshape(N, C // 2, 2, Ho, Wo), 2, 0))
    return np.ascontiguousarray(np.moveaxis(pairs, 0, 2).reshape(offset.shape))


def _reference(case: SweepCase, arrays: dict) -> np.ndarray:
    return torchvision_reference(arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if case.use_mask else None,
                                 arrays["B"] if case.use_bias else None, case.stride, case.padding, case.dilation)


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), opset_step=st.integers(0, 16), seed=st.integers(0, 2**16), shapes=st.sampled_from(SHAPES),
       order=st.sampled_from(OffsetOrder))
def test_random_layers_match_torchvision(lowering: str, case: SweepCase, opset_step: int, seed: int, shapes: str,
                                         order: OffsetOrder):
    """Dynamic shapes, static ones with the sizes in the Layer (as exporters give them: grid_sample then
    folds its grid into constants), or only the batch dynamic; offset pairs (Δy, Δx) or (Δx, Δy)."""
    low = table.LOWERINGS[lowering].min_opset
    opset = min(low + opset_step, onnx.defs.onnx_opset_version())
    arrays = case.arrays(np.random.default_rng(seed))
    layer = dataclasses.replace(sweep_layer(case), offset_order=order)
    model = _shaped_model(lowering, layer, arrays, shapes, opset)
    onnx.checker.check_model(model, full_check=True)
    expected = _reference(case, arrays)
    assert_close(run_onnxruntime(model, _feeds(case, arrays, order)), expected)
    if lowering == "gather" or opset >= 20:  # onnx.reference names GridSample-16's mode only from 20 on
        assert_close(run_reference(model, _feeds(case, arrays, order)), expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), data=st.data(), seed=st.integers(0, 2**16), static=st.booleans(),
       order=st.sampled_from(OffsetOrder))
def test_pass_through_weights_write_no_product(case: SweepCase, data, seed: int, static: bool, order: OffsetOrder):
    """A layer whose known weights pass every channel of a group to itself (groups = offset groups), with a mask
    and no bias, some taps zero: grid_sample writes no product and one ``GridSample`` per non-zero tap, and
    matches torchvision."""
    case = dataclasses.replace(case, groups=case.offset_groups, out_channels=case.channels, use_mask=True,
                               use_bias=False)
    assume(case.channels % case.groups == 0)
    K = case.kernel[0] * case.kernel[1]
    zero_taps = data.draw(st.lists(st.booleans(), min_size=K, max_size=K).filter(lambda z: not all(z)))
    arrays = {**case.arrays(np.random.default_rng(seed)), "W": pass_through_weights(case, zero_taps)}
    layer = dataclasses.replace(sweep_layer(case), offset_order=order)
    shapes = {name: list(value.shape) for name, value in arrays.items()}
    if static:
        layer = _with_static_sizes(layer, shapes)
    model = lowering_model("grid_sample", layer, static_shapes=shapes if static else None, constants={"W": arrays["W"]})
    onnx.checker.check_model(model, full_check=True)
    ops = _nodes(model)
    assert ops["Conv"] == 0 and ops["GridSample"] == K - sum(zero_taps)
    feeds = [arrays["X"], _in_order(arrays["offset"], order), arrays["mask"]]
    assert_close(run_onnxruntime(model, feeds), _reference(case, arrays))


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("order", OffsetOrder)
def test_hostile_offsets_never_read_out_of_bounds(lowering: str, dtype, shapes: str, order: OffsetOrder):
    """NaN, ±Inf and huge offsets at 20 % of the entries: the runtime neither crashes nor returns
    non-finite values where torchvision's are finite, in every dtype (float16 computes positions in
    float32; every gather index is clamped by integer ops), with dynamic, static and batch-only dynamic shapes,
    offset pairs in either order."""
    case = SweepCase(2, 4, 6, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 3.0)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(7)
    arrays = case.arrays(rng)
    layer = dataclasses.replace(sweep_layer(case, elem_type), offset_order=order)
    model = _shaped_model(lowering, layer, arrays, shapes)
    where = rng.random(arrays["offset"].shape) < 0.2
    arrays["offset"][where] = rng.choice(HOSTILE, size=int(where.sum()))
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    actual = run_onnxruntime(model, _feeds(case, arrays, order))
    expected = _reference(case, {k: v.astype(np.float64) for k, v in arrays.items()})
    assert np.isfinite(actual[np.isfinite(expected)]).all()
    # grid_sample samples float64 layers in float32 (onnxruntime's GridSample has no float64 kernel < opset 20)
    f64 = 1e-9 if lowering == "gather" else 1e-5
    assert_close(actual, expected, rtol={np.float16: 3e-2, np.float32: 1e-4, np.float64: f64}[dtype])


def _nodes(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16])
@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@pytest.mark.parametrize("weights", ["initializers", "inputs"])
def test_one_layer_stays_within_the_node_budget(lowering: str, dtype: int, shapes: str, weights: str):
    """A DCNv2 layer with bias (3x3, one group), dynamic or static sizes (in the Layer too, as exporters give
    them): at most NODE_BUDGET nodes with W and B initializers, as exported and rewritten models have them
    (folded). With W and B graph inputs (not folded) a layer may spend on top what folding saves:
    grid_sample's per-tap kernels (W reshaped and split by a tree of Splits) and, for float16, the casts of W
    and B to float32; gather's per-tap weight matrices."""
    layer = Layer(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1,
                  in_channels=64, out_channels=64, dtype=dtype)
    static = {"X": [1, 64, 32, 32], "W": [64, 64, 3, 3], "offset": [1, 18, 32, 32], "B": [64], "mask": [1, 9, 32, 32]}
    if shapes == "static":
        layer = _with_static_sizes(layer, static)
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    folded = {"W": np.ones((64, 64, 3, 3), np_dtype), "B": np.ones(64, np_dtype)}
    constants = folded if weights == "initializers" else None
    model = lowering_model(lowering, layer, static_shapes=static if shapes == "static" else None, constants=constants)
    nodes = _nodes(model)
    unfolded = 0
    if weights == "inputs" and lowering == "grid_sample":
        unfolded = 3 + (2 if dtype == onnx.TensorProto.FLOAT16 else 0)  # Reshape, 9 taps as 2 Splits
    if weights == "inputs" and lowering == "gather":
        unfolded = 3 + layer.taps  # W reshaped, transposed and reshaped, then one Gather per tap
    sizes = GRID_SAMPLE_DYNAMIC_SIZES if lowering == "grid_sample" and shapes == "dynamic" else 0
    budget = NODE_BUDGET[lowering] + unfolded + sizes
    assert sum(nodes.values()) <= budget, nodes
    assert "DeformConv" not in nodes


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@pytest.mark.parametrize("offset_groups", [1, 4])
def test_offsets_given_xy_are_read_without_a_swap(lowering: str, shapes: str, offset_groups: int):
    """A layer whose offsets hold (Δx, Δy) pairs (the DCNv3/DCNv4 cores') is the same graph as with
    deform_conv2d's (Δy, Δx) pairs less the swap: grid_sample leaves out the Split and Concat nodes that
    swap the pairs into GridSample's order, gather writes the same nodes (its constants in the other order)."""
    layer = Layer(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                  offset_groups=offset_groups, in_channels=64, out_channels=64)
    static = {"X": [1, 64, 32, 32], "W": [64, 64, 3, 3], "offset": [1, 18 * offset_groups, 32, 32], "B": [64],
              "mask": [1, 9 * offset_groups, 32, 32]}
    if shapes == "static":
        layer = _with_static_sizes(layer, static)
    folded = {"W": np.ones((64, 64, 3, 3), np.float32), "B": np.ones(64, np.float32)}

    def nodes(order: OffsetOrder) -> collections.Counter:
        return _nodes(lowering_model(lowering, dataclasses.replace(layer, offset_order=order),
                                     static_shapes=static if shapes == "static" else None, constants=folded))

    yx, xy = nodes(OffsetOrder.YX), nodes(OffsetOrder.XY)
    assert not xy - yx
    assert set(yx - xy) == ({"Split", "Concat"} if lowering == "grid_sample" else set())


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
def test_tract_derives_the_output_sizes_exactly(lowering: str):
    """tract types a dynamic layer with output sizes that are the offset's own symbols, not expressions:
    an expression (a rounded split of K·Wo, a broadcast of two spellings of Wo) grows with every layer a
    network stacks, until tract takes minutes to load it (13 layers of ResNet-50)."""
    tract = pytest.importorskip("tract")
    layer = Layer(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, offset_groups=1,
                  in_channels=4, out_channels=4)
    shapes = {"X": ["N", 4, "H", "W"], "W": [4, 4, 3, 3], "offset": ["N", 18, "Ho", "Wo"], "B": [4],
              "mask": ["N", 9, "Ho", "Wo"]}
    model = lowering_model(lowering, layer, opset=18, static_shapes=shapes)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.onnx")
        onnx.save(model, path)
        fact = str(tract.onnx().load(path).into_model().output_fact(0))
    n, o, ho, wo = fact.split(",")[:4]
    assert o == "4" and all(re.fullmatch(r"<?\w+>?", d) for d in (n, ho, wo)), fact


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), shapes=st.sampled_from(SHAPES))
def test_grid_sample_keeps_every_tensor_at_rank_4_or_less(case: SweepCase, shapes: str):
    """onnx2tf reads a rank-5 tensor as a volume (NCDHW) and moves an axis it takes for channels to the end,
    which broke the conversion to LiteRT: the lowering LiteRT takes keeps every value at rank 4 or less (the
    matrix's tflite cases convert and run it), with static sizes (folded) and dynamic ones."""
    arrays = case.arrays(np.random.default_rng(0))
    model = _shaped_model("grid_sample", sweep_layer(case), arrays, shapes)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = [*inferred.graph.value_info, *inferred.graph.output]
    assert len(values) >= len([n for n in model.graph.node if n.op_type != "Constant"])
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    assert len(ranks) == len(values), "a value without an inferred shape"
    assert max(ranks.values()) <= 4, {name: rank for name, rank in ranks.items() if rank > 4}


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), shapes=st.sampled_from(SHAPES))
def test_lowerings_read_sizes_by_slicing_shapes(lowering: str, case: SweepCase, shapes: str):
    """Every lowering takes every size it reads from a ``Shape`` by ``Slice`` (and ``Concat``), never by
    ``Gather``: Apache TVM's Relax frontend keeps a ``Slice`` or ``Concat`` of a ``Shape`` as sizes, but turns a
    ``Gather`` of one into a tensor, after which what is shaped by it has no known shape and TVM cannot compile
    the model (grid_sample's mask cut: "CodeGenVM cannot emit this Relax operator"; gather's positions, a
    ``Range``: "Reshape expects the input tensor to have known shape"; the matrix's tvm cases in ``.ci/deploy``
    run both)."""
    arrays = case.arrays(np.random.default_rng(0))
    model = _shaped_model(lowering, sweep_layer(case), arrays, shapes)
    sizes = {output for node in model.graph.node if node.op_type == "Shape" for output in node.output}
    if shapes != "static":
        assert sizes, "no Shape: the test checks nothing"
    assert not [node.name for node in model.graph.node if node.op_type == "Gather" and node.input[0] in sizes]


#: Nodes that broadcast their inputs against each other (the ones the lowerings write).
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Where", "Less", "Greater", "Equal", "Max", "Min", "Pow"}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's constant values by name: its initializers and its ``Constant`` nodes' outputs."""
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    arrays.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    return arrays


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), shapes=st.sampled_from(SHAPES))
def test_grid_sample_broadcasts_constants_at_the_rank_of_the_result(case: SweepCase, shapes: str):
    """Every constant of more than one element that an elementwise node broadcasts has the rank of the node's
    result. onnx2tf (channels last) moves the second axis of every constant of rank 3 or more last, taking
    it for NCHW, and then again when it broadcasts a lower-rank constant against an NCHW tensor: the static
    grid p_0 + p_k folded as (2K, Ho, Wo) became (1, Wo, Ho, 2K) against the offsets' (1, Ho, Wo, 2K), which
    failed the conversion ("Dimensions must be equal") where Ho != Wo and transposed the positions (LiteRT's
    output wrong) where Ho = Wo; as (1, 2K, Ho, Wo) it converts and matches (the matrix's tflite cases)."""
    arrays = case.arrays(np.random.default_rng(0))
    model = _shaped_model("grid_sample", sweep_layer(case), arrays, shapes)
    constants = _constants(model)
    for node in model.graph.node:  # onnxruntime-web's WebGPU (JSEP) Conv applies no ONNX defaults
        if node.op_type == "Conv":
            assert {"kernel_shape", "strides", "dilations", "pads"} <= {a.name for a in node.attribute}, node
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred_values(model)
             if v.type.tensor_type.HasField("shape")}  # (no shape: rank unknown)
    checked, misfits = 0, []
    for node in model.graph.node:
        if node.op_type not in _BROADCASTING:
            continue
        for name in node.input:
            if name in constants and constants[name].size > 1:
                checked += 1
                if constants[name].ndim != ranks[node.output[0]]:
                    misfits.append((node.op_type, constants[name].shape, ranks[node.output[0]]))
    assert checked, "no broadcast constant: the test checks nothing"
    assert not misfits, misfits


# ------------------------------------------------------------------------------------------------ gather


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), opset_step=st.integers(0, 11), seed=st.integers(0, 2**16))
def test_gather_with_static_sizes_writes_constants_and_matches_torchvision(case: SweepCase, opset_step: int, seed: int):
    """Sizes known at build time become constants: no Shape, Range or ConstantOfShape is left (OpenCV's classic
    engine crashes on shape arithmetic over constants), and the result is torchvision's."""
    arrays = case.arrays(np.random.default_rng(seed))
    shapes = {name: list(value.shape) for name, value in arrays.items()}
    opset = table.LOWERINGS["gather"].min_opset + opset_step
    model = lowering_model("gather", sweep_layer(case, static=True), opset, static_shapes=shapes)
    onnx.checker.check_model(model, full_check=True)
    assert not {n.op_type for n in model.graph.node} & {"Shape", "Range", "ConstantOfShape", "CumSum"}
    assert_close(run_onnxruntime(model, _feeds(case, arrays)), _reference(case, arrays))


@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE])
@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases())
def test_gather_writes_patterns_every_converter_reads(dtype: int, shapes: str, case: SweepCase):
    """What converters choke on is absent: DOUBLE values in a float16/float32 model (OpenCV's new engine,
    the OpenVINO execution provider), ``CumSum`` (OpenCV's classic engine, LiteRT), ``Shape`` with start/end
    (onnx_tool), ``Abs``/``Less`` guards (ncnn), ``Cast(to=FLOAT)`` in a float32 model (onnxconverter-common's
    float16 conversion keeps its ``to``), values of rank 5 or more (onnx2tf), with W folded as exporters have
    it."""
    layer = sweep_layer(case, dtype, static=shapes == "static")
    arrays = case.arrays(np.random.default_rng(0))
    model = lowering_model("gather", layer, static_shapes={n: list(v.shape) for n, v in arrays.items()},
                           constants={"W": arrays["W"].astype(onnx.helper.tensor_dtype_to_np_dtype(dtype))})
    nodes = list(model.graph.node)
    assert not {n.op_type for n in nodes} & {"CumSum", "Abs", "Less"}
    assert not [n for n in nodes if n.op_type == "Shape" and n.attribute]
    casts = {a.i for n in nodes if n.op_type == "Cast" for a in n.attribute}
    if dtype != onnx.TensorProto.DOUBLE:
        assert onnx.TensorProto.DOUBLE not in casts
    if dtype == onnx.TensorProto.FLOAT:
        assert onnx.TensorProto.FLOAT not in casts
    values = inferred_values(model)
    assert not [v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
                and dtype != onnx.TensorProto.DOUBLE]
    assert max(len(v.type.tensor_type.shape.dim) for v in values) <= 4


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases())
def test_gather_holds_one_taps_neighbours_at_most(case: SweepCase):
    """No value is as large as the im2col columns (N·Ho·Wo·C·K): the largest holds the four neighbours of one
    tap's samples for one channel slice (4·N·Ho·Wo·C/S), the plan of all taps (4·N·G·K·Ho·Wo), or is X, W or
    Y in another layout."""
    arrays = case.arrays(np.random.default_rng(0))
    layer = sweep_layer(case, static=True)
    model = lowering_model("gather", layer, static_shapes={n: list(v.shape) for n, v in arrays.items()})
    positions = case.batch * int(np.prod(case.output_size))
    bound = max(4 * positions * max(layer.slice_channels, layer.offset_groups * layer.taps),
                *(arrays[name].size for name in ("X", "W")), positions * case.out_channels)
    constants = {name for n in model.graph.node if n.op_type == "Constant" for name in n.output}
    sizes = {v.name: int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))
             for v in inferred_values(model) if v.name not in constants}
    assert max(sizes.values()) <= bound, max(sizes.items(), key=lambda item: item[1])



@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases())
def test_gather_indexes_in_int32(shapes: str, case: SweepCase):
    """The plan's positions and rows, and the mask's flat indices, are INT32 (WebGPU has no 64-bit integers):
    every INT64 value computed is a size or a shape (rank 1, at most 4 entries)."""
    layer = sweep_layer(case, static=shapes == "static")
    arrays = case.arrays(np.random.default_rng(0))
    model = lowering_model("gather", layer, static_shapes={n: list(v.shape) for n, v in arrays.items()},
                           constants={"W": arrays["W"]})
    constants = {name for n in model.graph.node if n.op_type == "Constant" for name in n.output}
    sizes = ([], [1], [2], [3], [4])  # a scalar, or a shape of at most 4 known entries
    wide = [v.name for v in inferred_values(model) if v.type.tensor_type.elem_type == onnx.TensorProto.INT64
            and v.name not in constants and [d.dim_value for d in v.type.tensor_type.shape.dim] not in sizes]
    assert not wide
    assert onnx.TensorProto.INT32 in {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute}


@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases())
def test_gather_writes_no_op_that_jsep_runs_on_the_cpu(shapes: str, case: SweepCase):
    """No Min, Max or And, no Clip or Split of an integer tensor (:func:`helpers.jsep_cpu_nodes`); the
    standalone functions are held to the same (``tests/lowering/test_script.py``)."""
    layer = sweep_layer(case, static=shapes == "static")
    arrays = case.arrays(np.random.default_rng(0))
    model = lowering_model("gather", layer, static_shapes={n: list(v.shape) for n, v in arrays.items()},
                           constants={"W": arrays["W"]})
    assert not jsep_cpu_nodes(model)


@pytest.mark.parametrize("batch, size, fits", [
    (1, (2**15, 2**16 - 1), True), (1, (2**15, 2**16), False), (2, (2**15, 2**15), False),
    (None, (2**16, 2**15), False), (3, (None, 2**30), False), (3, (None, None), True),
])
def test_gather_refuses_images_of_2_to_the_31_pixels(batch, size, fits: bool):
    """The gather rows are INT32: writing the lowering for a static N·H·W of 2^31 or more is a ``ValueError``
    naming X and its sizes, before any node (a dynamic size counts as 1); 2^31 - 2^15 pixels are written."""
    from dcn_onnxscript.lowering import gather
    from dcn_onnxscript.lowering.emitter import TapeEmitter

    layer = Layer(kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, offset_groups=1,
                  in_channels=1, out_channels=1, batch=batch, input_size=size, output_size=size)
    if fits:
        gather.check_rows_fit(layer)
        return
    op = TapeEmitter(18)
    with pytest.raises(ValueError, match=r"input \(X\) .*N·H·W = \d+ .*INT32.*impl='grid_sample'"):
        gather.deform_conv2d(op, layer, *(op.tape.initializer(ir.tensor(np.zeros(1, np.float32)), name=n)
                                          for n in ("X", "W", "offset")))
    assert not op.tape.nodes


def test_gather_reads_each_size_from_one_input():
    """tract loads a layer whose inputs carry distinct symbols (``torch.export.Dim.AUTO`` per input): N, Ho and
    Wo are read from offset, H and W from X, and the mask is read in offset's sizes, so tract never has to
    prove two inputs' symbols equal; the output is typed with offset's symbols and runs right."""
    tract = pytest.importorskip("tract")
    case = SweepCase(2, 4, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, True, 2.0)
    layer = sweep_layer(case)
    shapes = {"X": ["nx", 4, "h", "w"], "W": [4, 4, 3, 3], "offset": ["no", 36, "ho", "wo"], "B": [4],
              "mask": ["nm", 18, "hm", "wm"]}
    model = lowering_model("gather", layer, opset=18, static_shapes=shapes)
    arrays = case.arrays(np.random.default_rng(3))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.onnx")
        onnx.save(model, path)
        typed = tract.onnx().load(path).into_model()
        fact = str(typed.output_fact(0))
        actual = typed.into_runnable().run([arrays[n] for n in ("X", "W", "offset", "B", "mask")])[0].to_numpy()
    assert fact.split(",")[:4] == ["no", "4", "ho", "wo"], fact
    assert_close(actual, _reference(case, arrays))


# ------------------------------------------------------------------------------------------- grid_sample


@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16])
def test_grid_sample_static_layer_writes_its_grid_as_constants(dtype: int):
    """A layer with static sizes computes no sizes and gathers no channels: OpenCV's classic ONNX importer (the
    only engine of OpenCV 4.x) crashed on the ``CumSum`` of a constant that static exports kept of the grid's
    ``ConstantOfShape`` -> ``CumSum``, and pnnx turns a ``Gather`` of the offset's channels into a one-channel
    crop (for ncnn)."""
    case = SweepCase(2, 6, 4, 9, 8, (2, 3), (2, 1), (2, 0), (2, 1), 2, 3, True, True, 2.0)
    arrays = case.arrays(np.random.default_rng(0))
    model = _shaped_model("grid_sample", sweep_layer(case, dtype), arrays, "static")
    written = set(_nodes(model))
    assert not written & {"Shape", "ConstantOfShape", "CumSum", "Range", "Gather"}, written


#: Every input's sizes named apart, as torch.export's Dim.AUTO names them (x: s77, offset: s98, ...).
def _unrelated_symbols(case: SweepCase) -> dict:
    arrays = case.arrays(np.random.default_rng(0))
    return {name: [f"{name}_{axis}" if axis != 1 else size for axis, size in enumerate(array.shape)]
            if name in ("X", "offset", "mask") else list(array.shape) for name, array in arrays.items()}


@pytest.mark.parametrize("offset_groups", [1, 2])
@pytest.mark.parametrize("use_mask", [True, False], ids=["dcnv2", "dcnv1"])
def test_grid_sample_loads_in_tract_with_unrelated_symbols_per_input(offset_groups: int, use_mask: bool):
    """X, offset and mask with sizes of their own symbols (torch.export's Dim.AUTO): the grid's batch and
    the mask's sizes are read from X and offset, so tract types the layer without proving two symbols equal
    (it cannot: "Impossible to unify 2·s77 with 2·s98" at GridSample), with plain symbols for the output,
    and runs it like torchvision."""
    pytest.importorskip("tract")
    case = SweepCase(2, 4, 6, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), 2, offset_groups, use_mask, True, 3.0)
    model = lowering_model("grid_sample", sweep_layer(case), opset=18, static_shapes=_unrelated_symbols(case))
    arrays = case.arrays(np.random.default_rng(3))
    assert_close(run_tract(model, _feeds(case, arrays), concrete=False), _reference(case, arrays))


def _hostile_taps(case: SweepCase, arrays: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    """``arrays`` with NaN, ±Inf or a huge value in one coordinate of about 20 % of the (tap, position)
    pairs, and the arrays on which torchvision computes what those taps must give: nothing (mask and offset
    zero there)."""
    attacked, contributes_nothing = dict(arrays), dict(arrays)
    n, taps, ho, wo = arrays["mask"].shape
    hit = rng.random((n, taps, ho, wo)) < 0.2
    values = rng.choice(HOSTILE, size=(n, taps, ho, wo))
    which = rng.integers(0, 2, size=(n, taps, ho, wo))  # the y or the x of the pair
    offset = arrays["offset"].reshape(n, taps, 2, ho, wo).copy()
    for coordinate in (0, 1):
        offset[:, :, coordinate][hit & (which == coordinate)] = values[hit & (which == coordinate)]
    attacked["offset"] = offset.reshape(arrays["offset"].shape)
    zeroed = arrays["offset"].reshape(n, taps, 2, ho, wo).copy()
    zeroed[np.broadcast_to(hit[:, :, None], zeroed.shape)] = 0.0
    contributes_nothing["offset"] = zeroed.reshape(arrays["offset"].shape)
    contributes_nothing["mask"] = np.where(hit, 0.0, arrays["mask"]).astype(arrays["mask"].dtype)
    return attacked, contributes_nothing


@pytest.mark.parametrize("runtime", ["onnxruntime", "reference", "openvino", "tract"])
@pytest.mark.parametrize("shapes", SHAPES)
def test_grid_sample_non_finite_and_huge_offsets_contribute_zero(runtime: str, shapes: str):
    """A tap whose offset is NaN, ±Inf or huge contributes exactly nothing on every runtime: the guard moves
    its grid value outside the image before ``GridSample`` (without it, onnxruntime's ``GridSample`` returns
    finite non-zero values for NaN and onnx.reference's fails on them; a ``Clip`` keeps NaN on both)."""
    case = SweepCase(2, 4, 6, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 3.0)
    rng = np.random.default_rng(11)
    arrays = case.arrays(rng)
    attacked, contributes_nothing = _hostile_taps(case, arrays, rng)
    if shapes == "dynamic" and runtime == "tract":  # tract loads symbolic sizes, not symbolic channels
        model = lowering_model("grid_sample", sweep_layer(case), 20, static_shapes=_unrelated_symbols(case))
        actual = run_tract(model, _feeds(case, attacked), concrete=False)
    else:
        model = _shaped_model("grid_sample", sweep_layer(case), arrays, shapes, opset=20)
        actual = run_runtime("tract_symbolic" if runtime == "tract" and shapes != "static" else runtime, model,
                             _feeds(case, attacked))
    assert_close(actual, _reference(case, contributes_nothing))


@pytest.mark.parametrize("lowering", ["gather", "grid_sample"])
@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=sweep_cases(), opset_step=st.integers(0, 11))
def test_splits_write_their_sizes_and_no_result_is_a_reduced_scalar(lowering: str, shapes: str, case: SweepCase,
                                                                     opset_step: int):
    """Every ``Split`` writes its part sizes (an input from opset 13, an attribute at 12): pnnx reads one
    without them (``num_outputs``, or its count of outputs alone) as a split of unknown sizes and writes an ncnn
    ``Slice`` that crashes ncnn. No ``ReduceSum`` or ``Reshape`` has a rank-0 result: the OpenVINO execution
    provider leaves such nodes to the CPU. Every ``Conv`` writes its attributes: onnxruntime-web's WebGPU (JSEP)
    takes no defaults (``dilations should be 2D``)."""
    opset = min(table.LOWERINGS[lowering].min_opset + opset_step, 23)
    arrays = case.arrays(np.random.default_rng(0))
    layer = sweep_layer(case, static=shapes == "static")
    static = {name: list(value.shape) for name, value in arrays.items()} if shapes == "static" else None
    model = lowering_model(lowering, layer, opset=opset, static_shapes=static, constants={"W": arrays["W"]})
    for node in model.graph.node:
        if node.op_type == "Split":
            attributes = {a.name for a in node.attribute}
            assert "num_outputs" not in attributes
            assert (len(node.input) == 2 and node.input[1]) if opset >= 13 else "split" in attributes, node
    for node in model.graph.node:  # onnxruntime-web's WebGPU (JSEP) Conv applies no ONNX defaults
        if node.op_type == "Conv":
            assert {"kernel_shape", "strides", "dilations", "pads"} <= {a.name for a in node.attribute}, node
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred_values(model)
             if v.type.tensor_type.HasField("shape")}  # (no shape: rank unknown)
    scalars = [n.name or n.op_type for n in model.graph.node
               if n.op_type in ("ReduceSum", "Reshape") and ranks.get(n.output[0]) == 0]
    assert not scalars


#: Opsets the storage-buffer lint writes each lowering at (from its lowest): Split's sizes become an input at
#: 13, GridSample appears at 16 and renames its modes at 20.
WEBGPU_OPSETS = (12, 16, 19, 20)


@st.composite
def wide_layers(draw) -> SweepCase:
    """Layers with kernels up to 7×7 (49 taps: the widest Splits and Concats), conv and offset groups 1–3."""
    groups, offset_groups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return SweepCase(batch=draw(st.integers(1, 2)), channels=int(np.lcm(groups, offset_groups)),
                     out_channels=groups, height=8, width=7, kernel=kernel, stride=(1, 1),
                     padding=(kernel[0] // 2, kernel[1] // 2), dilation=(1, 1), groups=groups,
                     offset_groups=offset_groups, use_mask=draw(st.booleans()), use_bias=draw(st.booleans()),
                     offset_scale=1.0)


@pytest.mark.parametrize("lowering", sorted(table.LOWERINGS))
@pytest.mark.parametrize("opset", WEBGPU_OPSETS)
@pytest.mark.parametrize("shapes", ["dynamic", "static"])
@pytest.mark.parametrize("weights", ["initializers", "inputs"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(case=wide_layers())
@example(case=SweepCase(1, 6, 6, 8, 7, (7, 7), (1, 1), (3, 3), (1, 1), 2, 3, True, True, 1.0))
def test_no_node_needs_more_storage_buffers_than_webgpu_guarantees(lowering: str, opset: int, shapes: str,
                                                                   weights: str, case: SweepCase):
    """No node has more inputs and outputs together than ``STORAGE_BUFFERS`` (8) (:func:`helpers.wider_than_webgpu`);
    the standalone functions are held to the same (``tests/lowering/test_script.py``)."""
    if opset < table.LOWERINGS[lowering].min_opset:
        pytest.skip(f"{lowering} starts at opset {table.LOWERINGS[lowering].min_opset}")
    arrays = case.arrays(np.random.default_rng(0))
    layer = sweep_layer(case, static=shapes == "static")
    static = {name: list(value.shape) for name, value in arrays.items()} if shapes == "static" else None
    constants = {"W": arrays["W"], "B": arrays["B"]} if weights == "initializers" else None
    model = lowering_model(lowering, layer, opset=opset, static_shapes=static, constants=constants)
    wide = wider_than_webgpu(model)
    assert not wide, wide
