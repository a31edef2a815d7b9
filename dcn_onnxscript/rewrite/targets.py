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

pnnx also writes a ``Gather`` at constant indices (the DCNv3/DCNv4 cores' picks of offset and mask channels in
the gather lowering) as ``Tensor.select`` of the index list, which its ncnn output makes a ``Crop`` of one index;
there each one along an axis of static size (pnnx fixes the sizes) becomes a ``Split`` of its data at the bounds of
its runs of consecutive indices and a ``Concat`` of the parts in its order. ncnn cannot follow the grid_sample
lowering's runs of points (the DCNv3/DCNv4 cores' form: one ``GridSample`` per run of n points over the N·g images
of a chunk of g groups, its grid (N·g, n, Ho·Wo, 2), its samples weighed and summed over the run's axis): extraction
fails. There each run becomes one ``GridSample`` per point, its grid (N·g, 1, Ho·Wo, 2), weighed and added, which
ncnn runs. The gather
lowering (opsets below 16, float64 layers) indexes with integer arithmetic, which ncnn lacks altogether; ncnn takes
models exported at opset 16 or later in float32.

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
times the gather lowering's peak memory, so it is this target's form only, not the lowering's. The toolkit's
``build`` also crashes (a floating-point exception) on the lowering's INT32 clamps, ``Greater`` + ``Where``,
which become ``Max`` and ``Min``, and its constant folding fails on the sum over taps, a chain of ``Add``
nodes, at few output positions of a dynamic export, which becomes a ``Concat`` of the terms and a
``ReduceSum``. ``Max`` and ``Min`` are this target's form only: onnxruntime-web's WebGPU (JSEP) has no kernel
for them, which is why the lowering writes ``Greater`` + ``Where``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass
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


def _every_graph(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, every model-local function, and the subgraphs of both (``If``/``Loop`` bodies)."""
    graphs = [model.graph, *model.functions.values()]
    return graphs + [sub for graph in graphs for sub in graph.subgraphs()]


def gathers_per_table(model: ir.Model) -> int:
    """Merge, in every graph of ``model`` (main graph, subgraphs, local functions), the ``Gather`` nodes that
    read one tensor along one axis at computed indices into one ``Gather`` each (shapes inferred first), in
    place; returns how many ``Gather`` nodes were merged away."""
    ShapeInferencePass()(model)
    graphs = _every_graph(model)
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


_INTEGERS = (ir.DataType.INT32, ir.DataType.INT64)


def _raised(op: Any, value: Any, bound: Any, moved_to: Any) -> Any:
    """The gather lowering's lower clamp: ``bound`` where ``bound > value``, else ``value`` (``bound`` once or
    written twice: a lowering given a constant writes one ``Constant`` per use)."""
    return op.Where(op.Greater(bound, value), moved_to, value)


def _lowered(op: Any, value: Any, bound: Any, moved_to: Any) -> Any:
    """The gather lowering's upper clamp: ``bound`` where ``value > bound``, else ``value``."""
    return op.Where(op.Greater(value, bound), moved_to, value)


def _same(a: ir.Value, b: ir.Value) -> bool:
    """One value, or two constants of equal contents and shape."""
    if a is b:
        return True
    x, y = ir.convenience.get_const_tensor(a), ir.convenience.get_const_tensor(b)
    return x is not None and y is not None and x.shape == y.shape and np.array_equal(x.numpy(), y.numpy())


def _is_integer_clamp(context: Any, value: Any, bound: Any, moved_to: Any, **_: Any) -> bool:
    """``bound`` and ``moved_to`` are one, of the integer type of ``value`` (a float clamp differs from
    ``Max``/``Min`` on NaN)."""
    return value.dtype in _INTEGERS and bound.dtype == value.dtype and _same(bound, moved_to)


def _max(op: Any, value: Any, bound: Any, moved_to: Any) -> Any:
    return op.Max(value, bound)


def _min(op: Any, value: Any, bound: Any, moved_to: Any) -> Any:
    return op.Min(value, bound)


#: ``Where(Greater(b, v), b, v)`` -> ``Max(v, b)`` and ``Where(Greater(v, b), b, v)`` -> ``Min(v, b)`` (integers).
CLAMPS_AS_MAX_MIN = pattern.RewriteRuleSet([pattern.RewriteRule(_raised, _max, _is_integer_clamp),
                                            pattern.RewriteRule(_lowered, _min, _is_integer_clamp)])


