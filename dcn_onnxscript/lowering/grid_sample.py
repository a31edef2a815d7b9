"""The "grid_sample" lowering: one ONNX ``GridSample`` and one 1x1 ``Conv`` per kernel tap, summed.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

The sum over taps is the equation's own Σ_k: tap k samples X at its positions p = p_0 + p_k + Δp_k with
``GridSample`` (bilinear, zero outside the image), scales the samples by Δm_k and multiplies them by the
weights of that tap, W[:, :, kh, kw], as a 1x1 ``Conv`` (conv groups are the Conv's ``group``). The running
sum holds Y, so no more than one tap's samples (N, C, Ho, Wo) are ever alive: 1/K of im2col, where the
native kernel holds the im2col columns of a batch, and each tap's product is a full-sized GEMM. Offset
groups G sample X as N·G images of C/G channels.

Steps, one function each: the grid of every tap, the samples of one tap, the weights of one tap, and the
sum. The positions are computed once for all taps and split; the layer's kernel, strides, pads, dilations
and groups are unrolled at build time, so only N, H, W, Ho and Wo are left to the graph.

Why it is safe for every input: a grid value that is not finite or lies 4 or more image sizes from the
centre (NaN, ±Inf and huge offsets included) is replaced by 4, where both neighbours lie outside the image:
``GridSample`` reads zero there and never sees a value it could turn into an out-of-range integer.

Float16 and bfloat16 layers sample, weigh and sum in float32 (sampling positions of float16 would be off by
up to 1/32 pixel at 64 pixels), and float64 ones too if asked for (onnxruntime has no float64 ``GridSample``
before opset 20 and no float64 ``Conv``): their positions stay float64 until they become the grid. The
default ("auto") therefore lowers float64 layers with "gather", which computes in float64 throughout.

Notation as in :mod:`dcn_onnxscript.lowering.gather`; P = Ho·Wo.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from dcn_onnxscript.lowering import sampling
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer

Value = Any

#: ``GridSample`` first appears in opset 16.
MIN_OPSET = 16
#: The type ``GridSample`` and the convolutions run in: FLOAT.
_SAMPLED = 1
#: Grid values at or beyond this distance from the image centre (in half image sizes) are moved to it.
_FAR = 4.0


def _sampled(op: Emitter, layer: Layer, value: Value) -> Value:
    """``value`` of the layer's dtype as float32."""
    return value if layer.dtype == _SAMPLED else op.Cast(value, to=_SAMPLED)


def _every_tap(layer: Layer, pair) -> np.ndarray:
    """``pair`` (x-value, y-value) repeated for every tap: the pattern of the grids' last axis (2K)."""
    return np.tile(np.asarray(pair), layer.taps)


def tap_offsets(op: Emitter, layer: Layer, offset: Value) -> Value:
    """Δp of ``offset`` (N, 2·G·K, Ho, Wo) as (N·G, Ho, Wo, 2K) in the coordinate type, (x, y) of tap k at
    2k, 2k+1 of the last axis: ``GridSample``'s order."""
    G, K = layer.offset_groups, layer.taps
    if G > 1:
        offset = op.Reshape(offset, np.array([-1, 2 * K, 0, 0]))  # (N·G, 2K, Ho, Wo)
    x_then_y = np.arange(2 * K, dtype=np.int64).reshape(K, 2)[:, ::-1].reshape(-1)
    delta = op.Transpose(op.Gather(offset, np.ascontiguousarray(x_then_y), axis=1), perm=[0, 2, 3, 1])
    return sampling.as_coordinates(op, layer, delta)


def pixel_centres(op: Emitter, layer: Layer, delta: Value) -> tuple[Value, np.ndarray]:
    """p_0 + p_k + 1/2 in pixels for ``delta`` (N·G, Ho, Wo, 2K), as two terms to add, (x, y) of every tap on
    the last axis: the output positions' part (Ho, Wo, 2K), s·(o + 1), and the taps' constant part
    (1, 1, 2K), d·k - pad - s + 1/2. (Output position o samples tap k at s·o - pad + d·k; the 1/2 moves
    pixel indices to pixel centres.) The first part has no batch axis: tract cannot tell that min(N, 1) is 1."""
    sy, sx = layer.stride
    step = sx if sx == sy else 1
    steps = op.ConstantOfShape(op.Shape(delta, start=1), value=layer.coordinates([step]))  # (Ho, Wo, 2K)
    is_x = _every_tap(layer, [True, False]).reshape(1, 1, -1)
    o = op.Where(is_x, op.CumSum(steps, np.array(1)), op.CumSum(steps, np.array(0)))  # step·(o + 1), (x, y)
    if sx != sy:
        o = op.Mul(o, layer.coordinates(_every_tap(layer, [sx, sy])))
    first = sampling.first_tap(layer, shift=0.5)[::-1].T  # (K, 2) (x, y)
    return o, np.ascontiguousarray(first).reshape(1, 1, 2 * layer.taps)


