"""Deformable convolution v1/v2 as ONNX functions made of primitive ONNX ops, without ``GridSample``, in
the inputs' own type (float64 too): the "gather" script functions, which the rewriter calls for a float64
node whose weight shape is unknown (the public functions, :mod:`.grid_sample`, compute in float32).

The functions mirror ONNX ``DeformConv``-19 as the public ones do: inputs ``X`` (N, C, H, W), ``W``
(O, C/group, kH, kW), ``offset`` (N, 2·offset_group·kH·kW, Ho, Wo), ``B`` (O), ``mask``
(N, offset_group·kH·kW, Ho, Wo); attributes ``strides``, ``pads``, ``dilations``, ``group``,
``offset_group``; one function per combination of the optional inputs: :func:`deform_conv2d_gather`
(``B`` and ``mask``), :func:`deform_conv2d_gather_no_bias`, :func:`deform_conv2d_gather_no_mask` and
:func:`deform_conv2d_gather_no_bias_no_mask`.

The body follows the equation of the DCNv2 paper,

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k,

one helper per step: p_0 (output grid), p_k (kernel grid), Δp (offset), bilinear weights along each axis,
the four neighbours, mask modulation folded into the bilinear weights, gather, grouped matmul, bias.
The gather and the matmul run in up to 32 chunks of output positions (:func:`_chunked_product`): per
chunk one ``Gather`` of the four neighbours, one batched ``MatMul`` that blends them with their weights,
and one ``MatMul`` with the weights, so that the 4x-sized gathered tensor and the columns never exist for
the whole layer at once (peak memory near a native ``DeformConv`` kernel's).
Every size (N, C, H, W, Ho, Wo, kH, kW) is read with ``Shape`` at run time; ``Ho`` and ``Wo`` come from
``offset``, so the end pads only matter through the offset's shape, as in ``DeformConv``.

Notation used in the shapes below: P = Ho·Wo output positions, K = kH·kW kernel taps, G = offset_group,
R = group, S = lcm(G, R) channel *slices* of Cs = C/S channels each (one slice lies in one offset group and
one conv group), and the "slice layout" (N, R, P, S/R, K), in which the gathered columns feed ``MatMul``
without a transpose of the large tensor.
"""

from __future__ import annotations

from typing import Sequence

from onnxscript import DOUBLE, INT64, script
from onnxscript import opset18 as op

from dcn_onnxscript.lowering.script.common import Dim, Ints, T, dcn
from dcn_onnxscript.lowering.script.protos import flatten


@script(dcn, default_opset=op)
def _lcm(a: Dim, b: Dim) -> Dim:
    """Least common multiple of two positive (1,)-shaped INT64 tensors; the first multiple of ``a`` that
    ``b`` divides, searched among a·1 … a·b. Returns shape (1,)."""
    multiples = op.Range(op.Squeeze(a), op.Squeeze(a * b) + 1, op.Squeeze(a))
    divisible = op.Equal(op.Mod(multiples, op.Squeeze(b)), op.Constant(value_int=0))
    return op.Reshape(op.ReduceMin(op.Where(divisible, multiples, op.Squeeze(a * b))), [1])


@script(dcn, default_opset=op)
def _output_grid(Ho: Dim, Wo: Dim, strides: Ints, pads: Ints):
    """p_0: top-left input coordinate of every output position, before dilation and offset.

    ``Ho``, ``Wo``: (1,); ``strides``: (2,) = (sH, sW); ``pads``: (≥2,), begin pads first.
    Returns ``(p0_y, p0_x)``, each INT64 (P, 1) with P = Ho·Wo, row-major over (Ho, Wo).
    """
    rows = op.Range(0, op.Squeeze(Ho), 1) * op.Slice(strides, [0], [1]) - op.Slice(pads, [0], [1])
    cols = op.Range(0, op.Squeeze(Wo), 1) * op.Slice(strides, [1], [2]) - op.Slice(pads, [1], [2])
    grid = op.Concat(Ho, Wo, axis=0)
    p0_y = op.Reshape(op.Expand(op.Unsqueeze(rows, [1]), grid), [-1, 1])
    p0_x = op.Reshape(op.Expand(op.Unsqueeze(cols, [0]), grid), [-1, 1])
    return p0_y, p0_x