def clamps_as_max_min(model: ir.Model) -> int:
    """Replace every integer clamp of the gather lowering (``Greater`` + ``Where``) in ``model`` by ``Max`` or
    ``Min``, in place (shapes and types inferred first); returns how many were replaced."""
    ShapeInferencePass()(model)
    return CLAMPS_AS_MAX_MIN.apply_to_model(model)


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``indices`` (1-D, non-negative) as runs of consecutive indices, (start, end) each, in their order."""
    runs: list[tuple[int, int]] = []
    for i in indices.tolist():
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _constant_gather(node: ir.Node) -> Optional[tuple[int, np.ndarray]]:
    """``(axis, indices)`` of a ``Gather`` at constant indices of rank 0 or 1 along an axis of static size
    (indices made non-negative), else ``None``."""
    if node.op_type != "Gather" or node.domain != "" or len(node.inputs) != 2 or node.inputs[0].shape is None:
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    rank = len(node.inputs[0].shape)
    axis = _attribute(node, "axis", 0) % rank if rank else 0
    size = node.inputs[0].shape[axis] if rank else None
    if tensor is None or tensor.numpy().ndim > 1 or not isinstance(size, int):
        return None
    return axis, tensor.numpy().astype(np.int64) % size


def _split_concat(graph: ir.Graph, node: ir.Node, axis: int, indices: np.ndarray, opset: int) -> None:
    """``node`` (``Gather`` of ``indices`` along ``axis``) as one ``Split`` of its data at every run's bounds
    and a ``Concat`` of the parts in the indices' order (a ``Squeeze`` of the one part for a scalar index), in
    ``graph``."""
    data, size, runs = node.inputs[0], node.inputs[0].shape[axis], _runs(indices.reshape(-1))
    bounds = sorted({0, size, *(b for run in runs for b in run)})
    tape = ir.tape.Tape()
    sizes = np.diff(bounds).astype(np.int64)
    if len(sizes) == 1:
        parts = [data]
    elif opset >= 13:
        split = tape.op("Constant", [], {"value": ir.tensor(sizes)})
        parts = tape.op_multi_out("Split", [data, split], {"axis": axis}, num_outputs=len(sizes))
    else:
        parts = tape.op_multi_out("Split", [data], {"axis": axis, "split": sizes.tolist()}, num_outputs=len(sizes))
    chosen = [parts[k] for start, end in runs for k in range(bounds.index(start), bounds.index(end))]
    result = chosen[0] if len(chosen) == 1 else tape.op("Concat", chosen, {"axis": axis})
    if indices.ndim == 0 and opset >= 13:
        result = tape.op("Squeeze", [result, tape.op("Constant", [], {"value": ir.tensor(np.array([axis]))})])
    elif indices.ndim == 0:
        result = tape.op("Squeeze", [result], {"axes": [axis]})
    ir.convenience.replace_all_uses_with(node.outputs[0], result)
    if node.outputs[0] in graph.outputs:
        graph.outputs[graph.outputs.index(node.outputs[0])] = result
    graph.insert_after(node, tape.nodes)
    graph.remove(node, safe=True)


def constant_gathers_as_split(model: ir.Model) -> int:
    """Replace every ``Gather`` at constant indices (rank 0 or 1) along an axis of static size in ``model`` (main graph,
    subgraphs, local functions) by a ``Split`` and a ``Concat`` (shapes inferred first), in place; returns how
    many were replaced."""
    ShapeInferencePass()(model)
    opset = model.opset_imports.get("", 1)
    graphs = _every_graph(model)
    replaced = 0
    for graph in graphs:
        for node in list(graph):
            found = _constant_gather(node)
            if found is not None:
                _split_concat(graph, node, *found, opset)
                replaced += 1
    return replaced


def _split_sizes(node: ir.Node) -> Optional[list[int]]:
    """The part sizes of a ``Split`` written out (its sizes input, or its ``split`` attribute before opset 13)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        return None if tensor is None else tensor.numpy().astype(np.int64).tolist()
    sizes = _attribute(node, "split", None)
    return None if sizes is None else list(sizes)


def _constant_shape(node: Optional[ir.Node], op_type: str) -> Optional[list[int]]:
    """The constant shape (``Reshape``) or permutation (``Transpose``) of ``node`` if it is an ``op_type``."""
    if node is None or node.op_type != op_type or node.domain != "":
        return None
    if op_type == "Transpose":
        return list(_attribute(node, "perm", []))
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    return None if tensor is None else tensor.numpy().tolist()


def _only_consumer(value: ir.Value, op_type: str) -> Optional[ir.Node]:
    """The one node that reads ``value``, if it is an ``op_type``."""
    users = [use.node for use in value.uses()]
    return users[0] if len(users) == 1 and users[0].op_type == op_type and users[0].domain == "" else None


