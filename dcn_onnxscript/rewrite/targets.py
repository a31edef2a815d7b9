"""Graph patterns for one deployment target, on a model that already holds this package's lowerings:
``python -m dcn_onnxscript rewrite IN.onnx OUT.onnx --for ncnn``.

ncnn (through pnnx, the converter ncnn's maintainers recommend) has no comparison and no select layer, so
the grid_sample lowering's guard against non-finite and far sample positions,

    g ← Where(|g| < far, g, far)        (far = 4 half image sizes from the centre)

becomes ``Clip(g, -far, far)``, which ncnn has. Both agree on every finite or infinite grid value: a grid
value at or beyond ``far`` samples nothing either way (both neighbours lie outside the image). They differ
on NaN, which ``Where`` moves out of the image and ``Clip`` passes on: the default export keeps ``Where``,
because onnxruntime's and ``onnx.reference``'s ``GridSample`` return non-zero values or fail on a NaN grid.
ncnn's ``GridSample`` reads no pixel for a NaN position (its integer in-image test fails), so there a NaN
offset still samples nothing.

The gather lowering (opsets below 16, float64 layers) indexes with integer arithmetic, which ncnn lacks
altogether; ncnn takes models exported at opset 16 or later in float32.

OpenCV 4.x (``--for opencv4``; measured on 4.14.0, the newest 4.x) has no ``GridSample`` layer at all: its
importer refuses every grid_sample export ("Can't create layer ... of type GridSample"). There every
``GridSample`` (bilinear, zero padding, align_corners=0: what the grid_sample lowering writes) of static
sizes becomes the gather lowering's way of sampling: the four neighbours' rows of a (M·H·W, C) table, one
``Gather``, their bilinear weights (zero for a neighbour outside the image) and a batched ``MatMul`` that
blends them. Grid values are moved to 4 (outside the image, as the lowering's guard does) where not within
±4, so that no NaN or huge value reaches the integer ``Cast``. OpenCV 4.x refuses inputs of dynamic size in
any case (its importer evaluates ``Shape`` when it reads the model), so only static sizes are rewritten.

rknn-toolkit2 (``--for rknn``; measured on 2.5.0, RK3588) merges every two ``Gather`` nodes that read one
tensor into one (its ``remove_parallel_gather`` step), keeping one node's indices for all, even where the
indices differ (other graph values, other shapes): the gather lowering's per-tap ``Gather`` nodes, which all
read one table per channel slice, then all sample tap 0's neighbours. There the ``Gather`` nodes that read one
tensor at indices computed in the graph become one ``Gather`` of all their indices (flattened and
concatenated), cut back into each node's output by a ``Slice`` and a ``Reshape``. Dynamic exports are
rewritten too (the toolkit builds them at the sizes ``load_onnx`` is given): where a size is not static, the
``Slice`` bounds and the output shapes are read with ``Shape`` from each node's indices and the table at run
time. The one ``Gather`` holds every tap's neighbours at once: on onnxruntime's CPU that takes about 4.5
times the gather lowering's peak memory, so it is this target's form only, not the lowering's.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass
from onnxscript.rewriter import pattern


def _far_guard(op: Any, g: Any, far: Any, moved_to: Any) -> Any:
    """The grid_sample lowering's guard: ``g`` where ``|g| < far``, else ``moved_to`` (the same constant, once
    or written twice: the TorchScript exporter gives each use a ``Constant`` of its own)."""
    return op.Where(op.Less(op.Abs(g), far), g, moved_to)


def _scalar(value: Any) -> Optional[np.ndarray]:
    """The one value of constant ``value`` (rank 0), or ``None`` where it is not a constant of one value."""
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None or tensor.size != 1 else tensor.numpy().reshape(())


def _is_far_guard(context: Any, g: Any, far: Any, moved_to: Any, **_: Any) -> bool:
    """``far`` and ``moved_to`` are one positive constant (what the lowering writes)."""
    bound, target = _scalar(far), _scalar(moved_to)
    return bound is not None and target is not None and bound == target and bound > 0


def _clip(op: Any, g: Any, far: Any, moved_to: Any) -> Any:
    """``Clip(g, -far, far)``, both bounds scalars of ``g``'s type (``Clip`` takes no other shape)."""
    value = _scalar(far)
    low = op.Constant(value=ir.tensor(np.asarray(-value, dtype=value.dtype)))
    high = op.Constant(value=ir.tensor(np.asarray(value, dtype=value.dtype)))
    return op.Clip(g, low, high)


