"""InternImage's DCNv3 core and FlashInternImage's DCNv4 core as ONNX functions (``dcn_onnxscript.dcnv3``,
``dcn_onnxscript.dcnv4``): the standalone form of :mod:`dcn_onnxscript.lowering.dcnv3`, dynamic in every
size and attribute.

A core is the deform_conv2d layer it equals (see :mod:`dcn_onnxscript.lowering.dcnv3`): groups = offset
groups = G, a weight that passes every channel of a group to itself (zero at a removed centre), and the
offsets and masks read from the core's channels-last layout into deform_conv2d's order, the offsets scaled
around the kernel's centre. Each function computes that weight, the channel of every tap and the offset
shift from its attributes with ONNX ops, then runs the body of :func:`~.grid_sample.deform_conv2d_no_bias`
(``GridSample`` in chunks, every guarantee of it: hostile offsets count zero).

Attributes: upstream's flat ones, ``kernel_h``, ``kernel_w``, ``stride_h``, ``stride_w``, ``pad_h``,
``pad_w``, ``dilation_h``, ``dilation_w``, ``group``, ``offset_scale``, ``remove_center`` (0 or 1), and
``group_channels``, which only names the layout: the channels per group are read from ``input``'s shape.

Notation: G groups, K = kH·kW taps in deform_conv2d's row-major order k = kh·kW + kw, P points of the core
(K, less the centre with ``remove_center``), ordered column-major over the kernel, p = kw·kH + kh.
"""

from __future__ import annotations

from onnx.helper import make_tensor
from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op

from dcn_onnxscript.lowering.script.common import Dim, Floats, Ints, T, dcn
from dcn_onnxscript.lowering.script.grid_sample import _int, _modulation, _pixel_grid, _product
from dcn_onnxscript.lowering.script.protos import flatten


@script(dcn, default_opset=op)
def _pair(h: int, w: int) -> Ints:
    """The attributes ``h`` and ``w`` as INT64 (2,)."""
    return op.Concat(_int(value=h), _int(value=w), axis=0)


@script(dcn, default_opset=op)
def _tap_points(kernel: Ints, remove_center: Dim):
    """(point, kept) of every tap k: point INT64 (K,), the core's point p of the tap (0 for a removed centre,
    whose weight is zero), and kept FLOAT (K,), 0 at a removed centre, 1 elsewhere. ``kernel`` = (kH, kW),
    ``remove_center`` INT64 (1,), 0 or 1."""
    kH = op.Slice(kernel, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    kW = op.Slice(kernel, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    taps = op.Reshape(_pixel_grid(kernel), op.Constant(value_ints=[2, -1]))  # (2, K): (kh, kw) of every tap
    kh = op.Gather(taps, op.Constant(value_int=0), axis=0)
    kw = op.Gather(taps, op.Constant(value_int=1), axis=0)
    two = op.Constant(value_ints=[2])
    point = kw * kH + kh  # column-major, with the centre
    centre = op.Div(kW, two) * kH + op.Div(kH, two)
    # 0/1 in INT64 rather than BOOL: onnxruntime-web's JSEP has no And or Not kernel (they would run on the CPU)
    removed = op.Cast(op.Equal(point, centre), to=INT64.dtype) * remove_center  # (K,)
    after = op.Cast(op.Greater(point, centre), to=INT64.dtype) * remove_center  # later points move down one
    kept = op.Constant(value_ints=[1]) - removed
    return (point - after) * kept, op.Cast(kept, to=FLOAT.dtype)


@script(dcn, default_opset=op)
def _offset_channels(point: Ints, G: Dim, stride: Dim) -> Ints:
    """INT64 (2·G·K,): the core's channel of deform_conv2d's offset channel (g·K + k)·2 + a (a = 0: Δy, 1: Δx),
    the core's (Δx, Δy) of point p of group g lying at g·``stride`` + 2p and + 1."""
    g = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(G), op.Constant(value_int=1)),
                   op.Constant(value_ints=[-1, 1, 1]))  # (G, 1, 1)
    p = op.Reshape(point, op.Constant(value_ints=[1, -1, 1]))  # (1, K, 1)
    y_x = op.Constant(value_ints=[1, 0])  # deform_conv2d's (Δy, Δx) at the core's + 1, + 0
    channels = g * stride + p * op.Constant(value_ints=[2]) + y_x  # (G, K, 2)
    return op.Reshape(channels, op.Constant(value_ints=[-1]))


