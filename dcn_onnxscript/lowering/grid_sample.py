"""The "grid_sample" lowering: one ONNX ``GridSample`` and one 1x1 ``Conv`` per kernel tap, summed.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

The sum over taps is the equation's own Σ_k: tap k samples X at its positions p = p_0 + p_k + Δp_k with
``GridSample`` (bilinear, zero outside the image), scales the samples by Δm_k and multiplies them by the
weights of that tap, W[:, :, kh, kw], as a 1x1 ``Conv`` (conv groups are the Conv's ``group``). The running
sum holds Y, so no more than one tap's samples (N, C, Ho, Wo) are ever alive: 1/K of im2col, where the
native kernel holds the im2col columns of a batch, and each tap's product is a full-sized GEMM. Offset
groups G sample X as N·G images of C/G channels.

Steps, one function each: the offsets Δp, the output positions p_0, the half image sizes, the grid of
every tap, the images, the masks, the samples of one tap, the weights of one tap, and the sum. The
positions are computed once for all taps and split; the layer's kernel, strides, pads, dilations and
groups are unrolled at build time, so only N, H, W, Ho and Wo are left to the graph.

Sizes have one source each: N, H and W are read from X, Ho and Wo from ``offset``; ``offset`` and the mask
are cut to those sizes (:mod:`~dcn_onnxscript.lowering.sampling`), so that a runtime that types the graph
symbolically (tract) never has to prove that two inputs' batch or grid sizes are equal. Sizes the
:class:`~dcn_onnxscript.lowering.layer.Layer` knows (static shapes) are written as constants instead: a
static layer's grid is (Δp + a constant) times a constant, with no ``Shape``, ``ConstantOfShape`` or
``CumSum`` left (OpenCV's ONNX importer crashes on a ``CumSum`` of a constant), and a layer with only its
batch dynamic keeps just the two ``Slice``s.

The graph's patterns are ones that converters read (OpenCV, ncnn through pnnx, onnx_tool, onnx2tf, MNN):
``GridSample`` wants (x, y) and deform_conv2d's offsets hold (y, x), so their channels are split one by one and
concatenated pairwise swapped (a ``Gather`` of the channels is what pnnx turns into a one-channel crop and
OpenCV cannot follow; sampling X with its spatial axes swapped instead costs a copy of X: 1.5x native
peak memory on the bench's L2 layer; the DCNv3/DCNv4 cores' (x, y) offsets are read as they are); sizes
come from ``Shape`` + ``Slice`` (onnx_tool ignores ``Shape``'s start); every tensor has rank 4 or less (onnx2tf
reads rank 5 as a volume).

Why it is safe for every input: a grid value that is not finite or lies 4 or more image sizes from the
centre (NaN, ±Inf and huge offsets included) is replaced by 4, where both neighbours lie outside the image:
``GridSample`` reads zero there and never sees a value it could turn into an out-of-range integer. The test
is a comparison and a ``Where``: ``Clip`` and ``Min``/``Max`` keep NaN on onnxruntime and onnx.reference, whose
``GridSample`` then returns a non-zero value or fails. (ncnn has neither a comparison nor a select: there the
guard must become ``Clip(-4, 4)``, which gives up the zero contribution of NaN offsets.)

Float16 and bfloat16 layers sample, weigh and sum in float32 (sampling positions of float16 would be off by
up to 1/32 pixel at 64 pixels), and float64 ones too if asked for (onnxruntime has no float64 ``GridSample``
before opset 20 and no float64 ``Conv``): their positions stay float64 until they become the grid. The
default ("auto") therefore lowers float64 layers with "gather", which computes in float64 throughout.

Notation as in :mod:`dcn_onnxscript.lowering.gather`. Δp holds (Δx, Δy) of tap k at channels 2k and 2k + 1
(deform_conv2d's order swapped), and so do the per-channel constants below, shaped (1, 2K, 1, 1): rank 4 like
the tensors they meet, because onnx2tf moves the second axis of every constant of rank 3 or more last as if
it were NCHW, and then that of the NCHW tensor it broadcasts against again: the folded grid (2K, Ho, Wo)
became (1, Wo, Ho, 2K) against the offsets' (1, Ho, Wo, 2K) (transposed positions: wrong at Ho = Wo, a
conversion error otherwise).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from dcn_onnxscript.lowering import sampling
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer, OffsetOrder

Value = Any
#: A graph value, or a numpy array where the layer's static sizes fix it.
Folded = Union[Value, np.ndarray]

#: The type ``GridSample`` and the convolutions run in: FLOAT.
SAMPLED = 1
#: Grid values at or beyond this distance from the image centre (in half image sizes) are moved to it.
_FAR = 4.0
#: NCHW -> NHWC: the grid's layout, (x, y) pairs last.
_CHANNELS_LAST = [0, 2, 3, 1]
#: The shape of a per-channel constant, (1, 2K, 1, 1): rank 4 (onnx2tf, see the module's docstring).
_PER_CHANNEL = (1, -1, 1, 1)


def sampled(op: Emitter, layer: Layer, value: Value) -> Value:
    """``value`` of the layer's dtype as float32."""
    return value if layer.dtype == SAMPLED else op.Cast(value, to=SAMPLED)