@script(dcn, default_opset=op)
def _kernel_grid(kH: Dim, kW: Dim, dilations: Ints):
    """p_k: displacement of every kernel tap from p_0.

    ``kH``, ``kW``: (1,); ``dilations``: (2,) = (dH, dW).
    Returns ``(pk_y, pk_x)``, each INT64 (1, K) with K = kH·kW, row-major over (kH, kW).
    """
    taps_y = op.Range(0, op.Squeeze(kH), 1) * op.Slice(dilations, [0], [1])
    taps_x = op.Range(0, op.Squeeze(kW), 1) * op.Slice(dilations, [1], [2])
    grid = op.Concat(kH, kW, axis=0)
    pk_y = op.Reshape(op.Expand(op.Unsqueeze(taps_y, [1]), grid), [1, -1])
    pk_x = op.Reshape(op.Expand(op.Unsqueeze(taps_x, [0]), grid), [1, -1])
    return pk_y, pk_x


@script(dcn, default_opset=op)
def _offset_yx(offset: T, G: Dim, K: Dim):
    """Δp: split ``offset`` (N, 2·G·K, Ho, Wo), laid out as (G, K, [Δy, Δx]) along channels like
    torchvision and ``DeformConv``, into ``(dy, dx)``, each (N, G, P, K)."""
    N = op.Shape(offset, start=0, end=1)
    per_group = op.Reshape(offset, op.Concat(N, G, K, [2, -1], axis=0))  # (N, G, K, 2, P)
    yx_last = op.Transpose(per_group, perm=[3, 0, 1, 4, 2])  # (2, N, G, P, K)
    return op.Gather(yx_last, 0, axis=0), op.Gather(yx_last, 1, axis=0)


@script(dcn, default_opset=op)
def _mask_per_group(mask: T, G: Dim, K: Dim) -> T:
    """Δm: ``mask`` (N, G·K, Ho, Wo) as (N, G, P, K)."""
    N = op.Shape(mask, start=0, end=1)
    return op.Transpose(op.Reshape(mask, op.Concat(N, G, K, [-1], axis=0)), perm=[0, 1, 3, 2])


@script(dcn, default_opset=op)
def _to_slices(t, G: Dim, R: Dim, S: Dim):
    """Copy a per-offset-group tensor (N, G, P, K) to every channel slice of its group, in slice layout
    (N, R, P, S/R, K): slice s = r·(S/R) + j lies in offset group s // (S/G)."""
    N = op.Shape(t, start=0, end=1)
    group_of_slice = op.Div(op.Range(0, op.Squeeze(S), 1), op.Div(S, G))  # (S,)
    per_slice = op.Gather(t, group_of_slice, axis=1)  # (N, S, P, K)
    P, K = op.Shape(t, start=2, end=3), op.Shape(t, start=3, end=4)
    by_conv_group = op.Reshape(per_slice, op.Concat(N, R, op.Div(S, R), P, K, axis=0))
    return op.Transpose(by_conv_group, perm=[0, 1, 3, 2, 4])


@script(dcn, default_opset=op)
def _inside(p: T, size: Dim):
    """Whether a sample at ``p`` has an in-image neighbour along an axis of ``size`` pixels: -1 < p < size
    (torchvision's test), as one comparison |2p + 1 - size| < size + 1 rather than two and an ``And``, which
    onnxruntime-web's JSEP has no kernel for (it would run on the CPU). NaN fails it, as do ±Inf and any huge
    value. Shape: that of ``p``; returns BOOL."""
    extent = op.CastLike(size, p)
    one = op.CastLike(1, p)
    return op.Less(op.Abs(p + p + (one - extent)), extent + one)


@script(dcn, default_opset=op)
def _at_least(value: Ints, bound: Ints) -> Ints:
    """``value`` raised to ``bound`` where below it, by a comparison and ``Where``: onnxruntime-web's JSEP has
    no ``Max`` or ``Min`` kernel (they would run on the CPU)."""
    return op.Where(op.Greater(bound, value), bound, value)