@script(dcn, default_opset=op)
def _mask_channels(point: Ints, G: Dim, stride: Dim, start: Dim) -> Ints:
    """INT64 (G·K,): the core's channel of deform_conv2d's mask channel g·K + k, the core's mask of point p of
    group g lying at g·``stride`` + ``start`` + p."""
    g = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(G), op.Constant(value_int=1)),
                   op.Constant(value_ints=[-1, 1]))  # (G, 1)
    channels = g * stride + start + op.Reshape(point, op.Constant(value_ints=[1, -1]))  # (G, K)
    return op.Reshape(channels, op.Constant(value_ints=[-1]))


@script(dcn, default_opset=op)
def _kernel_shift(kernel: Ints, dilations: Ints, offset_scale: float) -> Floats:
    """(i·dilation − c)·(offset_scale − 1) of every tap and axis, c = ⌊dilation·(k − 1) / 2⌋: FLOAT (K·2,),
    ordered (k, [y, x]), what turns a core's offset into deform_conv2d's (:mod:`dcn_onnxscript.lowering.dcnv3`)."""
    per_axis = op.Constant(value_ints=[-1, 1, 1])
    c = op.Div(dilations * (kernel - op.Constant(value_ints=[1])), op.Constant(value_ints=[2]))
    grid = _pixel_grid(kernel) * op.Reshape(dilations, per_axis) - op.Reshape(c, per_axis)  # (2, kH, kW)
    y_x = op.Transpose(op.Reshape(grid, op.Constant(value_ints=[2, -1])), perm=[1, 0])  # (K, 2)
    scale = op.Constant(value_float=offset_scale)
    return op.Reshape(op.Cast(y_x, to=FLOAT.dtype), op.Constant(value_ints=[-1])) * (
        scale - op.Constant(value_float=1.0))


@script(dcn, default_opset=op)
def _identity_weight(input: T, G: Dim, kernel: Ints, kept: Floats) -> T:
    """W (G·Cg, Cg, kH, kW) of ``input``'s type: 1 where an output channel reads its own input channel at a
    ``kept`` tap (K,), 0 elsewhere; Cg = C / G of ``input`` (N, H, W, C)."""
    Cg = op.Div(op.Shape(input, start=3, end=4), G)
    square = op.ConstantOfShape(op.Concat(Cg, Cg, axis=0), value=make_tensor("zero", FLOAT.dtype, [1], [0.0]))
    eye = op.Reshape(op.EyeLike(square), op.Concat(Cg, Cg, op.Constant(value_ints=[1, 1]), axis=0))
    per_group = eye * op.Reshape(kept, op.Concat(op.Constant(value_ints=[1, 1]), kernel, axis=0))
    return op.CastLike(op.Tile(per_group, op.Concat(G, op.Constant(value_ints=[1, 1, 1]), axis=0)), input)


@script(dcn, default_opset=op)
def _core(
    input: T, offset: T, mask: T, offset_stride: Dim, mask_stride: Dim, mask_start: Dim, point: Ints,
    kept: Floats, kernel: Ints, strides: Ints, pads: Ints, dilations: Ints, G: Dim, offset_scale: float,
) -> T:
    """The core's output (N, Ho, Wo, G·Cg) of ``input`` (N, H, W, G·Cg), ``offset`` (N, Ho, Wo, D) and ``mask``
    (N, Ho, Wo, D'), the core's offsets of group g at g·``offset_stride``, its masks at g·``mask_stride`` +
    ``mask_start``; ``point``, ``kept`` from :func:`_tap_points`; ``kernel``, ``strides``, ``dilations``,
    ``pads`` (h, w) pairs (``pads`` (4,), begin pads first)."""
    delta = op.Gather(op.Transpose(op.Cast(offset, to=FLOAT.dtype), perm=[0, 3, 1, 2]),
                      _offset_channels(point, G, offset_stride), axis=1)  # (N, 2·G·K, Ho, Wo)
    shift = op.Tile(_kernel_shift(kernel, dilations, offset_scale=offset_scale), G)  # (2·G·K,)
    scaled = delta * op.Constant(value_float=offset_scale) + op.Reshape(shift, op.Constant(value_ints=[-1, 1, 1]))
    m = op.Gather(op.Transpose(mask, perm=[0, 3, 1, 2]), _mask_channels(point, G, mask_stride, mask_start), axis=1)
    W = _identity_weight(input, G, kernel, kept)
    X = op.Transpose(input, perm=[0, 3, 1, 2])
    Y = _product(X, W, scaled, _modulation(m, kernel, scaled), strides, pads, dilations, G)  # (N, C, Ho, Wo)
    return op.Transpose(Y, perm=[0, 2, 3, 1])