def _per_channel(layer: Layer, pair) -> np.ndarray:
    """``pair`` (x-value, y-value) at the x and y channel of every tap, shaped (1, 2K, 1, 1) to broadcast
    against (N·G, 2K, Ho, Wo)."""
    return np.tile(np.asarray(pair), layer.taps).reshape(_PER_CHANNEL)



def tap_offsets(op: Emitter, layer: Layer, offset: Value) -> Value:
    """Δp of ``offset`` (N, 2·G·K, Ho, Wo), a pair per tap in the layer's ``offset_order``, as (N·G, 2K, Ho, Wo),
    (Δx, Δy) per tap, in the coordinate type: ``GridSample``'s order. (Δy, Δx) pairs are swapped by a ``Split``
    into channels and a ``Concat``; (Δx, Δy) pairs (the DCNv3/DCNv4 cores') are read as they are."""
    two_k = 2 * layer.taps
    if layer.offset_groups > 1:
        offset = op.Reshape(offset, np.array([-1, two_k, 0, 0], dtype=np.int64))
    if layer.offset_order is OffsetOrder.YX:
        channels = op.split(offset, two_k, two_k, axis=1)
        offset = op.concat([channels[c ^ 1] for c in range(two_k)], axis=1)  # c ^ 1: the other one of its pair
    return sampling.as_coordinates(op, layer, offset)


def output_positions(op: Emitter, layer: Layer, Ho_Wo: Optional[Value]) -> Folded:
    """p_0 counted from 1, s·(o + 1), at the x and y channel of every tap: (1, 2K, Ho, Wo) of the coordinate
    type, the columns at the x channels and the rows at the y channels (callers add p_k, the pads and the 1
    back: :func:`sampling.first_tap`). A constant when (Ho, Wo) are static, else built on ``Ho_Wo`` (INT64 (2,),
    the offset's)."""
    (sy, sx), (Ho, Wo) = layer.stride, layer.output_size
    is_x = _per_channel(layer, [True, False])
    if not sampling.dynamic(Ho, Wo):
        cols, rows = np.arange(1, Wo + 1), np.arange(1, Ho + 1).reshape(-1, 1)
        return layer.coordinates(np.where(is_x, sx * cols, sy * rows))
    step = sx if sx == sy else 1
    ones = op.ConstantOfShape(Ho_Wo, value=layer.coordinates([step]))  # (Ho, Wo)
    p0 = op.Where(is_x, op.CumSum(ones, np.array(1)), op.CumSum(ones, np.array(0)))
    return p0 if sx == sy else op.Mul(p0, layer.coordinates(_per_channel(layer, [sx, sy])))