@script(dcn, default_opset=op)
def _at_most(value: Ints, bound: Ints) -> Ints:
    """``value`` lowered to ``bound`` where above it (see :func:`_at_least`)."""
    return op.Where(op.Greater(value, bound), bound, value)


@script(dcn, default_opset=op)
def _axis_neighbours(p: T, size: Dim):
    """Linear interpolation along one axis at coordinates ``p`` with -1 ≤ p < size (any shape).

    Returns ``(low, high, w_low, w_high)``: the two neighbouring INT64 indices, clamped into
    [0, size - 1] so that a gather never reads out of bounds, and their weights (1 - frac, frac), each
    zeroed where its neighbour lies outside the image. All four have the shape of ``p``.
    """
    p_low = op.Floor(p)
    frac = p - p_low
    low = op.Cast(p_low, to=INT64.dtype)
    high = low + 1
    last = size - 1
    w_low = (op.CastLike(1, p) - frac) * op.CastLike(op.GreaterOrEqual(low, 0), p)
    w_high = frac * op.CastLike(op.LessOrEqual(high, last), p)
    # Both indices clamped on both sides by integer ops: in range whatever the float math before did.
    zero = op.CastLike(0, low)
    return _at_most(_at_least(low, zero), last), _at_most(_at_least(high, zero), last), w_low, w_high


@script(dcn, default_opset=op)
def _channels_last_rows(X: T, G: Dim, S: Dim) -> T:
    """The gather table: ``X`` (N, C, H, W) as rows of Cs = C/S channels, (N·G·H·W·(S/G), Cs); row
    ((n·G + g)·H·W + h·W + w)·(S/G) + j holds channels of slice g·(S/G) + j at pixel (h, w)."""
    N = op.Shape(X, start=0, end=1)
    Cs = op.Div(op.Shape(X, start=1, end=2), S)
    H, W = op.Shape(X, start=2, end=3), op.Shape(X, start=3, end=4)
    split = op.Reshape(X, op.Concat(N, G, op.Div(S, G), Cs, H, W, axis=0))
    return op.Reshape(op.Transpose(split, perm=[0, 1, 4, 5, 2, 3]), op.Concat([-1], Cs, axis=0))


@script(dcn, default_opset=op)
def _slice_row_base(N: Dim, H: Dim, W: Dim, G: Dim, R: Dim, S: Dim) -> Ints:
    """First gather-table row of each (batch, slice), in slice layout broadcastable as (N, R, 1, S/R, 1):
    (n·G + g)·H·W·(S/G) + j for slice s = g·(S/G) + j."""
    per_group = op.Div(S, G)
    s = op.Range(0, op.Squeeze(S), 1)
    n = op.Range(0, op.Squeeze(N), 1)
    image_rows = H * W * per_group
    base = (op.Unsqueeze(n, [1]) * G + op.Unsqueeze(op.Div(s, per_group), [0])) * image_rows + op.Mod(
        s, per_group
    )
    return op.Reshape(base, op.Concat(N, R, [1], op.Div(S, R), [1], axis=0))


@script(dcn, default_opset=op)
def _stack_corners(top_left, top_right, bottom_left, bottom_right):
    """The four bilinear neighbours' values, each of one shape (…), stacked as (…, 4)."""
    return op.Concat(op.Unsqueeze(top_left, [-1]), op.Unsqueeze(top_right, [-1]),
                     op.Unsqueeze(bottom_left, [-1]), op.Unsqueeze(bottom_right, [-1]), axis=-1)


