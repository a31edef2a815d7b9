"""The "gather" lowering: bilinear sampling by index arithmetic and one ``GatherND``, then one ``MatMul``.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

Steps, one function each: the gather table (X channels last), the sample positions p = p_0 + p_k + Δp_k,
their neighbours along each axis, clamped into the image, the four neighbours' table indices and bilinear
weights (zero outside the image, times Δm_k), the gather and blend of the neighbours into im2col columns,
and the grouped matmul with the weights. Only standard ops whose form is the same from opset 12 on (no
``Pad``, which ONNX's version converter cannot take below opset 18): under 60 nodes per layer, whatever the
static or dynamic sizes. The four neighbours are blended by one batched (1 x 4)·(4 x Cs) ``MatMul``, which
writes the columns once (a ``Mul`` + ``ReduceSum`` blend would hold four times the columns twice).

Why it is safe for every input: positions are cut to [-1, 2^24] in floating point (NaN and -Inf go to
-1), and the neighbours' indices are clamped into the image by integer ops, so no value of the offsets, no
dtype and no precision a runtime picks for the float math can make the gather read out of bounds; a
neighbour the integer clamp moved gets weight zero.

Notation: N batch, C/O channels in/out, K = kH·kW taps, G offset groups, R conv groups, S = lcm(G, R)
channel slices of Cs = C/S channels, J = S/R slices per conv group, P = Ho·Wo output positions. Per-sample
tensors share the *sample layout* (N, P, K·S, c, 1) for R = 1, or (N, R, P, K·J, c, 1), with c = 2 for
(y, x), 4 for the neighbours and 1 for the mask; the column order is tap-major (k·J + j).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from dcn_onnxscript.lowering import sampling
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer

Value = Any


def _sample_axes(layer: Layer) -> list[int]:
    """The sample layout's axes between N and c, with -1 for P: [P, K·S] or [R, P, K·J]."""
    R, J = layer.groups, layer.slices // layer.groups
    return [-1, layer.taps * J] if R == 1 else [R, -1, layer.taps * J]


def _broadcast_shape(layer: Layer, c: int, axes: Optional[list[int]] = None) -> np.ndarray:
    """A shape (1, 1…, c, 1) of the sample layout's rank, with ``axes`` (default all 1) before c."""
    axes = axes if axes is not None else [1] * len(_sample_axes(layer))
    return np.array([1, *axes, c, 1])