def half_sizes(op: Emitter, layer: Layer, X_shape: Optional[Value]) -> Folded:
    """(W/2, H/2) of X at the x and y channel of every tap, (1, 2K, 1, 1) of the coordinate type: a constant
    when (H, W) are static, else from X's ``Shape`` ``X_shape`` (:func:`sampling.half_sizes`)."""
    H, W = layer.input_size
    if not sampling.dynamic(H, W):
        return layer.coordinates(_per_channel(layer, [W / 2, H / 2]))
    return sampling.half_sizes(op, layer, X_shape, 2, _per_channel(layer, [0, 1]))


def grid_values(op: Emitter, layer: Layer, delta: Value, p0: Folded, halves: Folded) -> Value:
    """``GridSample``'s grid values of every tap: (N·G, 2K, Ho, Wo) float32, (x, y) of tap k at channels 2k and
    2k + 1, in align_corners=0 units g = (p + 1/2 - S/2) / (S/2) of X (S = W for x, H for y), from ``delta`` Δp
    (N·G, 2K, Ho, Wo), ``p0`` (:func:`output_positions`) and ``halves`` (:func:`half_sizes`). Every tensor on
    the way has rank 4 or less (onnx2tf reads rank 5 as a volume and transposes it)."""
    first = sampling.first_tap(layer, shift=0.5)[::-1].T.reshape(_PER_CHANNEL)  # p_k - pad - s + 1/2, (x, y)
    if isinstance(halves, np.ndarray):
        centres = first - halves
        base = p0 + centres if isinstance(p0, np.ndarray) else op.Add(p0, centres)
        g = op.Mul(op.Add(delta, base), layer.coordinates(1 / halves))
    else:  # one Div of the grid instead of a Reciprocal and a Mul: one node less, no slower
        g = op.Div(op.Add(delta, op.Add(p0, op.Sub(first, halves))), halves)
    return guarded(op, layer, g)


def guarded(op: Emitter, layer: Layer, g: Value) -> Value:
    """Grid values ``g`` of the coordinate type as float32, every one that is not finite or lies :data:`_FAR`
    or more half sizes from the centre moved to :data:`_FAR`, where ``GridSample`` reads zero (see the module
    docstring)."""
    g = op.Where(op.Less(op.Abs(g), layer.coordinates(_FAR)), g, layer.coordinates(_FAR))
    return g if layer.coordinate_dtype == SAMPLED else op.Cast(g, to=SAMPLED)


def in_dtype(op: Emitter, layer: Layer, Y: Value) -> Value:
    """``Y`` float32 as the layer's dtype."""
    return Y if layer.dtype == SAMPLED else op.Cast(Y, to=layer.dtype)


def grids(op: Emitter, layer: Layer, values: Value) -> list[Value]:
    """The grid of every tap: K values (N·G, Ho, Wo, 2) of ``values`` (:func:`grid_values`). Split on the literal 2K
    axis: every part has exactly those sizes (a split of a symbolic size such as K·Wo gets rounded sizes in
    tract, which then pile up layer after layer)."""
    return op.split(op.Transpose(values, perm=_CHANNELS_LAST), layer.taps, 2 * layer.taps, axis=3)