@script(dcn, default_opset=op)
def _bilinear_taps(
    X: T, offset: T, modulation: T, kH: Dim, kW: Dim, strides: Ints, pads: Ints, dilations: Ints,
    G: Dim, R: Dim, S: Dim,
):
    """Where and how strongly every sample x(p_0 + p_k + Δp_k) · Δm_k reads the input.

    ``X`` (N, C, H, W), ``offset`` (N, 2·G·K, Ho, Wo), ``modulation`` (N, G, P, K) (or broadcastable to
    it). Returns ``(rows, corners, weights)``: the gather table (·, Cs) of :func:`_channels_last_rows`,
    and, in slice layout with the four neighbours last, their table rows INT64 (N, R, P, S/R, K, 4) and
    bilinear weights times Δm_k (N, R, P, S/R, K, 4), in the order top-left, top-right, bottom-left,
    bottom-right.
    """
    N = op.Shape(X, start=0, end=1)
    H = op.Shape(X, start=2, end=3)
    W = op.Shape(X, start=3, end=4)
    K = kH * kW

    p0_y, p0_x = _output_grid(op.Shape(offset, start=2, end=3), op.Shape(offset, start=3, end=4), strides, pads)
    pk_y, pk_x = _kernel_grid(kH, kW, dilations)
    dy, dx = _offset_yx(op.Cast(offset, to=DOUBLE.dtype), G, K)  # positions in float64, whatever T is
    y = op.CastLike(p0_y + pk_y, dy) + dy  # p = p_0 + p_k + Δp, (N, G, P, K)
    x = op.CastLike(p0_x + pk_x, dx) + dx

    # A sample with no in-image neighbour along an axis contributes zero; moving its coordinate on that axis
    # to -1 keeps that true (neighbours -1 and 0, weights 1 and 0) and keeps NaN/Inf/huge values away from
    # the integer cast below.
    minus_one = op.CastLike(-1, y)
    y = _to_slices(op.Where(_inside(y, H), y, minus_one), G, R, S)
    x = _to_slices(op.Where(_inside(x, W), x, minus_one), G, R, S)
    m = _to_slices(op.Expand(op.CastLike(modulation, dy), op.Shape(dy)), G, R, S)

    y_low, y_high, wy_low, wy_high = _axis_neighbours(y, H)
    x_low, x_high, wx_low, wx_high = _axis_neighbours(x, W)
    wy_low = wy_low * m  # Δm_k folded into the bilinear weights
    wy_high = wy_high * m

    base = _slice_row_base(N, H, W, G, R, S)
    per_pixel = op.Div(S, G)
    top = base + y_low * W * per_pixel
    bottom = base + y_high * W * per_pixel
    left = x_low * per_pixel
    right = x_high * per_pixel
    corners = _stack_corners(top + left, top + right, bottom + left, bottom + right)
    weights = _stack_corners(wy_low * wx_low, wy_low * wx_high, wy_high * wx_low, wy_high * wx_high)
    return _channels_last_rows(X, G, S), corners, op.CastLike(weights, X)


@script(dcn, default_opset=op)
def _weight_matrix(weight: T, R: Dim, S: Dim) -> T:
    """``weight`` (O, C/R, kH, kW) as the grouped matmul's right operand (R, (S/R)·K·Cs, O/R), rows in
    the columns' (j, k, cs) order."""
    per_group_out = op.Div(op.Shape(weight, start=0, end=1), R)
    slices_per_group = op.Div(S, R)
    Cs = op.Div(op.Shape(weight, start=1, end=2), slices_per_group)
    K = op.Shape(weight, start=2, end=3) * op.Shape(weight, start=3, end=4)
    by_slice = op.Reshape(weight, op.Concat(R, per_group_out, slices_per_group, Cs, K, axis=0))
    return op.Reshape(op.Transpose(by_slice, perm=[0, 2, 4, 3, 1]), op.Concat(R, [-1], per_group_out, axis=0))