#: ``Where(|g| < far, g, far)`` -> ``Clip(g, -far, far)``.
GUARD_AS_CLIP = pattern.RewriteRule(_far_guard, _clip, _is_far_guard)


def guards_as_clip(model: ir.Model) -> int:
    """Replace every far-position guard of ``model`` (main graph, subgraphs, local functions) by a ``Clip``, in
    place; returns how many were replaced."""
    return GUARD_AS_CLIP.apply_to_model(model)


def _grid_sample(op: Any, X: Any, grid: Any) -> Any:
    """Any ``GridSample``; its output is bound as ``sampled`` (to read the node's attributes)."""
    return op.GridSample(X, grid, _allow_other_attributes=True, _outputs=["sampled"])


def _attribute(node: ir.Node, name: str, default: Any) -> Any:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


def _static(value: Any) -> Optional[tuple[int, ...]]:
    """The sizes of ``value`` where all are known, else ``None``."""
    shape = value.shape
    return None if shape is None or not shape.is_static() else tuple(int(d) for d in shape)


def _is_static_bilinear(context: Any, X: Any, grid: Any, sampled: Any, **_: Any) -> bool:
    """A float32 ``GridSample`` of the grid_sample lowering's kind (bilinear, zero padding, align_corners=0) of
    images X (M, C, H, W) and grid (M, Ho, Wo, 2) of known sizes, whose gather rows M·H·W float32 counts
    exactly (below 2^24)."""
    node = sampled.producer()
    sizes, grid_sizes = _static(X), _static(grid)
    return (_attribute(node, "mode", "bilinear") in ("bilinear", "linear")
            and _attribute(node, "padding_mode", "zeros") == "zeros" and _attribute(node, "align_corners", 0) == 0
            and X.dtype == ir.DataType.FLOAT and grid.dtype == ir.DataType.FLOAT
            and sizes is not None and grid_sizes is not None and len(sizes) == 4 and len(grid_sizes) == 4
            and grid_sizes[0] == sizes[0] and grid_sizes[3] == 2 and sizes[0] * sizes[2] * sizes[3] < 2**24)


def _f32(op: Any, value: Any) -> Any:
    """A float32 ``Constant`` of ``value`` (the rewriter's builder takes graph values only)."""
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=np.float32)))


def _i64(op: Any, *values: int) -> Any:
    """An int64 ``Constant`` of the 1-D ``values`` (a shape)."""
    return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))


def _inside(op: Any, positions: Any, size: int) -> Any:
    """1 where the integer-valued float ``positions`` lie in [0, size - 1], else 0 (no boolean tensor:
    ``Clip(p + 1, 0, 1) · Clip(size - p, 0, 1)``)."""
    zero, one = _f32(op, 0), _f32(op, 1)
    above_first = op.Clip(op.Add(positions, one), zero, one)  # 1 from p = 0 on
    below_end = op.Clip(op.Sub(_f32(op, size), positions), zero, one)  # 1 up to p = size - 1
    return op.Mul(above_first, below_end)


def _clamped(op: Any, positions: Any, size: int) -> Any:
    """``positions`` clamped into [0, size - 1]."""
    return op.Clip(positions, _f32(op, 0), _f32(op, size - 1))