def sample_layout(op: Emitter, layer: Layer, t: Value, per_tap: int) -> Value:
    """``t`` (N, G·K·per_tap, Ho, Wo), channels ordered (g, k, per_tap) like offset and mask, in the sample
    layout (N, …, per_tap, 1); a slice's values are those of its offset group."""
    G, K, R, S = layer.offset_groups, layer.taps, layer.groups, layer.slices
    if S == 1:
        t = op.Reshape(t, np.array([0, K, per_tap, -1, 1]))  # (N, K, c, P, 1)
        return op.Transpose(t, perm=[0, 3, 1, 2, 4])  # (N, P, K, c, 1)
    t = op.Reshape(t, np.array([0, G, K, per_tap, -1]))  # (N, G, K, c, P)
    if S != G:
        t = op.Gather(t, np.arange(S, dtype=np.int64) // (S // G), axis=1)  # (N, S, K, c, P)
    if R == 1:
        t = op.Transpose(t, perm=[0, 4, 2, 1, 3])  # (N, P, K, S, c)
    else:
        t = op.Reshape(t, np.array([0, R, S // R, K, per_tap, -1]))  # (N, R, J, K, c, P)
        t = op.Transpose(t, perm=[0, 1, 5, 3, 2, 4])  # (N, R, P, K, J, c)
    return op.Reshape(t, np.array([0, *_sample_axes(layer), per_tap, 1]))


def positions(op: Emitter, layer: Layer, offset: Value, Ho_Wo: Value) -> Value:
    """p = p_0 + p_k + Δp_k in the sample layout (N, …, 2, 1) of the coordinate type, (y, x) on axis -2."""
    J = layer.slices // layer.groups
    p0 = sampling.output_grid(op, layer, Ho_Wo, _broadcast_shape(layer, 1, _p_axes(layer)), axis=-2)
    pk = np.repeat(sampling.first_tap(layer, shift=0.0), J, axis=1).T  # (K·J, 2), tap-major
    base = op.Add(p0, pk.reshape(_broadcast_shape(layer, 2, _k_axes(layer))))
    return op.Add(sampling.as_coordinates(op, layer, sample_layout(op, layer, offset, 2)), base)


def _p_axes(layer: Layer) -> list[int]:
    return [1 if a != -1 else -1 for a in _sample_axes(layer)][:-1] + [1]


def _k_axes(layer: Layer) -> list[int]:
    return [1] * (len(_sample_axes(layer)) - 1) + [_sample_axes(layer)[-1]]


def last_pixel(op: Emitter, layer: Layer, X: Value) -> Value:
    """(H - 1, W - 1, H - 1, W - 1) of ``X`` (N, C, H, W) as INT64 (1, 4, 1…, 1), for the (low y, low x,
    high y, high x) neighbours. The subtraction runs in float64: tract keeps integers computed from shapes
    symbolic and then cannot gather with indices clamped by them; float64, not float32, because
    onnxconverter-common's float16 conversion retypes float32 values but not a cast's target type."""
    sizes = op.Cast(op.Gather(op.Shape(X), np.array([2, 3, 2, 3])), to=11)  # 11: DOUBLE
    last = op.Cast(op.Sub(sizes, np.array(1.0)), to=7)  # 7: INT64
    return op.Reshape(last, _broadcast_shape(layer, 4))


#: Larger than any image side: sample positions beyond it (+Inf, huge offsets) are cut to it before the
#: integer cast, and then lie outside the image like any position past its last pixel.
_FAR = 2.0**24


def neighbours(op: Emitter, layer: Layer, p: Value):
    """The neighbours of every sample along each axis, and how far the sample lies past the first.

    ``p`` (N, …, 2, 1). A sample at or below -1 along an axis (NaN and -Inf included) is moved to -1, one
    beyond +2^24 to 2^24: there neither neighbour is in the image. Returns ``(low_high, frac)``: INT64
    (N, …, 4, 1), the (y, x) of the low neighbours then of the high ones (low + 1), and frac = p - low
    (N, …, 2, 1) in [0, 1] of the coordinate type.
    """
    minus_one = layer.coordinates(-1)
    p = op.Where(op.Greater(p, minus_one), op.Min(p, layer.coordinates(_FAR)), minus_one)
    low = op.Floor(p)
    frac = op.Sub(p, low)
    low = op.Cast(low, to=7)  # 7: INT64
    return op.Concat(low, op.Add(low, np.array(1, dtype=np.int64)), axis=-2), frac


def in_image(op: Emitter, low_high: Value, last: Value):
    """``low_high`` (N, …, 4, 1) clamped into the image (``last`` from :func:`last_pixel`) by integer ops, so
    that no gather index can be out of bounds whatever the float math before did, and whether each
    coordinate was inside already (BOOL): a neighbour outside the image counts zero."""
    clamped = op.Min(op.Max(low_high, np.array(0, dtype=np.int64)), last)
    return clamped, op.Equal(clamped, low_high)


#: The (y, x) of the four neighbours top-left, top-right, bottom-left, bottom-right, as indices into
#: (low y, low x, high y, high x).
_CORNER_Y, _CORNER_X = np.array([0, 0, 2, 2]), np.array([1, 3, 1, 3])


def corner_indices(op: Emitter, layer: Layer, clamped: Value) -> Value:
    """``GatherND`` indices of the four neighbours into the gather table of :func:`gather_table`: INT64
    (N, …, 4, 3), the triples (n, y, x·S + s) for image n and slice s. (The image index is part of the
    index, not ``batch_dims``: MNN's GatherND gets batch_dims=1 wrong for more than one image. It is
    counted along the batch axis, not from the shape: tract cannot match a length read from a shape with
    the batch dimension.)"""
    y, x = op.Gather(clamped, _CORNER_Y, axis=-2), op.Gather(clamped, _CORNER_X, axis=-2)
    ones = op.Cast(op.Equal(y, y), to=11)  # 11: DOUBLE (tract cannot sum its symbolic integers)
    image = op.Cast(op.CumSum(ones, np.array(0), exclusive=1), to=7)  # 0, 1, … along the batch axis
    S = layer.slices
    if S > 1:
        J = S // layer.groups
        columns = np.arange(layer.taps * J) % J
        if layer.groups > 1:
            columns = np.arange(layer.groups).reshape(-1, 1) * J + columns.reshape(1, -1)
        slice_of_column = columns.reshape(_broadcast_shape(layer, 1, _slice_axes(layer))).astype(np.int64)
        x = op.Add(op.Mul(x, np.array(S, dtype=np.int64)), slice_of_column)
    return op.Concat(image, y, x, axis=-1)


def _slice_axes(layer: Layer) -> list[int]:
    axes = [1] * len(_sample_axes(layer))
    axes[-1] = _sample_axes(layer)[-1]
    if layer.groups > 1:
        axes[0] = layer.groups
    return axes


def corner_weights(op: Emitter, layer: Layer, frac: Value, inside: Value, mask: Optional[Value]) -> Value:
    """Bilinear weights of the four neighbours, zero for a neighbour outside the image (``inside``
    (N, …, 4, 1) from :func:`in_image`), times Δm_k: (N, …, 4, 1) in the layer's dtype."""
    halves = op.Concat(op.Sub(layer.coordinates(1), frac), frac, axis=-2)  # 1-fy, 1-fx, fy, fx
    halves = op.Where(inside, halves, layer.coordinates(0))
    weights = op.Mul(op.Gather(halves, _CORNER_Y, axis=-2), op.Gather(halves, _CORNER_X, axis=-2))
    if layer.coordinate_dtype != layer.dtype:
        weights = op.Cast(weights, to=layer.dtype)
    return weights if mask is None else op.Mul(weights, sample_layout(op, layer, mask, 1))


def gather_table(op: Emitter, layer: Layer, X: Value) -> Value:
    """``X`` (N, C, H, W) as rows of Cs channels: (N, H, W·S, Cs), entry [n, y, x·S + s] = slice s of image
    n at pixel (y, x)."""
    channels_last = op.Transpose(X, perm=[0, 2, 3, 1])
    if layer.slices == 1:
        return channels_last
    return op.Reshape(channels_last, np.array([0, 0, -1, layer.slice_channels]))


def columns(op: Emitter, layer: Layer, table: Value, indices: Value, weights: Value) -> Value:
    """The sampled im2col columns Σ_corners weight · x(corner): (N, P, K·S·Cs) or (N, R, P, K·J·Cs)."""
    neighbours = op.GatherND(table, indices)  # (N, …, 4, Cs)
    rows = op.Reshape(weights, np.array([0, *_sample_axes(layer), 1, 4]))  # (N, …, 1, 4)
    blended = op.MatMul(rows, neighbours)  # (N, …, 1, Cs): one (1 x 4)·(4 x Cs) product per sample
    return op.Reshape(blended, np.array([0] * len(_sample_axes(layer)) + [-1]))


def weight_matrix(op: Emitter, layer: Layer, W: Value) -> Value:
    """``W`` (O, C/R, kH, kW) as the columns' right operand: (K·S·Cs, O) or (R, K·J·Cs, O/R), rows in the
    columns' (k, j, cs) order; folded into a constant when ``W`` is known."""
    R, S, K, O = layer.groups, layer.slices, layer.taps, layer.out_channels
    J, Cs = S // R, layer.slice_channels
    known = op.known(W)
    if R == 1 and S == 1:
        perm, split, shape = (2, 3, 1, 0), None, [K * Cs, O]  # (kH, kW, C, O)
    elif R == 1:
        perm, split, shape = (3, 1, 2, 0), [O, S, Cs, K], [K * S * Cs, O]  # (K, S, Cs, O)
    else:
        perm, split, shape = (0, 4, 2, 3, 1), [R, O // R, J, Cs, K], [R, K * J * Cs, O // R]  # (R, K, J, Cs, O/R)
    if known is not None:
        split_known = known if split is None else known.reshape(split)
        return np.ascontiguousarray(split_known.transpose(perm)).reshape(shape)
    by_tap = op.Transpose(W if split is None else op.Reshape(W, np.array(split)), perm=list(perm))
    return op.Reshape(by_tap, np.array(shape))


def bias_per_channel(op: Emitter, B: Value) -> Value:
    """``B`` (O) as (1, O, 1, 1); folded into a constant when ``B`` is known."""
    known = op.known(B)
    return known.reshape(1, -1, 1, 1) if known is not None else op.Reshape(B, np.array([1, -1, 1, 1]))


def output(op: Emitter, layer: Layer, product: Value, Ho_Wo: Value, B: Optional[Value]) -> Value:
    """``product`` (N, P, O) or (N, R, P, O/R) as Y (N, O, Ho, Wo), plus the bias ``B`` (O) if given."""
    perm = [0, 2, 1] if layer.groups == 1 else [0, 1, 3, 2]
    shape = op.Concat(np.array([-1, layer.out_channels], dtype=np.int64), Ho_Wo, axis=0)
    Y = op.Reshape(op.Transpose(product, perm=perm), shape)
    return Y if B is None else op.Add(Y, bias_per_channel(op, B))


def deform_conv2d(op: Emitter, layer: Layer, X: Value, W: Value, offset: Value, B: Optional[Value] = None,
                  mask: Optional[Value] = None) -> Value:
    """Y (N, O, Ho, Wo) of ``X`` (N, C, H, W), ``W`` (O, C/R, kH, kW), ``offset`` (N, 2·G·K, Ho, Wo), optional
    ``B`` (O) and ``mask`` (N, G·K, Ho, Wo) (``None``: DCNv1)."""
    Ho_Wo = sampling.output_size(op, offset)
    low_high, frac = neighbours(op, layer, positions(op, layer, offset, Ho_Wo))
    clamped, inside = in_image(op, low_high, last_pixel(op, layer, X))
    weights = corner_weights(op, layer, frac, inside, mask)
    indices = corner_indices(op, layer, clamped)
    product = op.MatMul(columns(op, layer, gather_table(op, layer, X), indices, weights), weight_matrix(op, layer, W))
    return output(op, layer, product, Ho_Wo, B)
