"""Deformable convolution v1/v2 as ONNX functions that sample through ``GridSample``, in chunks of output
positions: the standalone form (``dcn_onnxscript.deform_conv2d``).

The public functions mirror ONNX ``DeformConv``-19: inputs ``X`` (N, C, H, W), ``W`` (O, C/group, kH, kW),
``offset`` (N, 2·offset_group·kH·kW, Ho, Wo), ``B`` (O), ``mask`` (N, offset_group·kH·kW, Ho, Wo);
attributes ``strides``, ``pads``, ``dilations``, ``group``, ``offset_group``. A script function cannot
leave an input out, so the four combinations of the two optional inputs each get a function of their own:
:func:`deform_conv2d` (``B`` and ``mask``), :func:`deform_conv2d_no_bias`, :func:`deform_conv2d_no_mask`
and :func:`deform_conv2d_no_bias_no_mask`. Every size is read with ``Shape`` at run time (``Ho`` and ``Wo``
from ``offset``, so the end pads only matter through the offset's shape, as in ``DeformConv``; likewise the
offset groups, which the offset's 2·offset_group·kH·kW channels imply: the ``offset_group`` attribute is
there for ``DeformConv``'s signature).

The body follows the equation of the DCNv2 paper,

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k,

one helper per step: the sample positions p = p_0 + p_k + Δp_k (:func:`_positions`), ``GridSample``'s grid
of them (:func:`_grid`), Δm_k (:func:`_modulation`), and per chunk of output positions the bilinear
sampling x(p) of every channel and tap by one ``GridSample``, times Δm_k, and the grouped matmul with the
weights (:func:`_chunk_product`); the chunks concatenated, the bias added.

Why chunks: the sampled columns (N, C, K, P) are as large as an im2col buffer of the whole batch, and the
masked copy doubles that. Cut into :data:`CHUNKS` chunks of output positions, they only ever exist for one
chunk, so peak memory stays near a native ``DeformConv`` kernel's (which holds one image's im2col buffer)
however large the batch. More chunks would cut memory further but cost 4 nodes each, fewer would hold
more: 8 chunks peak at 1.33x native on a batch of 4 (L2 of ``benchmarks/standalone.py``), 12 at 1.09x,
with latency alike. The chunks are unrolled (a ``Loop`` would be shorter but runs on fewer runtimes); they
have equal sizes: the positions are padded to a multiple of :data:`CHUNKS` with samples far outside the
image (none is empty, which OpenVINO's CPU plugin cannot take), and the padding's outputs are dropped at
the end.

Precision: the positions, the sampling and the matmul run in float32 whatever the inputs' type, and ``Y``
is cast back to it: onnxruntime's ``GridSample`` before opset 20 has a float32 kernel only (float16
inputs would be cast to float32 by onnxruntime anyway). float64 inputs therefore give float32-accurate
results; the "gather" functions (:mod:`.gather`) compute in float64.

Why every input is safe: a sample with no in-image neighbour (NaN, ±Inf and huge offsets included) is
moved to a finite point outside the image before ``GridSample``, whose zeros padding then makes it count
zero, as in torchvision; ``GridSample`` never reads outside its input.

Notation: P = Ho·Wo output positions, K = kH·kW taps, G = offset_group, R = group.
"""

from __future__ import annotations

from typing import Sequence

from onnx.helper import make_tensor
from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op

from dcn_onnxscript.lowering.script.common import Floats, Ints, T, dcn
from dcn_onnxscript.lowering.script.protos import flatten

#: Chunks of output positions (see the module docstring); the unrolled calls in :func:`_product` are as many.
CHUNKS = 12
#: Chunks per half: :func:`_chunks` cuts the positions in two halves of six (a Split binds at most 8 buffers).
_PER_HALF = 6
#: ``GridSample``'s coordinate of a sample that reads nothing: one with no in-image neighbour along an axis, and
#: the positions that pad the last chunk. -3 lies at least 1.5 pixels before the first pixel (-1 is the first
#: pixel's outer edge), so its samples are zero.
_NOWHERE = -3.0
_PADDING = -3.0


@script(dcn, default_opset=op)
def _pixel_grid(sizes: Ints) -> Ints:
    """(i, j) of every cell of an a x b grid, ``sizes`` = (a, b): INT64 (2, a, b)."""
    ones = op.ConstantOfShape(op.Concat(op.Constant(value_ints=[1]), sizes, axis=0),
                              value=make_tensor("one", INT64.dtype, [1], [1]))  # (1, a, b)
    return op.Concat(op.CumSum(ones, 1, exclusive=1), op.CumSum(ones, 2, exclusive=1), axis=0)