def _gathered(op: Any, X: Any, grid: Any, sampled: Any, **_: Any) -> Any:
    """``GridSample(X, grid)`` (bilinear, zeros, align_corners=0) of X (M, C, H, W) and grid (M, Ho, Wo, 2),
    (x, y) in [-1, 1] units, as one ``Gather`` of the four neighbours of every sample from a (M·H·W, C)
    table and a batched (1 x 4)·(4 x C) ``MatMul``: (M, C, Ho, Wo)."""
    M, C, H, W = _static(X)
    _, Ho, Wo, _ = _static(grid)
    P = Ho * Wo
    positions = op.Reshape(grid, _i64(op, M, P, 2))
    far = _f32(op, 4.0)  # 4 half sizes or more from the centre both neighbours lie outside: zero either way
    positions = op.Where(op.Less(op.Abs(positions), far), positions, far)
    gx, gy = op.Split(positions, _i64(op, 1, 1), axis=2, _outputs=2)  # (M, P, 1) each
    x = op.Add(op.Mul(gx, _f32(op, W / 2)), _f32(op, W / 2 - 0.5))  # pixel coordinates (align_corners=0)
    y = op.Add(op.Mul(gy, _f32(op, H / 2)), _f32(op, H / 2 - 0.5))
    x0, y0 = op.Floor(x), op.Floor(y)
    fx, fy = op.Sub(x, x0), op.Sub(y, y0)
    x1, y1 = op.Add(x0, _f32(op, 1)), op.Add(y0, _f32(op, 1))
    # the four neighbours (top left, top right, bottom left, bottom right) on a last axis: (M, P, 4)
    xs, ys = op.Concat(x0, x1, x0, x1, axis=2), op.Concat(y0, y0, y1, y1, axis=2)
    gx_, gy_ = op.Sub(_f32(op, 1), fx), op.Sub(_f32(op, 1), fy)
    weights = op.Mul(op.Mul(op.Concat(gx_, fx, gx_, fx, axis=2), op.Concat(gy_, gy_, fy, fy, axis=2)),
                     op.Mul(_inside(op, xs, W), _inside(op, ys, H)))
    image_rows = _f32(op, np.arange(M).reshape(M, 1, 1) * H * W)  # the first row of image m in the table
    rows = op.Add(op.Add(op.Mul(_clamped(op, ys, H), _f32(op, W)), _clamped(op, xs, W)), image_rows)
    table = op.Reshape(op.Transpose(op.Reshape(X, _i64(op, M, C, H * W)), perm=[0, 2, 1]), _i64(op, M * H * W, C))
    neighbours = op.Gather(table, op.Cast(rows, to=ir.DataType.INT64), axis=0)  # (M, P, 4, C)
    blended = op.MatMul(op.Reshape(weights, _i64(op, M, P, 1, 4)), neighbours)  # (M, P, 1, C)
    return op.Reshape(op.Transpose(op.Reshape(blended, _i64(op, M, P, C)), perm=[0, 2, 1]), _i64(op, M, C, Ho, Wo))


#: ``GridSample`` (static sizes, the grid_sample lowering's attributes) -> ``Gather`` of the four neighbours.
GRID_SAMPLE_AS_GATHER = pattern.RewriteRule(_grid_sample, _gathered, _is_static_bilinear)


def grid_samples_as_gather(model: ir.Model) -> int:
    """Replace every ``GridSample`` of static sizes in ``model`` by a gather of its neighbours (shapes inferred
    first), in place; returns how many were replaced."""
    ShapeInferencePass()(model)
    return GRID_SAMPLE_AS_GATHER.apply_to_model(model)


def _shares_a_table(node: ir.Node) -> bool:
    """A ``Gather`` whose indices are computed in the graph (not a constant): what rknn-toolkit2 merges."""
    return (node.op_type == "Gather" and node.domain == "" and len(node.inputs) == 2
            and ir.convenience.get_const_tensor(node.inputs[1]) is None)


def _depends_on(values: list[ir.Value], nodes: set[int]) -> bool:
    """Whether any of ``values`` is computed (in its graph) from an output of one of ``nodes`` (by ``id``)."""
    seen, pending = set(), list(values)
    while pending:
        producer = pending.pop().producer()
        if producer is None or id(producer) in seen:
            continue
        if id(producer) in nodes:
            return True
        seen.add(id(producer))
        pending.extend(v for v in producer.inputs if v is not None)
    return False