@script(dcn, default_opset=op)
def dcnv3(
    input: T,
    offset: T,
    mask: T,
    kernel_h: int = 3,
    kernel_w: int = 3,
    stride_h: int = 1,
    stride_w: int = 1,
    pad_h: int = 1,
    pad_w: int = 1,
    dilation_h: int = 1,
    dilation_w: int = 1,
    group: int = 4,
    group_channels: int = 16,
    offset_scale: float = 1.0,
    remove_center: int = 0,
) -> T:
    """InternImage's DCNv3 core.

    ``input`` (N, H, W, group·group_channels), channels last; ``offset`` (N, Ho, Wo, group·P·2), (Δx, Δy) of
    point p of group g at channels (g·P + p)·2 and + 1; ``mask`` (N, Ho, Wo, group·P), point p of group g at
    g·P + p (softmax-normalised by the module); returns (N, Ho, Wo, group·group_channels).
    """
    kernel = _pair(h=kernel_h, w=kernel_w)
    point, kept = _tap_points(kernel, _int(value=remove_center))
    P = op.ReduceSum(op.Cast(kept, to=INT64.dtype), keepdims=1)
    pads = op.Concat(_pair(h=pad_h, w=pad_w), _pair(h=pad_h, w=pad_w), axis=0)
    return _core(input, offset, mask, P * op.Constant(value_ints=[2]), P, op.Constant(value_ints=[0]), point, kept,
                 kernel, _pair(h=stride_h, w=stride_w), pads, _pair(h=dilation_h, w=dilation_w), _int(value=group),
                 offset_scale=offset_scale)


@script(dcn, default_opset=op)
def dcnv4(
    input: T,
    offset_mask: T,
    kernel_h: int = 3,
    kernel_w: int = 3,
    stride_h: int = 1,
    stride_w: int = 1,
    pad_h: int = 1,
    pad_w: int = 1,
    dilation_h: int = 1,
    dilation_w: int = 1,
    group: int = 4,
    group_channels: int = 16,
    offset_scale: float = 1.0,
    remove_center: int = 0,
) -> T:
    """FlashInternImage's DCNv4 core: DCNv3's sampling, offsets and masks in one tensor, masks not normalised.

    ``input`` (N, H, W, group·group_channels), channels last; ``offset_mask`` (N, Ho, Wo, D), D ≥ group·P·3
    (DCNv4's module pads it to a multiple of 8): group g's 3P channels start at g·3P, (Δx, Δy) of point p at
    2p and 2p + 1, then the P masks at 2P + p; returns (N, Ho, Wo, group·group_channels).
    """
    kernel = _pair(h=kernel_h, w=kernel_w)
    point, kept = _tap_points(kernel, _int(value=remove_center))
    P = op.ReduceSum(op.Cast(kept, to=INT64.dtype), keepdims=1)
    pads = op.Concat(_pair(h=pad_h, w=pad_w), _pair(h=pad_h, w=pad_w), axis=0)
    return _core(input, offset_mask, offset_mask, P * op.Constant(value_ints=[3]), P * op.Constant(value_ints=[3]),
                 P * op.Constant(value_ints=[2]), point, kept, kernel, _pair(h=stride_h, w=stride_w), pads,
                 _pair(h=dilation_h, w=dilation_w), _int(value=group), offset_scale=offset_scale)


for _public in (dcnv3, dcnv4):
    flatten(_public)