@script(dcn, default_opset=op)
def _chunk_product(
    rows: T, corners: Ints, blend: T, w: T, starts: Ints, ends: Ints, columns: Ints, chunk: int
) -> T:
    """The grouped matmul Σ_k Σ_c w · x(p) · Δm_k at output positions [starts[chunk], ends[chunk]).

    ``rows`` (·, Cs); ``corners`` INT64 (N, R, P, S/R, K, 4) and ``blend`` (N, R, P, S/R, K, 1, 4), the
    neighbours' rows and weights; ``w`` (R, (S/R)·K·Cs, O/R); ``starts``, ``ends`` (chunks,); ``columns``
    the shape (N, R, -1, (S/R)·K·Cs) of the sampled columns (no chunk is empty, so -1 is defined).
    Gathers the chunk's four neighbours (N, R, size, S/R, K, 4, Cs), blends them in one batched (1, 4) x (4, Cs)
    ``MatMul`` into the sampled columns (N, R, size, (S/R)·K·Cs) and multiplies those by ``w``; returns
    (N, R, size, O/R).
    """
    at = op.Reshape(op.Constant(value_int=chunk), [1])
    start = op.Gather(starts, at)
    end = op.Gather(ends, at)
    index = op.Slice(corners, start, end, [2])
    samples = op.MatMul(op.Slice(blend, start, end, [2]), op.Gather(rows, index, axis=0))  # (…, K, 1, Cs)
    return op.MatMul(op.Reshape(samples, columns), w)


@script(dcn, default_opset=op)
def _chunked_product(rows: T, corners: Ints, weights: T, w: T) -> T:
    """The grouped matmul of the sampled columns with ``w`` (R, (S/R)·K·Cs, O/R), in 32 chunks of output
    positions, each at least P/32 positions and 2^19 samples (N·K·C per position). The four gathered
    neighbours (4x the columns) and the columns only ever exist for one chunk, so that peak memory stays
    near a native kernel's on large layers, while small layers run in few chunks (every op costs a thread
    wake-up) and each ``MatMul`` keeps enough rows that reading ``w`` again per chunk costs little. A
    chunk past the last position holds a single repeat of position P - 1, dropped at the end.

    ``rows``, ``corners``, ``weights`` as returned by :func:`_bilinear_taps`; returns (N, R, P, O/R).
    The 32 calls are unrolled: a ``Loop`` would be shorter but runs on fewer runtimes.
    """
    P = op.Shape(corners, start=2, end=3)
    # Samples per output position: N·K·C; a chunk gathers at least 2^19 of them (4x that in neighbours).
    per_position = op.ReduceProd(op.Gather(op.Shape(corners), [0, 1, 3, 4])) * op.Shape(rows, start=1, end=2)
    size = _at_least(op.Div(P + 31, [32]), op.Div(per_position + 524287, per_position))
    # A chunk past the last position repeats position P - 1 instead of being empty (empty tensors crash
    # OpenVINO's CPU plugin); the final Slice drops those repeats.
    starts = _at_most(op.Range(0, 32, 1) * size, P - 1)
    ends = _at_least(_at_most(starts + size, P), starts + 1)
    blend = op.Unsqueeze(weights, [-2])
    shape = op.Concat(op.Shape(corners, start=0, end=2), [-1], op.Shape(w, start=1, end=2), axis=0)
    # Joined in runs of at most 7 chunks: a Concat binds a storage buffer per input and output (WebGPU: 8).
    first = op.Concat(
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=0),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=1),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=2),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=3),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=4),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=5),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=6),
        axis=2,
    )
    second = op.Concat(
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=7),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=8),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=9),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=10),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=11),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=12),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=13),
        axis=2,
    )
    third = op.Concat(
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=14),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=15),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=16),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=17),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=18),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=19),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=20),
        axis=2,
    )
    fourth = op.Concat(
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=21),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=22),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=23),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=24),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=25),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=26),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=27),
        axis=2,
    )
    fifth = op.Concat(
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=28),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=29),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=30),
        _chunk_product(rows, corners, blend, w, starts, ends, shape, chunk=31),
        axis=2,
    )
    product = op.Concat(first, second, third, fourth, fifth, axis=2)
    return op.Slice(product, [0], P, [2])