def _run_of_points(node: ir.Node) -> Optional[tuple[ir.Node, ir.Node]]:
    """Where ``node`` is a ``GridSample`` of a run of points (the DCNv3/DCNv4 cores' grid_sample form: its grid
    (M, n, Ho·Wo, 2) with n > 1, its samples weighed by a ``Mul`` with the run's masks (M, 1, n, Ho·Wo) and summed
    by a ``ReduceSum`` over axis 2): the ``Mul`` and the ``ReduceSum``; else ``None``."""
    grid = _static(node.inputs[1]) if node.op_type == "GridSample" and node.domain == "" else None
    if grid is None or len(grid) != 4 or grid[1] < 2:
        return None
    weighed = _only_consumer(node.outputs[0], "Mul")
    summed = _only_consumer(weighed.outputs[0], "ReduceSum") if weighed is not None else None
    axes = ir.convenience.get_const_tensor(summed.inputs[1]) if summed is not None and len(summed.inputs) > 1 else None
    if axes is None or axes.numpy().tolist() != [2] or _attribute(summed, "keepdims", 1) != 0:
        return None
    masks = weighed.inputs[1] if weighed.inputs[0] is node.outputs[0] else weighed.inputs[0]
    if _static(masks) != (grid[0], 1, grid[1], grid[2]):
        return None
    return weighed, summed


def _split_points(tape: ir.tape.Tape, value: ir.Value, axis: int, points: int) -> list[ir.Value]:
    """``value`` cut into ``points`` parts of one along ``axis`` by one ``Split`` with its sizes written."""
    sizes = tape.op("Constant", [], {"value": ir.tensor(np.ones(points, dtype=np.int64))})
    return list(tape.op_multi_out("Split", [value, sizes], {"axis": axis}, num_outputs=points))


def runs_as_points(model: ir.Model) -> int:
    """Write the grid_sample lowering's runs of points (one ``GridSample`` per run: the DCNv3/DCNv4 cores' form)
    in every graph of ``model`` as one ``GridSample`` per point, weighed and added (shapes inferred first), in
    place; returns how many runs were written so. ncnn fails to extract the runs' form."""
    ShapeInferencePass()(model)
    written = 0
    for graph in _every_graph(model):
        for node in list(graph):
            found = _run_of_points(node)
            if found is None:
                continue
            weighed, summed = found
            masks = weighed.inputs[1] if weighed.inputs[0] is node.outputs[0] else weighed.inputs[0]
            points = _static(node.inputs[1])[1]
            tape = ir.tape.Tape()
            total = None
            grids, point_masks = _split_points(tape, node.inputs[1], 1, points), _split_points(tape, masks, 2, points)
            for grid, mask in zip(grids, point_masks):
                sampled = tape.op("GridSample", [node.inputs[0], grid],
                                  {name: attribute.value for name, attribute in node.attributes.items()})
                weighed_point = tape.op("Mul", [sampled, mask])
                total = weighed_point if total is None else tape.op("Add", [total, weighed_point])
            graph.insert_before(summed, tape.nodes)
            for use in list(summed.outputs[0].uses()):  # the sum is (M, C, 1, Ho·Wo) now: no shapes downstream
                _forget_shapes(use.node)
            ir.convenience.replace_all_uses_with(summed.outputs[0], total)
            written += 1
        if written:
            graph.sort()
    return written


def _forget_shapes(node: ir.Node) -> None:
    """Clear the recorded shapes of ``node``'s outputs and of the ``Add`` nodes that sum them, up to the node
    that reshapes the sum."""
    for output in node.outputs:
        output.shape = None
        if node.op_type == "Add":
            for use in output.uses():
                _forget_shapes(use.node)


def ncnn_form(model: ir.Model) -> int:
    """``model`` in ncnn's patterns (:func:`guards_as_clip`, :func:`constant_gathers_as_split`,
    :func:`runs_as_points`), in place; returns how many patterns were replaced."""
    return guards_as_clip(model) + constant_gathers_as_split(model) + runs_as_points(model)


def _is_inner_add(node: Optional[ir.Node], graph: ir.Graph) -> bool:
    """An ``Add`` of ``graph`` whose one use is another ``Add``: a term of a longer sum."""
    if node is None or node.op_type != "Add" or node.domain != "" or node.graph is not graph:
        return False
    uses = list(node.outputs[0].uses())
    return (len(uses) == 1 and uses[0].node.op_type == "Add" and uses[0].node.domain == ""
            and node.outputs[0] not in graph.outputs)