@script(dcn, default_opset=op)
def _positions(offset: T, kernel: Ints, strides: Ints, pads: Ints, dilations: Ints) -> Floats:
    """p = p_0 + p_k + Δp_k of every sample: FLOAT (2, N·G, K, P), (y, x) on axis 0.

    ``offset`` (N, 2·G·K, Ho, Wo), channels ordered (g, k, [Δy, Δx]) as in torchvision and ``DeformConv``;
    ``kernel`` = (kH, kW); ``strides``, ``dilations``: (2,); ``pads``: (4,), begin pads first. p_0 + p_k
    (2, 1, K, P) is computed in integers, i·s - pad + j·d from the grids of :func:`_pixel_grid`. (y, x) lie
    on the first axis, not the last: broadcasting a per-axis value over the positions then runs over
    contiguous rows (onnxruntime is ten times slower when the broadcast axis of 2 is the innermost).
    """
    per_axis = op.Constant(value_ints=[-1, 1, 1])  # (2,) -> (2, 1, 1)
    begin = op.Slice(pads, op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
    Ho_Wo = op.Shape(offset, start=2, end=4)
    p0 = _pixel_grid(Ho_Wo) * op.Reshape(strides, per_axis) - op.Reshape(begin, per_axis)  # (2, Ho, Wo)
    pk = _pixel_grid(kernel) * op.Reshape(dilations, per_axis)  # (2, kH, kW)
    base = op.Reshape(pk, op.Constant(value_ints=[2, 1, -1, 1])) + op.Reshape(p0, op.Constant(
        value_ints=[2, 1, 1, -1]))  # (2, 1, K, P)
    K = op.ReduceProd(kernel, keepdims=1)
    P = op.ReduceProd(Ho_Wo, keepdims=1)
    per_tap = op.Reshape(op.Cast(offset, to=FLOAT.dtype), op.Concat(op.Constant(value_ints=[-1]), K, op.Constant(
        value_ints=[2]), P, axis=0))  # (N·G, K, 2, P)
    return op.Cast(base, to=FLOAT.dtype) + op.Transpose(per_tap, perm=[2, 0, 1, 3])


@script(dcn, default_opset=op)
def _grid(p: Floats, H_W: Ints) -> Floats:
    """``GridSample``'s grid of the positions ``p`` (2, N·G, K, P), (y, x) on axis 0, in an image of
    ``H_W`` = (H, W) pixels: (N·G, K, P, 2), pairs (x, y), in ``align_corners=0`` units
    (2·p + 1) / size - 1, which, unlike align_corners=1, needs no division by size - 1 (1-pixel images
    work).

    A coordinate outside (-1, size), where the sample has no in-image neighbour (NaN, ±Inf and huge values
    included: every comparison with NaN is false), moves to :data:`_NOWHERE`: the sample still counts zero,
    and no non-finite or huge value reaches ``GridSample``. Outside (-1, size) is |g| ≥ 1 + 1/size for the
    grid coordinate g: one comparison rather than two and an ``And``, which onnxruntime-web's JSEP has no
    kernel for (it would run on the CPU).
    """
    size = op.Reshape(op.Cast(H_W, to=FLOAT.dtype), op.Constant(value_ints=[-1, 1, 1, 1]))  # (2, 1, 1, 1)
    reciprocal = op.Reciprocal(size)
    g = p * (reciprocal + reciprocal) + (reciprocal - op.Constant(value_float=1.0))
    inside = op.Less(op.Abs(g), reciprocal + op.Constant(value_float=1.0))
    x_y = op.Gather(op.Where(inside, g, op.Constant(value_float=_NOWHERE)), op.Constant(value_ints=[1, 0]), axis=0)
    return op.Transpose(x_y, perm=[1, 2, 3, 0])


@script(dcn, default_opset=op)
def _modulation(mask: T, kernel: Ints, offset: T) -> Floats:
    """Δm_k: ``mask`` (N, G·K, Ho, Wo) as FLOAT (N·G, 1, K, P), to broadcast over the sampled channels."""
    K = op.ReduceProd(kernel, keepdims=1)
    P = op.ReduceProd(op.Shape(offset, start=2, end=4), keepdims=1)
    one = op.Constant(value_ints=[1])
    return op.Reshape(op.Cast(mask, to=FLOAT.dtype), op.Concat(op.Constant(value_ints=[-1]), one, K, P, axis=0))


@script(dcn, default_opset=op)
def _chunk_product(X_groups: Floats, grid: Floats, modulation: Floats, w: Floats, columns: Ints) -> Floats:
    """Σ_k Σ_c w · x(p) · Δm_k at one chunk of output positions.

    ``X_groups`` (N·G, C/G, H, W); ``grid`` (N·G, K, size, 2) from :func:`_grid`; ``modulation``
    (N·G, 1, K, size); ``w`` (R, O/R, C/R·K); ``columns`` = (N, R, C/R·K, size). One ``GridSample``
    (its defaults: bilinear, zeros padding, align_corners=0) samples every channel of the offset group at
    every tap: (N·G, C/G, K, size), X's channel order, so both the mask and the conv groups read it by
    broadcast and ``Reshape``. Returns (N, R, O/R, size).
    """
    # No attributes: GridSample-16 spells bilinear "bilinear", GridSample-20 "linear", and onnx.reference
    # knows only the latter; the defaults mean the same in both.
    sampled = op.GridSample(X_groups, grid)
    return op.MatMul(w, op.Reshape(sampled * modulation, columns))


@script(dcn, default_opset=op)
def _chunks(t: Floats, size: Ints, axis: int):
    """``t`` cut along ``axis`` into :data:`CHUNKS` chunks of ``size`` (1,) each (``t`` holds CHUNKS·size
    there): two halves, each cut into six. Every ``Split`` binds its data, its sizes and at most 6 outputs:
    WebGPU guarantees 8 storage buffers per kernel, and onnxruntime-web's JSEP asks for no more. The sizes are
    written out as an input, not as ``num_outputs``, which JSEP's ``Split`` gets wrong."""
    six = op.Constant(value_ints=[_PER_HALF])
    first, second = op.Split(t, op.Expand(size * six, op.Constant(value_ints=[2])), axis=axis)
    c0, c1, c2, c3, c4, c5 = op.Split(first, op.Expand(size, six), axis=axis)
    c6, c7, c8, c9, c10, c11 = op.Split(second, op.Expand(size, six), axis=axis)
    return c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11


@script(dcn, default_opset=op)
def _int(value: int) -> Ints:
    """The int attribute ``value`` as an INT64 (1,) tensor."""
    return op.Reshape(op.Constant(value_int=value), op.Constant(value_ints=[1]))


@script(dcn, default_opset=op)
def _product(X: T, W: T, offset: T, modulation: Floats, strides: Ints, pads: Ints, dilations: Ints, R: Ints) -> T:
    """The deformable convolution without bias, (N, O, Ho, Wo) of X's type, with Δm_k = ``modulation``
    (N·G, 1, K, P) (:func:`_modulation`, or ones for DCNv1), in :data:`CHUNKS` chunks of output positions.
    ``strides``, ``dilations`` (2,), ``pads`` (4,) as in :func:`_positions`; ``R`` (1,) the conv groups."""
    kernel = op.Shape(W, start=2, end=4)
    p = _positions(offset, kernel, strides, pads, dilations)
    grid = _grid(p, op.Shape(X, start=2, end=4))  # (N·G, K, P, 2)

    Ho_Wo = op.Shape(offset, start=2, end=4)
    P = op.ReduceProd(Ho_Wo, keepdims=1)
    # Pad P to the next multiple of CHUNKS: (-P) mod CHUNKS positions (Mod of integers takes the divisor's sign).
    padding = op.Mod(op.Neg(P), op.Constant(value_ints=[CHUNKS]))
    end_pad = op.Concat(op.Constant(value_ints=[0]), padding, axis=0)
    size = op.Div(P + padding, op.Constant(value_ints=[CHUNKS]))  # (1,): positions per chunk
    g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11 = _chunks(
        op.Pad(grid, end_pad, op.Constant(value_float=_NOWHERE), op.Constant(value_ints=[2])), size, axis=2)
    m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11 = _chunks(
        op.Pad(modulation, end_pad, None, op.Constant(value_ints=[3])), size, axis=3)  # pads 0

    N = op.Shape(X, start=0, end=1)
    O = op.Shape(W, start=0, end=1)
    minus_one = op.Constant(value_ints=[-1])
    # N·G as the offset's shape has it: offset_group is implied by it (2·G·K channels).
    X_groups = op.Reshape(op.Cast(X, to=FLOAT.dtype), op.Concat(
        op.Shape(grid, start=0, end=1), minus_one, op.Shape(X, start=2, end=4), axis=0))
    w = op.Reshape(op.Cast(W, to=FLOAT.dtype), op.Concat(R, op.Div(O, R), minus_one, axis=0))
    columns = op.Concat(N, R, minus_one, op.Shape(g0, start=2, end=3), axis=0)  # every chunk's size
    # Joined as the chunks were cut, two halves of six: a Concat of 12 would bind 13 storage buffers (WebGPU: 8).
    first = op.Concat(
        _chunk_product(X_groups, g0, m0, w, columns), _chunk_product(X_groups, g1, m1, w, columns),
        _chunk_product(X_groups, g2, m2, w, columns), _chunk_product(X_groups, g3, m3, w, columns),
        _chunk_product(X_groups, g4, m4, w, columns), _chunk_product(X_groups, g5, m5, w, columns), axis=3)
    second = op.Concat(
        _chunk_product(X_groups, g6, m6, w, columns), _chunk_product(X_groups, g7, m7, w, columns),
        _chunk_product(X_groups, g8, m8, w, columns), _chunk_product(X_groups, g9, m9, w, columns),
        _chunk_product(X_groups, g10, m10, w, columns), _chunk_product(X_groups, g11, m11, w, columns), axis=3)
    product = op.Concat(first, second, axis=3)  # (N, R, O/R, CHUNKS·size)
    # Cast back before the Slice: onnxruntime drops a cast to the same type, but not one that writes Y.
    Y = op.Slice(op.CastLike(product, X), op.Constant(value_ints=[0]), P, op.Constant(value_ints=[3]))
    return op.Reshape(Y, op.Concat(N, O, Ho_Wo, axis=0))


@script(dcn, default_opset=op)
def _unit_modulation(offset: T) -> Floats:
    """Δm_k = 1 for DCNv1: FLOAT (1, 1, 1, P) of ones, which broadcasts like :func:`_modulation` and splits
    into chunks alike."""
    P = op.ReduceProd(op.Shape(offset, start=2, end=4), keepdims=1)
    return op.ConstantOfShape(op.Concat(op.Constant(value_ints=[1, 1, 1]), P, axis=0),
                              value=make_tensor("one", FLOAT.dtype, [1], [1.0]))


@script(dcn, default_opset=op)
def _add_bias(Y: T, B: T) -> T:
    """``Y`` (N, O, Ho, Wo) + ``B`` (O) per output channel."""
    return Y + op.Reshape(B, op.Constant(value_ints=[1, -1, 1, 1]))


@script(dcn, default_opset=op)
def deform_conv2d_no_bias(
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
    """:func:`deform_conv2d` with ``B`` omitted (DCNv2 without bias): ``X``, ``W``, ``offset``, ``mask`` as
    there; returns ``Y`` (N, O, Ho, Wo)."""
    modulation = _modulation(mask, op.Shape(W, start=2, end=4), offset)
    return _product(X, W, offset, modulation, op.Constant(value_ints=strides), op.Constant(value_ints=pads),
                    op.Constant(value_ints=dilations), _int(value=group))


@script(dcn, default_opset=op)
def deform_conv2d_no_bias_no_mask(
    X: T,
    W: T,
    offset: T,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
) -> T:
    """:func:`deform_conv2d` with ``B`` and ``mask`` omitted (DCNv1 without bias): ``X``, ``W``, ``offset``
    as there; returns ``Y`` (N, O, Ho, Wo)."""
    modulation = _unit_modulation(offset)
    return _product(X, W, offset, modulation, op.Constant(value_ints=strides), op.Constant(value_ints=pads),
                    op.Constant(value_ints=dilations), _int(value=group))


@script(dcn, default_opset=op)
def deform_conv2d_no_mask(
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
    """:func:`deform_conv2d` with ``mask`` omitted (DCNv1 with bias): ``X``, ``W``, ``offset``, ``B`` as
    there; returns ``Y`` (N, O, Ho, Wo)."""
    modulation = _unit_modulation(offset)
    Y = _product(X, W, offset, modulation, op.Constant(value_ints=strides), op.Constant(value_ints=pads),
                    op.Constant(value_ints=dilations), _int(value=group))
    return _add_bias(Y, B)


@script(dcn, default_opset=op)
def deform_conv2d(
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
    modulation = _modulation(mask, op.Shape(W, start=2, end=4), offset)
    Y = _product(X, W, offset, modulation, op.Constant(value_ints=strides), op.Constant(value_ints=pads),
                    op.Constant(value_ints=dilations), _int(value=group))
    return _add_bias(Y, B)


for _public in (deform_conv2d, deform_conv2d_no_bias, deform_conv2d_no_mask, deform_conv2d_no_bias_no_mask):
    flatten(_public)