def _one_gather(graph: ir.Graph, gathers: list[ir.Node]) -> bool:
    """``gathers`` (of one table, along one axis) as one ``Gather`` of their concatenated indices and a
    ``Slice`` + ``Reshape`` per node, in ``graph``. Sizes that are static are written as constants; the others
    (a dynamic export, which rknn-toolkit2 builds at the sizes it is loaded with) are read with ``Shape`` from
    the indices and the table at run time. ``False`` (nothing written) where the table's rank is unknown or one
    node's indices are computed from another's output."""
    table, axis = gathers[0].inputs[0], _attribute(gathers[0], "axis", 0)
    if table.shape is None or _depends_on([n.inputs[1] for n in gathers], {id(n) for n in gathers}):
        return False
    rank = len(table.shape)
    axis %= rank
    tape = ir.tape.Tape()

    def i64(*values: int) -> ir.Value:
        return tape.op("Constant", [], {"value": ir.tensor(np.array(values, dtype=np.int64))})

    def flat(indices: ir.Value) -> ir.Value:
        sizes = _static(indices)
        return tape.op("Reshape", [indices, i64(-1 if sizes is None else int(np.prod(sizes, dtype=np.int64)))])

    flats = [flat(node.inputs[1]) for node in gathers]
    if len({node.inputs[1].dtype for node in gathers}) > 1:  # int32 and int64 indices: all as int64
        flats = [tape.op("Cast", [value], {"to": ir.DataType.INT64}) for value in flats]
    gathered = tape.op("Gather", [table, tape.op("Concat", flats, {"axis": 0})], {"axis": axis})
    start: Union[int, ir.Value] = 0
    for node, indices in zip(gathers, flats):
        sizes = _static(node.inputs[1])
        count = tape.op("Shape", [indices]) if sizes is None else int(np.prod(sizes, dtype=np.int64))
        end = _sum(tape, i64, start, count)
        part = tape.op("Slice", [gathered, *(v if isinstance(v, ir.Value) else i64(v) for v in (start, end)),
                                 i64(axis)])
        result = tape.op("Reshape", [part, _gathered_shape(tape, i64, table, axis, node.inputs[1])])
        ir.convenience.replace_all_uses_with(node.outputs[0], result)
        if node.outputs[0] in graph.outputs:
            graph.outputs[graph.outputs.index(node.outputs[0])] = result
        start = end
    graph.insert_after(gathers[-1], tape.nodes)
    for node in gathers:
        graph.remove(node, safe=True)
    return True


def _sum(tape: ir.tape.Tape, i64: Callable[..., ir.Value], a: Union[int, ir.Value],
         b: Union[int, ir.Value]) -> Union[int, ir.Value]:
    """``a + b``: a Python int where both are, else an ``Add`` of (1,) int64 values."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return tape.op("Add", [v if isinstance(v, ir.Value) else i64(v) for v in (a, b)])


def _gathered_shape(tape: ir.tape.Tape, i64: Callable[..., ir.Value], table: ir.Value, axis: int,
                    indices: ir.Value) -> ir.Value:
    """The shape of ``Gather(table, indices, axis)``, table's sizes with ``axis`` replaced by the indices' (r,):
    a constant where all are static, else ``Shape`` of the indices between ``Slice`` s of ``Shape`` of the
    table."""
    sizes, index_sizes = _static(table), _static(indices)
    if sizes is not None and index_sizes is not None:
        return i64(*sizes[:axis], *index_sizes, *sizes[axis + 1:])
    rank = len(table.shape)
    table_shape = tape.op("Shape", [table]) if axis > 0 or axis < rank - 1 else None
    parts = [tape.op("Shape", [indices])]
    if axis > 0:
        parts.insert(0, tape.op("Slice", [table_shape, i64(0), i64(axis)]))
    if axis < rank - 1:
        parts.append(tape.op("Slice", [table_shape, i64(axis + 1), i64(rank)]))
    return parts[0] if len(parts) == 1 else tape.op("Concat", parts, {"axis": 0})


def gathers_per_table(model: ir.Model) -> int:
    """Merge, in every graph of ``model`` (main graph, subgraphs, local functions), the ``Gather`` nodes that
    read one tensor along one axis at computed indices into one ``Gather`` each (shapes inferred first), in
    place; returns how many ``Gather`` nodes were merged away."""
    ShapeInferencePass()(model)
    graphs = [model.graph, *model.functions.values()]
    graphs += [sub for graph in list(graphs) for sub in graph.subgraphs()]
    merged = 0
    for graph in graphs:
        groups: dict[tuple[int, int], list[ir.Node]] = {}
        for node in graph:
            if _shares_a_table(node):
                groups.setdefault((id(node.inputs[0]), _attribute(node, "axis", 0)), []).append(node)
        written = [nodes for nodes in groups.values() if len(nodes) > 1 and _one_gather(graph, nodes)]
        if written:
            graph.sort()
            merged += sum(len(nodes) - 1 for nodes in written)
    return merged


#: target -> what writes the model in its patterns (in place; returns how many were replaced).
_PATTERNS: dict[str, Callable[[ir.Model], int]] = {"ncnn": guards_as_clip, "opencv4": grid_samples_as_gather,
                                                    "rknn": gathers_per_table}
#: The targets :func:`for_target` knows.
TARGETS = tuple(_PATTERNS)


def for_target(model: ir.Model, target: str) -> int:
    """``model`` in the graph patterns of ``target`` (one of :data:`TARGETS`), in place; returns how many
    patterns were replaced."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    return _PATTERNS[target](model)

