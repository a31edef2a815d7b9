"""The "gather" lowering: per kernel tap, one ``Gather`` of the four neighbours of every sample, a
``MatMul`` that blends them, a ``MatMul`` by the tap's weights and an ``Add`` into Y.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

The sum over taps is the equation's own Σ_k, accumulated, so no im2col columns (N·Ho·Wo, C·K) exist: at
most one tap's samples (N·Ho·Wo, C/S) and the four neighbours they are blended from. First a *plan* for
all taps at once, C/4 times smaller than one tap's neighbours: the sample positions p = p_0 + p_k + Δp_k,
their neighbours along each axis clamped into the image, the four neighbours' rows in the gather table and
their bilinear weights times Δm_k (positions and rows in INT32). Then per tap (and channel slice): gather,
blend, multiply, add. Steps, one function each, in that order below. A 3x3 layer takes 83 nodes with static
sizes, 125 with dynamic ones (weights folded; ``Constant`` nodes not counted).

Why one ``Gather`` of the four neighbours and a batched (1 x 4)·(4 x C/S) ``MatMul`` per tap: measured on
onnxruntime against a ``Mul`` + ``ReduceSum`` blend (with the neighbours' axis first or last) and against
chunks of channels, it was the fastest and the leanest; four ``Gather`` nodes per tap would not fit the
node budget. Its cost over native ``DeformConv`` is the traffic of the gathered neighbours (four times the
samples), which the native kernel keeps in registers.

Its peak memory on onnxruntime (default session options) is about twice its live tensors, whatever their
split: the first run grows the CPU arena tensor by tensor (by powers of two), and the second allocates the
memory pattern planned from it, one block of the planned peak, on top (L2, N4 C128 64x64: 88 MB after run 1,
a 78.7 MB pattern block, 167 MB in all, native 56 MB). Measured variants that did not pay: two ``Gather``
nodes per tap (top and bottom pair, half the size each): 149 MB, 20-40 % slower, 139 nodes with dynamic
sizes; four (one neighbour each): 150 MB; the tap's ``MatMul`` + ``Add`` as one ``Gemm`` onto the sum: no
change. Tap order is not the cause: onnxruntime runs each tap's gather, blend, product and sum before the
next tap's gather (profiled). Cutting the plan's rows per tap by ``Gather`` (for onnxruntime-web's JSEP, whose
``Split`` is float-only) rather than by a tree of ``Split`` nodes raised that peak to 173 MB (dynamic sizes:
150 to 184 MB), same latency. The cause is the graph, not an optimizer: with every graph optimizer off the
Gather cuts peak at 175 MB (178 MB) against the Split tree's 162 MB (150 MB), and turning off onnxruntime's
GatherSliceToSplitFusion, which fuses the cuts back into one ``Split``, moves the peak by 2-6 MB either way.
The large tensors (the table, each tap's neighbours, blend, product and sum) are made in the same order in both
graphs (profiled); without the arena, at the malloc peak, the Gather cuts hold 8-10 MB more (about one table,
N·H·W x C), which the arena's growth on the first run (85 to 96 MB, dynamic 76 to 104 MB) and the pattern
block on top of it enlarge. Writing the table first does not change it.

Sizes come from one place each: H and W from X, Ho and Wo from ``offset``, and the batch only ever as an
axis of ``offset``'s (a runtime never has to prove two inputs' symbolic sizes equal); where ``Layer``
knows a size it is written as a constant. Every tensor has rank 4 or less (onnx2tf reads rank 5 as a
volume), except W's reshape in a grouped layer whose weights are graph values (folded by exporters).

Why it is safe for every input: Δp is cut to [-2^24, 2^24] in floating point (NaN and -Inf go to -2^24),
and every neighbour's row and column are clamped into the image by integer ops after the float math, so no
offset, dtype or precision a runtime picks for the float math can make the gather read out of bounds; a
neighbour the integer clamp moved gets weight zero. p_0 + p_k is an integer: it is added to ⌊Δp⌋ in INT32,
so no shape is ever cast to a float type (no DOUBLE in float32 models, no ``Cast(to=FLOAT)`` that
onnxconverter-common's float16 conversion would retype) and no ``CumSum`` counts positions.

Notation: N batch, C/O channels in/out, K = kH·kW taps, G offset groups, R conv groups, S = lcm(G, R)
channel slices of Cs = C/S channels, J = S/R slices per conv group; M = G·K plan rows (offset group g, tap k
at m = g·K + k, in ``offset``'s channel order), P = Ho·Wo output positions. The plan's tensors are
(N, M, c, P): c = 2 for (y, x) (in the layer's ``offset_order``), 4 for the neighbours.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import onnx

from dcn_onnxscript.lowering import sampling
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer

Value = Any

_INT32 = onnx.TensorProto.INT32
#: Offsets are cut to ±2^24 (exact in float32 and bfloat16, beyond any image side): a sample moved there has
#: no neighbour in the image, and ⌊Δp⌋ casts to INT32 exactly.
_FAR = 2.0**24
#: The y and x of the four neighbours top-left, top-right, bottom-left, bottom-right: the low (0) or high (2)
#: pair of the neighbour axis (low pair, high pair) of :func:`in_image`; :func:`corners` adds the axis's place
#: in a pair.
_LOW_HIGH_Y, _LOW_HIGH_X = np.array([0, 0, 2, 2]), np.array([0, 2, 0, 2])
#: Neighbours per sample.
_CORNERS = 4
#: Gather rows are INT32 (WebGPU has no 64-bit integers; LiteRT's Split takes no INT64): a layer's image may
#: hold fewer pixels N·H·W than this.
_MAX_ROWS = 2**31


def _int64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _int32(values) -> np.ndarray:
    """Index data (positions, rows) as a constant."""
    return np.asarray(values, dtype=np.int32)


def check_rows_fit(layer: Layer) -> None:
    """``ValueError`` naming X where its static sizes N·H·W reach 2^31 (the gather rows are INT32); a dynamic
    size counts as 1 (such a table holds 8 GiB per channel)."""
    N, (H, W) = layer.batch, layer.input_size
    pixels = (N or 1) * (H or 1) * (W or 1)
    if pixels >= _MAX_ROWS:
        raise ValueError(f"input (X) of batch N={N}, height H={H}, width W={W} holds N·H·W = {pixels} pixels; the "
                         f"gather lowering indexes them with INT32 and takes fewer than 2^31: use "
                         f"impl='grid_sample' (opset 16 or later) or a smaller batch")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The layer's dynamic sizes, each INT64 (1,) sliced once from its input's ``Shape`` (``None`` where static):
    N, Ho and Wo from ``offset``, H and W from X. Sizes are read by ``Slice``, never by ``Gather``: Apache TVM
    keeps a ``Slice`` of a ``Shape`` as sizes but turns a ``Gather`` of one into a tensor, after which what it
    shapes (the positions' ``Range``, Y's ``Reshape``) has no known shape and TVM cannot compile the model."""

    N: Optional[Value] = None
    H: Optional[Value] = None
    W: Optional[Value] = None
    Ho: Optional[Value] = None
    Wo: Optional[Value] = None


