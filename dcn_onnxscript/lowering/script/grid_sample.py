"""Deformable convolution v1/v2 as ONNX functions that sample the input through ONNX ``GridSample``.

The "grid_sample" lowering of ``register(impl="grid_sample")``: the same equation, inputs and attributes as
:mod:`dcn_onnxscript.functions` (``DeformConv``-19), and the same domain, but the bilinear sampling
x(p_0 + p_k + Δp_k) is one ``GridSample`` (opset ≥ 16) per model instead of index arithmetic and
``Gather``. Runtimes with a fast ``GridSample`` kernel then do the sampling in native code.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

Steps: p = p_0 + p_k + Δp_k (the step helpers of :mod:`dcn_onnxscript.functions`); samples with no
in-image neighbour moved to a finite point outside the image; the grid normalised for
``align_corners=0``; ``GridSample`` (bilinear, zeros padding: a neighbour outside the image counts zero,
as in torchvision) of X split per offset group; mask modulation; one ``MatMul`` per conv group; bias.

The sampled columns stay in X's channel order, (N, C, K, P), so both the mask (N, G, 1, K, P) and the
grouped matmul (N, R, C/R·K, P) read them through a ``Reshape``: the large tensor is never transposed,
whatever the conv groups R and offset groups G (a conv group may span several offset groups and vice
versa). Notation: P = Ho·Wo, K = kH·kW, G = offset_group, R = group.

Public functions, one per combination of the optional inputs as in :mod:`dcn_onnxscript.functions`:
:func:`deform_conv2d_grid_sample`, :func:`deform_conv2d_grid_sample_no_bias`,
:func:`deform_conv2d_grid_sample_no_mask` and :func:`deform_conv2d_grid_sample_no_bias_no_mask`.
"""

from __future__ import annotations

from typing import Sequence

from onnxscript import opset18 as op
from onnxscript import script

from dcn_onnxscript.lowering import grid_sample as lowering_grid_sample
from dcn_onnxscript.lowering.script.gather import (
    Dim,
    Ints,
    T,
    _add_bias,
    _inside,
    _kernel_grid,
    _offset_yx,
    _output_grid,
    dcn,
)
from dcn_onnxscript.lowering.script.protos import flatten

#: ``GridSample`` (opset 16) is the first op of this lowering that older opsets lack.
MIN_OPSET = lowering_grid_sample.MIN_OPSET


@script(dcn, default_opset=op)
def _normalised(p: T, size: Dim) -> T:
    """Pixel coordinates ``p`` (any shape) along an axis of ``size`` pixels as ``GridSample``'s
    ``align_corners=0`` coordinates: (2·p + 1) / size - 1, which maps pixel centres into (-1, 1) and, unlike
    align_corners=1, needs no division by size - 1 (1-pixel inputs work). Same shape as ``p``."""
    one = op.CastLike(1, p)
    return (p + p + one) / op.CastLike(size, p) - one


@script(dcn, default_opset=op)
def _sampling_grid(X: T, offset: T, kH: Dim, kW: Dim, strides: Ints, pads: Ints, dilations: Ints, G: Dim) -> T:
    """``GridSample``'s grid for every sample p = p_0 + p_k + Δp_k.

    ``X`` (N, C, H, W), ``offset`` (N, 2·G·K, Ho, Wo). Returns (N·G, K, P, 2), last axis (x, y) normalised
    by :func:`_normalised`. A sample with no in-image neighbour (NaN, ±Inf and huge offsets included)
    contributes zero; moving it to pixel (-2, -2), where both neighbours along each axis lie outside the
    image, keeps that true and keeps non-finite and huge values out of ``GridSample``.
    """
    H = op.Shape(X, start=2, end=3)
    W = op.Shape(X, start=3, end=4)
    Ho = op.Shape(offset, start=2, end=3)
    Wo = op.Shape(offset, start=3, end=4)
    p0_y, p0_x = _output_grid(Ho, Wo, strides, pads)
    pk_y, pk_x = _kernel_grid(kH, kW, dilations)
    dy, dx = _offset_yx(offset, G, kH * kW)  # (N, G, P, K)
    y = op.CastLike(p0_y + pk_y, dy) + dy
    x = op.CastLike(p0_x + pk_x, dx) + dx

    inside = _inside(y, x, H, W)
    far_outside = op.CastLike(-2, y)
    grid_y = _normalised(op.Where(inside, y, far_outside), H)
    grid_x = _normalised(op.Where(inside, x, far_outside), W)
    xy = op.Concat(op.Unsqueeze(grid_x, [-1]), op.Unsqueeze(grid_y, [-1]), axis=-1)  # (N, G, P, K, 2)
    # Taps before positions, so that the sampled columns come out as (K, P) and feed MatMul as they are;
    # this transposes the offset-sized grid, not the C/G-times larger columns.
    taps_first = op.Transpose(xy, perm=[0, 1, 3, 2, 4])
    return op.Reshape(taps_first, op.Concat([-1], kH * kW, Ho * Wo, [2], axis=0))