@script(dcn, default_opset=op)
def _deform_conv2d(
    X: T,
    W: T,
    offset: T,
    modulation: T,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
    offset_group: int,
) -> T:
    """Deformable convolution without bias; ``modulation`` is the mask (N, G·K, Ho, Wo) reshaped to
    (N, G, P, K), or a scalar 1 for DCNv1. Returns (N, O, Ho, Wo)."""
    G = op.Reshape(op.Constant(value_int=offset_group), [1])
    R = op.Reshape(op.Constant(value_int=group), [1])
    S = _lcm(G, R)
    kH = op.Shape(W, start=2, end=3)
    kW = op.Shape(W, start=3, end=4)
    strides_hw = op.Constant(value_ints=strides)
    pads_hw = op.Constant(value_ints=pads)
    dilations_hw = op.Constant(value_ints=dilations)
    rows, corners, weights = _bilinear_taps(X, offset, modulation, kH, kW, strides_hw, pads_hw, dilations_hw,
                                            G, R, S)
    product = _chunked_product(rows, corners, weights, _weight_matrix(W, R, S))  # (N, R, P, O/R)
    N = op.Shape(X, start=0, end=1)
    O = op.Shape(W, start=0, end=1)
    Ho = op.Shape(offset, start=2, end=3)
    Wo = op.Shape(offset, start=3, end=4)
    return op.Reshape(op.Transpose(product, perm=[0, 1, 3, 2]), op.Concat(N, O, Ho, Wo, axis=0))


@script(dcn, default_opset=op)
def _add_bias(Y: T, B: T) -> T:
    """``Y`` (N, O, Ho, Wo) + ``B`` (O) per output channel."""
    return Y + op.Reshape(B, [1, -1, 1, 1])


@script(dcn, default_opset=op)
def deform_conv2d_gather_no_bias(
    X: T,
    W: T,
    offset: T,
    mask: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """:func:`deform_conv2d_gather` with ``B`` omitted (DCNv2 without bias): ``X``, ``W``, ``offset``, ``mask`` as
    there; returns ``Y`` (N, O, Ho, Wo)."""
    G = op.Reshape(op.Constant(value_int=offset_group), [1])
    modulation = _mask_per_group(mask, G, op.Shape(W, start=2, end=3) * op.Shape(W, start=3, end=4))
    return _deform_conv2d(X, W, offset, modulation, strides=strides, pads=pads, dilations=dilations,
                          group=group, offset_group=offset_group)


@script(dcn, default_opset=op)
def deform_conv2d_gather_no_bias_no_mask(
    X: T,
    W: T,
    offset: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """:func:`deform_conv2d_gather` with ``B`` and ``mask`` omitted (DCNv1 without bias): ``X``, ``W``, ``offset``
    as there; returns ``Y`` (N, O, Ho, Wo)."""
    return _deform_conv2d(X, W, offset, op.CastLike(1, offset), strides=strides, pads=pads,
                          dilations=dilations, group=group, offset_group=offset_group)


@script(dcn, default_opset=op)
def deform_conv2d_gather_no_mask(
    X: T,
    W: T,
    offset: T,
    B: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """:func:`deform_conv2d_gather` with ``mask`` omitted (DCNv1 with bias): ``X``, ``W``, ``offset``, ``B`` as
    there; returns ``Y`` (N, O, Ho, Wo)."""
    Y = deform_conv2d_gather_no_bias_no_mask(X, W, offset, strides=strides, pads=pads, dilations=dilations,
                                             group=group, offset_group=offset_group)
    return _add_bias(Y, B)


@script(dcn, default_opset=op)
def deform_conv2d_gather(
    X: T,
    W: T,
    offset: T,
    B: T,
    mask: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """Modulated deformable convolution (DCNv2) with bias; inputs and attributes as ``DeformConv``-19.

    ``X`` (N, C, H, W), ``W`` (O, C/group, kH, kW), ``offset`` (N, 2·offset_group·kH·kW, Ho, Wo),
    ``B`` (O), ``mask`` (N, offset_group·kH·kW, Ho, Wo); returns ``Y`` (N, O, Ho, Wo).
    """
    Y = deform_conv2d_gather_no_bias(X, W, offset, mask, strides=strides, pads=pads, dilations=dilations,
                                     group=group, offset_group=offset_group)
    return _add_bias(Y, B)


for _public in (deform_conv2d_gather, deform_conv2d_gather_no_bias, deform_conv2d_gather_no_mask,
                deform_conv2d_gather_no_bias_no_mask):
    flatten(_public)