def input_sizes(op: Emitter, layer: Layer, X: Value, offset: Value) -> Sizes:
    """The :class:`Sizes` of the layer's inputs, each ``Shape`` written once and only where it holds a size
    that is not static."""
    (H, W), (Ho, Wo) = layer.input_size, layer.output_size
    x_shape = op.Shape(X) if H is None or W is None else None
    offset_shape = op.Shape(offset) if None in (layer.batch, Ho, Wo) else None

    def sliced(shape: Optional[Value], axis: int, known: Optional[int]) -> Optional[Value]:
        return None if known is not None else sampling.dims(op, shape, axis, axis + 1)

    return Sizes(N=sliced(offset_shape, 0, layer.batch), H=sliced(x_shape, 2, H), W=sliced(x_shape, 3, W),
                 Ho=sliced(offset_shape, 2, Ho), Wo=sliced(offset_shape, 3, Wo))


def _either(size: Optional[Value], known: Optional[int]) -> Value:
    """INT64 (1,): the dynamic ``size`` of :class:`Sizes`, else the constant ``known``."""
    return _int64([known]) if size is None else size


def _counted(op: Emitter, size: Optional[Value], known: Optional[int]) -> Value:
    """INT32 (1,): a size of :class:`Sizes`, a constant when ``known``; a dynamic size is counted at run time
    (the sum of that many ones) rather than cast: tract keeps sizes read from shapes as symbols, and its
    decluttering fails on index data multiplied by one ("TooEarly"). Of shape (1,), not a scalar: the OpenVINO
    execution provider leaves a ``ReduceSum`` or ``Reshape`` with a rank-0 output to the CPU."""
    if known is not None:
        return _int32([known])
    return op.ReduceSum(op.ConstantOfShape(size, value=_int32([1])), keepdims=1)