@script(dcn, default_opset=op)
def _sampled_columns(
    X: T, W: T, offset: T, strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
    offset_group: int,
) -> T:
    """x(p_0 + p_k + Δp_k) for every channel, tap and output position.

    ``X`` (N, C, H, W), ``W`` (O, C/R, kH, kW) (read for kH and kW only), ``offset`` (N, 2·G·K, Ho, Wo).
    ``X`` is split per offset group, (N·G, C/G, H, W), and sampled bilinearly at the group's grid
    (N·G, K, P, 2). Returns the columns (N, G, C/G, K, P), i.e. X's channel order.
    """
    G = op.Reshape(op.Constant(value_int=offset_group), [1])
    kH = op.Shape(W, start=2, end=3)
    kW = op.Shape(W, start=3, end=4)
    grid = _sampling_grid(X, offset, kH, kW, op.Constant(value_ints=strides), op.Constant(value_ints=pads),
                          op.Constant(value_ints=dilations), G)
    N = op.Shape(X, start=0, end=1)
    per_group = op.Div(op.Shape(X, start=1, end=2), G)
    by_offset_group = op.Reshape(X, op.Concat([-1], per_group, op.Shape(X, start=2, end=4), axis=0))
    sampled = op.GridSample(by_offset_group, grid, align_corners=0, mode="bilinear", padding_mode="zeros")
    return op.Reshape(sampled, op.Concat(N, G, per_group, op.Shape(grid, start=1, end=3), axis=0))


@script(dcn, default_opset=op)
def _modulated(columns: T, mask: T) -> T:
    """Δm_k: ``columns`` (N, G, C/G, K, P) times ``mask`` (N, G·K, Ho, Wo), broadcast over the channels."""
    per_group = op.Concat(op.Shape(columns, start=0, end=2), [1], op.Shape(columns, start=3, end=5), axis=0)
    return columns * op.Reshape(mask, per_group)


@script(dcn, default_opset=op)
def _grouped_product(columns: T, W: T, offset: T, group: int) -> T:
    """Σ_c Σ_k w · columns per conv group: ``columns`` (N, G, C/G, K, P) in X's channel order, ``W``
    (O, C/R, kH, kW), ``offset`` (read for Ho and Wo only). One batched ``MatMul`` of W as
    (R, O/R, C/R·K) with the columns as (N, R, C/R·K, P), both plain reshapes; returns (N, O, Ho, Wo)."""
    R = op.Reshape(op.Constant(value_int=group), [1])
    N = op.Shape(columns, start=0, end=1)
    O = op.Shape(W, start=0, end=1)
    w = op.Reshape(W, op.Concat(R, op.Div(O, R), [-1], axis=0))
    per_conv_group = op.Reshape(columns, op.Concat(N, R, [-1], op.Shape(columns, start=4, end=5), axis=0))
    product = op.MatMul(w, per_conv_group)  # (N, R, O/R, P)
    return op.Reshape(product, op.Concat(N, O, op.Shape(offset, start=2, end=4), axis=0))


@script(dcn, default_opset=op)
def deform_conv2d_grid_sample_no_bias_no_mask(
    X: T,
    W: T,
    offset: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """:func:`deform_conv2d_grid_sample` with ``B`` and ``mask`` omitted (DCNv1 without bias): ``X``,
    ``W``, ``offset`` as there; returns ``Y`` (N, O, Ho, Wo)."""
    columns = _sampled_columns(X, W, offset, strides=strides, pads=pads, dilations=dilations,
                               offset_group=offset_group)
    return _grouped_product(columns, W, offset, group=group)


@script(dcn, default_opset=op)
def deform_conv2d_grid_sample_no_bias(
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
    """:func:`deform_conv2d_grid_sample` with ``B`` omitted (DCNv2 without bias): ``X``, ``W``, ``offset``,
    ``mask`` as there; returns ``Y`` (N, O, Ho, Wo)."""
    columns = _sampled_columns(X, W, offset, strides=strides, pads=pads, dilations=dilations,
                               offset_group=offset_group)
    return _grouped_product(_modulated(columns, mask), W, offset, group=group)


@script(dcn, default_opset=op)
def deform_conv2d_grid_sample_no_mask(
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
    """:func:`deform_conv2d_grid_sample` with ``mask`` omitted (DCNv1 with bias): ``X``, ``W``, ``offset``,
    ``B`` as there; returns ``Y`` (N, O, Ho, Wo)."""
    Y = deform_conv2d_grid_sample_no_bias_no_mask(X, W, offset, strides=strides, pads=pads,
                                                  dilations=dilations, group=group, offset_group=offset_group)
    return _add_bias(Y, B)


@script(dcn, default_opset=op)
def deform_conv2d_grid_sample(
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
    """Modulated deformable convolution (DCNv2) with bias through ``GridSample``; inputs and attributes as
    ``DeformConv``-19 and :func:`dcn_onnxscript.functions.deform_conv2d`.

    ``X`` (N, C, H, W), ``W`` (O, C/group, kH, kW), ``offset`` (N, 2·offset_group·kH·kW, Ho, Wo),
    ``B`` (O), ``mask`` (N, offset_group·kH·kW, Ho, Wo); returns ``Y`` (N, O, Ho, Wo).
    """
    Y = deform_conv2d_grid_sample_no_bias(X, W, offset, mask, strides=strides, pads=pads, dilations=dilations,
                                          group=group, offset_group=offset_group)
    return _add_bias(Y, B)


for _public in (deform_conv2d_grid_sample, deform_conv2d_grid_sample_no_bias, deform_conv2d_grid_sample_no_mask,
                deform_conv2d_grid_sample_no_bias_no_mask):
    flatten(_public)