def sampled_images(op: Emitter, layer: Layer, X: Value) -> Value:
    """``X`` (N, C, H, W) as N·G images (N·G, C/G, H, W) float32."""
    images = sampled(op, layer, X)
    if layer.offset_groups == 1:
        return images
    return op.Reshape(images, np.array([-1, layer.in_channels // layer.offset_groups, 0, 0], dtype=np.int64))


def tap_masks(op: Emitter, layer: Layer, N: Optional[Value], Ho_Wo: Optional[Value], mask: Optional[Value]) -> list:
    """Δm of ``mask`` (N, G·K, Ho, Wo) as K values (N·G, 1, Ho, Wo) float32, or K ``None`` without a mask
    (DCNv1). Where they are dynamic, the mask is cut to X's batch ``N`` and the offset's ``Ho_Wo``."""
    K = layer.taps
    if mask is None:
        return [None] * K
    mask = sampling.cut_to(op, mask, N, Ho_Wo)
    if layer.offset_groups > 1:
        mask = op.Reshape(mask, np.array([-1, K, 0, 0], dtype=np.int64))
    return op.split(sampled(op, layer, mask), K, K, axis=1)


def bilinear_samples(op: Emitter, images: Value, grid: Value) -> Value:
    """Bilinear samples of ``images`` (N·G, C/G, H, W) float32 at ``grid`` (N·G, h, w, 2), zero outside:
    (N·G, C/G, h, w)."""
    mode = "linear" if op.opset >= 20 else "bilinear"
    return op.GridSample(images, grid, align_corners=0, mode=mode, padding_mode="zeros")


def tap_samples(op: Emitter, layer: Layer, images: Value, grid: Value, mask: Optional[Value]) -> Value:
    """x(p) · Δm_k of one tap for every channel: (N·G, C/G, Ho, Wo) float32 (:func:`as_channels` makes it
    (N, C, Ho, Wo)), from ``images`` (N·G, C/G, H, W) float32, its ``grid`` (N·G, Ho, Wo, 2) and its ``mask``
    (N·G, 1, Ho, Wo) float32."""
    samples = bilinear_samples(op, images, grid)
    return samples if mask is None else op.Mul(samples, mask)


def as_channels(op: Emitter, layer: Layer, samples: Value) -> Value:
    """``samples`` (N·G, C/G, Ho, Wo) as (N, C, Ho, Wo)."""
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
    return op.split(sampled(op, layer, op.Reshape(W, np.array([O, C_R, K, 1], dtype=np.int64))), K, K, axis=2)


def _bias(op: Emitter, layer: Layer, B: Value) -> Value:
    """``B`` (O) as float32; folded when known."""
    known = op.known(B)
    return known.astype(np.float32) if known is not None else sampled(op, layer, B)


#: The per-tap 1x1 ``Conv``'s attributes besides ``group``, all written out.
_ONE_BY_ONE = {"kernel_shape": [1, 1], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0]}


def deform_conv2d(op: Emitter, layer: Layer, X: Value, W: Value, offset: Value, B: Optional[Value] = None,
                  mask: Optional[Value] = None) -> Value:
    """Y (N, O, Ho, Wo) of ``X`` (N, C, H, W), ``W`` (O, C/R, kH, kW), ``offset`` (N, 2·G·K, Ho, Wo), optional
    ``B`` (O) and ``mask`` (N, G·K, Ho, Wo) (``None``: DCNv1): Σ_k Conv1x1(W_k, samples of tap k)."""
    X_shape = op.Shape(X) if sampling.dynamic(layer.batch, *layer.input_size) else None
    N = sampling.dims(op, X_shape, 0, 1) if sampling.dynamic(layer.batch) else None
    offset = sampling.with_batch_of(op, N, offset)
    Ho_Wo = sampling.output_size(op, offset) if sampling.dynamic(*layer.output_size) else None
    delta = tap_offsets(op, layer, offset)
    images = sampled_images(op, layer, X)
    p0, halves = output_positions(op, layer, Ho_Wo), half_sizes(op, layer, X_shape)
    w_k = tap_weights(op, layer, W)
    kept = sampling.kept(w_k)
    values = grid_values(op, layer, delta, p0, halves)
    Y = None
    for tap_grid, tap_mask, weights, keep in zip(grids(op, layer, values), tap_masks(op, layer, N, Ho_Wo, mask),
                                                 w_k, kept):
        if not keep:
            continue
        first_tap_bias = [_bias(op, layer, B)] if Y is None and B is not None else []
        product = as_channels(op, layer, tap_samples(op, layer, images, tap_grid, tap_mask))
        if first_tap_bias or not sampling.passes_through(weights, layer.groups):
            # every attribute written: onnxruntime-web's WebGPU (JSEP) Conv applies no ONNX defaults
            product = op.Conv(product, weights, *first_tap_bias, group=layer.groups, **_ONE_BY_ONE)
        Y = product if Y is None else op.Add(Y, product)
    return in_dtype(op, layer, Y)