def _rows(layer: Layer) -> int:
    """M = G·K."""
    return layer.offset_groups * layer.taps


def corners(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The y and x of the four neighbours (top-left, top-right, bottom-left, bottom-right) as indices into the
    neighbour axis of :func:`in_image`, whose pairs are in the layer's ``offset_order``."""
    return _LOW_HIGH_Y + layer.offset_order.y, _LOW_HIGH_X + layer.offset_order.x


# ------------------------------------------------------------------------------------------------ the plan


def output_grid(op: Emitter, layer: Layer, sizes: Sizes) -> list[Value]:
    """p_0 + p_k of every sample, INT32, as the parts whose broadcast sum it is: one constant (1, 2M, Ho, Wo)
    when the output size is static (a sum of two constants is one that converters might fold wrongly:
    onnx2tf merges the two Adds and lays the result out as an image), else a rows part (1, 2M, Ho, 1) and a
    columns part (1, 2M, 1, Wo). Channel 2m + a holds coordinate a of plan row m (y and x
    in the layer's ``offset_order``), as ``offset`` (N, 2M, Ho, Wo) does. Output position (o_y, o_x) samples tap k
    at o·stride - pad + p_k."""
    M, order = _rows(layer), layer.offset_order
    p_k = order.ordered(layer.kernel_grid() - np.reshape(layer.padding, (2, 1)))  # (2, K)
    first = np.tile(p_k.T, (layer.offset_groups, 1)).reshape(1, 2 * M, 1, 1)  # (g, k, a) order
    is_y = np.tile(order.ordered(np.array([1, 0])), M).reshape(1, 2 * M, 1, 1)
    (Ho, Wo), (s_y, s_x) = layer.output_size, layer.stride
    steps_y, steps_x = _int32(is_y * s_y), _int32((1 - is_y) * s_x)
    if Ho is not None and Wo is not None:
        return [_int32(np.arange(Ho).reshape(-1, 1) * steps_y + first + np.arange(Wo) * steps_x)]
    if Ho is not None:
        rows = _int32(np.arange(Ho).reshape(-1, 1) * steps_y + first)
    else:
        o_y = op.Reshape(_positions(op, sizes.Ho), _int64([-1, 1]))
        rows = op.Add(op.Mul(o_y, steps_y), _int32(first))
    if Wo is not None:
        cols = _int32(np.arange(Wo) * steps_x)
    else:
        cols = op.Mul(_positions(op, sizes.Wo), steps_x)
    return [rows, cols]


def _positions(op: Emitter, size: Value) -> Value:
    """INT32 0 … n - 1 for a dynamic size n of :class:`Sizes`."""
    return op.Range(_int32(0), op.Cast(op.squeeze(size), to=_INT32), _int32(1))


def offsets(op: Emitter, layer: Layer, offset: Value) -> Value:
    """Δp: ``offset`` (N, 2M, Ho, Wo) in the coordinate type, cut to [-2^24, 2^24], NaN to -2^24."""
    delta = sampling.as_coordinates(op, layer, offset)
    near = layer.coordinates(-_FAR)
    # Clip, not Min: onnxruntime-web's JSEP has no Min or Max kernel (of any type) and runs them on the CPU
    return op.Where(op.Greater(delta, near), op.Clip(delta, near, layer.coordinates(_FAR)), near)


def neighbours(op: Emitter, layer: Layer, delta: Value, grid: list[Value]) -> tuple[Value, Value]:
    """``(low, frac)``: the low neighbour ⌊p⌋ = ⌊Δp⌋ + p_0 + p_k along each axis, INT32 (N, M, 2, P), and
    how far the sample lies past it, p - ⌊p⌋ = Δp - ⌊Δp⌋ in [0, 1] of the coordinate type (N, M, 2, P)."""
    whole = op.Floor(delta)
    frac = op.Sub(delta, whole)
    low = op.Cast(whole, to=_INT32)
    for part in grid:
        low = op.Add(low, part)
    per_axis = _int64([0, _rows(layer), 2, -1])
    return op.Reshape(low, per_axis), op.Reshape(frac, per_axis)


def last_pixel(op: Emitter, layer: Layer, sizes: Sizes) -> Value:
    """(H - 1, W - 1) of X (N, C, H, W) twice, each pair in the layer's ``offset_order``, as INT32 (4, 1), for
    the neighbour axis."""
    H, W = layer.input_size
    order = layer.offset_order
    if H is not None and W is not None:
        return _int32(np.tile(order.ordered(np.array([H - 1, W - 1])), 2)).reshape(4, 1)
    pair = order.ordered([_either(sizes.H, H), _either(sizes.W, W)])
    return op.Reshape(op.Sub(op.Cast(op.Concat(*pair, *pair, axis=0), to=_INT32), _int32(1)), _int64([4, 1]))


def in_image(op: Emitter, low: Value, last: Value) -> tuple[Value, Value]:
    """The low and high neighbours (N, M, 4, P) (low y, low x, high y, high x; each pair in the layer's
    ``offset_order``) of ``low`` (N, M, 2, P),
    clamped into the image (``last`` from :func:`last_pixel`) by integer ops, so that no table row can be
    out of bounds whatever the float math before did; and whether each was inside already (BOOL)."""
    both = op.Concat(low, op.Add(low, _int32(1)), axis=2)
    clamped = _at_most(op, _at_least(op, both, _int32(0)), last)
    return clamped, op.Equal(clamped, both)


# The clamps are a comparison and a Where, not Max and Min: onnxruntime-web's JSEP has no Min or Max kernel
# (and its Clip takes no INT32), so those would run on the CPU, with uploads between CPU and GPU that its
# upload race corrupts. Greater, not Less: ncnn's converter has no Less.
def _at_least(op: Emitter, value: Value, bound: Value) -> Value:
    """``value`` raised to ``bound`` where below it (INT32, ``bound`` broadcast)."""
    return op.Where(op.Greater(bound, value), bound, value)


def _at_most(op: Emitter, value: Value, bound: Value) -> Value:
    """``value`` lowered to ``bound`` where above it (INT32, ``bound`` broadcast)."""
    return op.Where(op.Greater(value, bound), bound, value)


def corner_weights(op: Emitter, layer: Layer, frac: Value, inside: Value, mask: Optional[Value],
                   sizes: Sizes) -> Value:
    """Bilinear weights of the four neighbours (N, M, 4, P) in the layer's dtype, zero for a neighbour
    outside the image, times Δm_k (``mask`` (N, M, Ho, Wo), read with ``offset``'s sizes)."""
    halves = op.Concat(op.Sub(layer.coordinates(1), frac), frac, axis=2)  # 1-fy, 1-fx, fy, fx (pairs in order)
    halves = op.Where(inside, halves, layer.coordinates(0))
    corner_y, corner_x = corners(layer)
    weights = op.Mul(op.Gather(halves, corner_y, axis=2), op.Gather(halves, corner_x, axis=2))
    if layer.coordinate_dtype != layer.dtype:
        weights = op.Cast(weights, to=layer.dtype)
    if mask is None:
        return weights
    return op.Mul(weights, mask_per_sample(op, layer, mask, sizes))


def mask_per_sample(op: Emitter, layer: Layer, mask: Value, sizes: Sizes) -> Value:
    """Δm of ``mask`` (N, M, Ho, Wo) as (N, M, 1, P), with N, Ho and Wo from ``offset`` (:class:`Sizes`). With
    dynamic sizes the mask is read through a ``Gather`` of its flat values at 0 … N·M·P - 1 laid out in offset's
    sizes: a ``Reshape`` would make tract prove that the mask's own symbols (``torch.export.Dim.AUTO`` gives each
    input its own) equal offset's, which it cannot."""
    M, (Ho, Wo) = _rows(layer), layer.output_size
    if layer.batch is not None and Ho is not None and Wo is not None:
        return op.Reshape(mask, _int64([layer.batch, M, 1, Ho * Wo]))
    batch, positions = _either(sizes.N, layer.batch), op.Mul(_either(sizes.Ho, Ho), _either(sizes.Wo, Wo))
    count = op.squeeze(op.Mul(op.Mul(batch, positions), _int64(M)))  # as products: tract sizes Range
    flat = op.Range(_int32(0), op.Cast(count, to=_INT32), _int32(1))  # < N·H·W·M·C: fits where the table does
    shape = op.Concat(batch, _int64([M, 1]), positions, axis=0)
    return op.Gather(op.Reshape(mask, _int64([-1])), op.Reshape(flat, shape), axis=0)


def corner_rows(op: Emitter, layer: Layer, clamped: Value, sizes: Sizes) -> Value:
    """The gather table rows (n·H + y)·W + x of the four neighbours, INT32 (N, M, 4, P), from ``clamped``
    (N, M, 4, P) of :func:`in_image`."""
    H, W = layer.input_size
    corner_y, corner_x = corners(layer)
    y, x = op.Gather(clamped, corner_y, axis=2), op.Gather(clamped, corner_x, axis=2)
    if layer.batch is not None and layer.batch > 1 and H is not None:
        y = op.Add(y, _int32(np.arange(layer.batch) * H).reshape(-1, 1, 1, 1))
    elif layer.batch != 1:  # n counted along offset's batch axis: X's batch is a symbol tract would have to match
        image = _positions(op, sizes.N) if layer.batch is None else _int32(np.arange(layer.batch))
        y = op.Add(y, op.Reshape(op.Mul(image, _counted(op, sizes.H, H)), _int64([-1, 1, 1, 1])))
    # every row fits INT32: rows < N·H·W < 2^31 (check_rows_fit)
    return op.Add(op.Mul(y, _counted(op, sizes.W, W)), x)


def per_row(op: Emitter, layer: Layer, t: Value, sample_shape: Sequence[int], integer: bool = False) -> list[Value]:
    """``t`` (N, M, 4, P) as M values (1, N·P, *sample_shape), one per plan row: what one tap's ``Gather``
    and blend take, the neighbours on the last axis. An ``integer`` ``t`` (the rows) is cut by one ``Gather``
    per plan row rather than by ``Split`` nodes: onnxruntime-web's JSEP ``Split`` takes float types only and
    would run on the CPU."""
    M = _rows(layer)
    t = op.Reshape(op.Transpose(t, perm=[1, 0, 3, 2]), _int64([M, -1, *sample_shape]))  # (M, N·P, …, 4)
    if integer:
        return [op.Gather(t, _int64([m]), axis=0) for m in range(M)]
    return op.split(t, M, M, axis=0)


# ------------------------------------------------------------------------------------------------ the taps


def gather_tables(op: Emitter, layer: Layer, X: Value) -> list[Value]:
    """``X`` (N, C, H, W) as S gather tables (N·H·W, Cs), slice s's channels at row (n·H + y)·W + x."""
    S = layer.slices
    slices = [X] if S == 1 else op.split(X, S, layer.in_channels, axis=1)
    shape = _int64([-1, layer.slice_channels])
    return [op.Reshape(op.Transpose(x, perm=[0, 2, 3, 1]), shape) for x in slices]


def samples(op: Emitter, table: Value, rows: Value, weights: Value) -> Value:
    """x(p)·Δm_k of one tap for one slice, (1, N·P, 1, Cs): its four neighbours gathered by ``rows``
    (1, N·P, 4) from ``table`` (N·H·W, Cs), blended by ``weights`` (1, N·P, 1, 4) in one batched
    (1 x 4)·(4 x Cs) ``MatMul``, which reads them once."""
    return op.MatMul(weights, op.Gather(table, rows, axis=0))


def tap_weights(op: Emitter, layer: Layer, W: Value) -> list[list[Value]]:
    """w_k of every slice s and tap k, ``[s][k]``: (Cs, O/R), the rows of W (O, C/R, kH, kW) that multiply
    slice s's channels into its conv group's outputs; folded into constants when ``W`` is known."""
    R, S, K, O = layer.groups, layer.slices, layer.taps, layer.out_channels
    J, Cs = S // R, layer.slice_channels
    split, perm = [R, O // R, J, Cs, K], (0, 2, 4, 3, 1)  # -> (R, J, K, Cs, O/R): s = r·J + j
    known = op.known(W)
    if known is not None:
        per_step = known.reshape(split).transpose(perm).reshape(S, K, Cs, O // R)
        return [[np.ascontiguousarray(per_step[s, k]) for k in range(K)] for s in range(S)]
    if S == 1:  # rank 3: (O, C, K) -> (K, C, O)
        split, perm = [O, Cs, K], (2, 1, 0)
    per_step = op.Reshape(op.Transpose(op.Reshape(W, _int64(split)), perm=list(perm)), _int64([S * K, Cs, O // R]))
    return [[op.Gather(per_step, _int64(s * K + k), axis=0) for k in range(K)] for s in range(S)]


def group_biases(op: Emitter, layer: Layer, B: Optional[Value]) -> list[Optional[Value]]:
    """B (O) as R values (O/R), one per conv group; folded when known; ``None`` each without a bias."""
    R = layer.groups
    if B is None:
        return [None] * R
    known = op.known(B)
    if known is not None:
        return list(np.split(known, R))
    if R == 1:
        return [B]
    per_group = op.Reshape(B, _int64([R, -1]))
    return [op.Gather(per_group, _int64(r), axis=0) for r in range(R)]


def output(op: Emitter, layer: Layer, sums: list[Value], sizes: Sizes) -> Value:
    """Y (N, O, Ho, Wo) from the R conv groups' sums (1, N·P, 1, O/R); Ho and Wo from ``offset``."""
    Y = op.concat(sums, axis=3)  # (1, N·P, 1, O)
    (Ho, Wo) = layer.output_size
    if Ho is None or Wo is None:
        shape = op.Concat(_int64([-1]), _either(sizes.Ho, Ho), _either(sizes.Wo, Wo), _int64([layer.out_channels]),
                          axis=0)
    else:
        shape = _int64([-1, *layer.output_size, layer.out_channels])
    return op.Transpose(op.Reshape(Y, shape), perm=[0, 3, 1, 2])


def deform_conv2d(op: Emitter, layer: Layer, X: Value, W: Value, offset: Value, B: Optional[Value] = None,
                  mask: Optional[Value] = None) -> Value:
    """Y (N, O, Ho, Wo) of ``X`` (N, C, H, W), ``W`` (O, C/R, kH, kW), ``offset`` (N, 2·G·K, Ho, Wo), optional
    ``B`` (O) and ``mask`` (N, G·K, Ho, Wo) (``None``: DCNv1): the sum over slices and taps of samples · w_k."""
    check_rows_fit(layer)
    sizes = input_sizes(op, layer, X, offset)
    low, frac = neighbours(op, layer, offsets(op, layer, offset), output_grid(op, layer, sizes))
    clamped, inside = in_image(op, low, last_pixel(op, layer, sizes))
    weights = per_row(op, layer, corner_weights(op, layer, frac, inside, mask, sizes), [1, _CORNERS])
    rows = per_row(op, layer, corner_rows(op, layer, clamped, sizes), [_CORNERS], integer=True)
    tables, w_k, biases = gather_tables(op, layer, X), tap_weights(op, layer, W), group_biases(op, layer, B)
    K, J, per_offset_group = layer.taps, layer.slices // layer.groups, layer.slices // layer.offset_groups
    every = [(s, k) for s in range(layer.slices) for k in range(K)]
    steps = [step for step, keep in zip(every, sampling.kept([w_k[s][k] for s, k in every])) if keep]

    def product(step: int) -> Value:
        """Samples · w_k of one (slice, tap): (1, N·P, 1, O/R)."""
        s, k = steps[step]
        m = s // per_offset_group * K + k
        sampled = samples(op, tables[s], rows[m], weights[m])
        return sampled if sampling.passes_through(w_k[s][k], 1) else op.MatMul(sampled, w_k[s][k])

    sums: list[Optional[Value]] = [None] * layer.groups
    upcoming = product(0)
    for step, (s, _) in enumerate(steps):
        current, r = upcoming, s // J
        # The next product is written before this one is added: onnxruntime orders nodes by a reverse
        # depth-first walk from the output that enters the input written last first, so this order makes it
        # finish each tap before it gathers the next (written after, it gathers every tap first: all K
        # products alive at once). Runtimes that execute in graph order hold one product more.
        upcoming = product(step + 1) if step + 1 < len(steps) else None
        if sums[r] is not None:
            sums[r] = op.Add(sums[r], current)
        else:
            sums[r] = current if biases[r] is None else op.Add(current, biases[r])
    return output(op, layer, sums, sizes)