def pixel_scale(op: Emitter, layer: Layer, X: Value) -> Value:
    """(2/W, 2/H) of ``X`` (N, C, H, W) for every tap, (2K), in the coordinate type: a pixel's width in grid
    units. A float32 layer gets W/2 and H/2 by summing halves instead of casting: onnxconverter-common's
    float16 conversion retypes a ``Cast(to=FLOAT)``'s output but keeps its ``to`` (its issue 320), which a
    float32 model must therefore not have; other dtypes cast."""
    if layer.coordinate_dtype != _SAMPLED or layer.dtype != _SAMPLED:
        size = op.Cast(op.Gather(op.Shape(X), _every_tap(layer, np.array([3, 2], dtype=np.int64))),
                       to=layer.coordinate_dtype)
        return op.Div(layer.coordinates(2), size)
    halves = op.ConstantOfShape(op.Shape(X, start=2), value=layer.coordinates([0.5]))  # (H, W)
    widths, heights = op.ReduceSum(halves, np.array([1]), keepdims=0), op.ReduceSum(halves, np.array([0]), keepdims=0)
    first_and_last = _every_tap(layer, np.array([0, -1], dtype=np.int64))
    return op.Reciprocal(op.Gather(op.Concat(widths, heights, axis=0), first_and_last))


def grids(op: Emitter, layer: Layer, X: Value, offset: Value) -> list[Value]:
    """``GridSample``'s grid of every tap: K values (N·G, Ho, Wo, 2), (x, y) in align_corners=0 units
    g = (p + 1/2)·2/size - 1 of X (N, C, H, W). Every tensor on the way has rank 4 (onnx2tf reads rank 5 as
    a volume and transposes it)."""
    delta = tap_offsets(op, layer, offset)
    scale = pixel_scale(op, layer, X)
    p = op.Add(delta, op.Add(*pixel_centres(op, layer, delta)))  # p + 1/2 (not Sum: MNN's gets broadcasts wrong)
    g = op.Sub(op.Mul(p, scale), layer.coordinates(1))
    g = op.Where(op.Less(op.Abs(g), layer.coordinates(_FAR)), g, layer.coordinates(_FAR))
    if layer.coordinate_dtype != _SAMPLED:
        g = op.Cast(g, to=_SAMPLED)
    # split on the literal 2K axis: every part has exactly the sizes (N·G, Ho, Wo, 2) (a split of a symbolic
    # size such as K·Wo gets rounded sizes in tract, which then pile up layer after layer)
    return op.split(g, layer.taps, 2 * layer.taps, axis=3)


def tap_samples(op: Emitter, layer: Layer, images: Value, grid: Value, mask: Optional[Value]) -> Value:
    """x(p) · Δm_k of one tap for every channel: (N, C, Ho, Wo) float32, from ``images`` (N·G, C/G, H, W)
    float32, its ``grid`` (N·G, Ho, Wo, 2) and its ``mask`` (N·G, 1, Ho, Wo) float32."""
    mode = "linear" if op.opset >= 20 else "bilinear"
    samples = op.GridSample(images, grid, align_corners=0, mode=mode, padding_mode="zeros")
    if mask is not None:
        samples = op.Mul(samples, mask)
    if layer.offset_groups == 1:
        return samples
    return op.Reshape(samples, np.array([-1, layer.in_channels, 0, 0], dtype=np.int64))


def tap_weights(op: Emitter, layer: Layer, W: Value) -> list[Value]:
    """W (O, C/R, kH, kW) as K 1x1 kernels (O, C/R, 1, 1) float32, one per tap (row-major); folded into
    constants when ``W`` is known."""
    O, C_R, K = layer.out_channels, layer.in_channels // layer.groups, layer.taps
    known = op.known(W)
    if known is not None:
        taps = known.astype(np.float32).reshape(O, C_R, K, 1)
        return [np.ascontiguousarray(taps[:, :, k:k + 1]) for k in range(K)]
    return op.split(_sampled(op, layer, op.Reshape(W, np.array([O, C_R, K, 1], dtype=np.int64))), K, K, axis=2)


def _bias(op: Emitter, layer: Layer, B: Value) -> Value:
    """``B`` (O) as float32; folded when known."""
    known = op.known(B)
    return known.astype(np.float32) if known is not None else _sampled(op, layer, B)


def deform_conv2d(op: Emitter, layer: Layer, X: Value, W: Value, offset: Value, B: Optional[Value] = None,
                  mask: Optional[Value] = None) -> Value:
    """Y (N, O, Ho, Wo) of ``X`` (N, C, H, W), ``W`` (O, C/R, kH, kW), ``offset`` (N, 2·G·K, Ho, Wo), optional
    ``B`` (O) and ``mask`` (N, G·K, Ho, Wo) (``None``: DCNv1): Σ_k Conv1x1(W_k, samples of tap k)."""
    G, K = layer.offset_groups, layer.taps
    images = _sampled(op, layer, X)
    if G > 1:
        images = op.Reshape(images, np.array([-1, layer.in_channels // G, 0, 0], dtype=np.int64))
    masks = [None] * K
    if mask is not None:
        per_group = mask if G == 1 else op.Reshape(mask, np.array([-1, K, 0, 0], dtype=np.int64))
        masks = op.split(_sampled(op, layer, per_group), K, K, axis=1)  # (N·G, 1, Ho, Wo) each
    Y = None
    for grid, tap_mask, weights in zip(grids(op, layer, X, offset), masks, tap_weights(op, layer, W)):
        first_tap_bias = [_bias(op, layer, B)] if Y is None and B is not None else []
        product = op.Conv(tap_samples(op, layer, images, grid, tap_mask), weights, *first_tap_bias,
                          group=layer.groups)
        Y = product if Y is None else op.Add(Y, product)
    return Y if layer.dtype == _SAMPLED else op.Cast(Y, to=layer.dtype)