def _terms(node: ir.Node, graph: ir.Graph, chain: list[ir.Node]) -> list[ir.Value]:
    """The terms of the sum ``node`` ends (an ``Add`` of ``Add`` s, each used once), its ``Add`` s into ``chain``."""
    chain.append(node)
    terms = []
    for value in node.inputs:
        producer = value.producer()
        terms += _terms(producer, graph, chain) if _is_inner_add(producer, graph) else [value]
    return terms


def _stacking_axis(terms: list[ir.Value]) -> Optional[int]:
    """An axis of size 1 in each of ``terms`` (all of one rank, every other axis of one static size or of a
    symbolic size in each), along which their ``Concat`` holds one term per index; ``None`` where there is none."""
    shapes = [t.shape for t in terms]
    if any(shape is None for shape in shapes) or len({len(shape) for shape in shapes}) != 1:
        return None
    dims = list(zip(*shapes))
    ones = [axis for axis, sizes in enumerate(dims) if all(size == 1 for size in sizes)]
    consistent = all(len(set(sizes)) == 1 or not any(isinstance(size, int) for size in sizes) for sizes in dims)
    return ones[0] if ones and consistent else None


def _concat_sum(graph: ir.Graph, root: ir.Node, opset: int) -> bool:
    """The sum ``root`` ends as ``ReduceSum(Concat(terms))`` of its terms of one shape (three or more), the
    other terms (a bias) added after; ``False`` (nothing written) where there are fewer such terms."""
    chain: list[ir.Node] = []
    terms = _terms(root, graph, chain)
    rank = None if root.outputs[0].shape is None else len(root.outputs[0].shape)
    stacked = [t for t in terms if t.shape is not None and len(t.shape) == rank]
    axis = _stacking_axis(stacked) if len(stacked) >= 3 else None
    if axis is None:
        return False
    tape = ir.tape.Tape()
    joined = tape.op("Concat", stacked, {"axis": axis})
    if opset >= 13:
        axes = tape.op("Constant", [], {"value": ir.tensor(np.array([axis], dtype=np.int64))})
        total = tape.op("ReduceSum", [joined, axes], {"keepdims": 1})
    else:
        total = tape.op("ReduceSum", [joined], {"axes": [axis], "keepdims": 1})
    for term in terms:
        if not any(term is t for t in stacked):
            total = tape.op("Add", [total, term])
    ir.convenience.replace_all_uses_with(root.outputs[0], total)
    if root.outputs[0] in graph.outputs:
        graph.outputs[graph.outputs.index(root.outputs[0])] = total
    graph.insert_after(root, tape.nodes)
    for node in chain:
        graph.remove(node, safe=True)
    return True


def sums_as_concat(model: ir.Model) -> int:
    """Replace every sum of three or more terms of one shape written as a chain of ``Add`` s in ``model`` (main
    graph, subgraphs, local functions; e.g. the gather lowering's sum over taps) by a ``Concat`` of the terms
    and a ``ReduceSum`` (shapes inferred first), in place; returns how many sums were replaced."""
    ShapeInferencePass()(model)
    opset = model.opset_imports.get("", 1)
    graphs = _every_graph(model)
    replaced = 0
    for graph in graphs:
        roots = [node for node in graph if node.op_type == "Add" and node.domain == ""
                 and not _is_inner_add(node, graph)]
        replaced += sum(_concat_sum(graph, root, opset) for root in roots)
    return replaced


def rknn_form(model: ir.Model) -> int:
    """``model`` in rknn-toolkit2's patterns (:func:`gathers_per_table`, :func:`clamps_as_max_min`,
    :func:`sums_as_concat`), in place; returns how many patterns were replaced."""
    return gathers_per_table(model) + clamps_as_max_min(model) + sums_as_concat(model)


#: target -> what writes the model in its patterns (in place; returns how many were replaced).
_PATTERNS: dict[str, Callable[[ir.Model], int]] = {"ncnn": ncnn_form, "opencv4": grid_samples_as_gather,
                                                    "rknn": rknn_form}
#: The targets :func:`for_target` knows.
TARGETS = tuple(_PATTERNS)


def for_target(model: ir.Model, target: str) -> int:
    """``model`` in the graph patterns of ``target`` (one of :data:`TARGETS`), in place; returns how many
    patterns were replaced."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    replaced = _PATTERNS[target](model)
    RemoveUnusedNodesPass()(model)  # the constants the replaced nodes read
    return replaced

