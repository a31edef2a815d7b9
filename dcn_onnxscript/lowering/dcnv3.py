"""DCNv3 (InternImage) and DCNv4 (FlashInternImage) cores, written as the deform_conv2d layer they equal.

The cores have no weights: group g of G samples its own C/G channels (``group_channels`` Cg) of the
channels-last input at P points per output position, bilinearly with zeros outside, weighs each point by its
mask value and sums over the points. Point p of group g at output position o samples (per axis)

    p = o·stride − pad + c + (i·dilation − c + Δp)·offset_scale,   c = ⌊dilation·(k − 1) / 2⌋

(i the point's kernel index, k the kernel size), as InternImage's and DCNv4's kernels compute it. With
``offset_scale`` = 1 this is deform_conv2d's p = p_0 + p_k + Δp; otherwise the kernel grid around c and the
offsets are both scaled, which is deform_conv2d with the offsets

    Δp' = Δp·offset_scale + (i·dilation − c)·(offset_scale − 1).

So a core is deform_conv2d with groups = offset_groups = G, the offsets Δp' and masks read from the core's
channels-last layout (the offset pairs left in the core's (Δx, Δy) order, :data:`OFFSET_ORDER`, which the
lowerings read as given), and a weight that passes every channel of a group to itself (W[g·Cg + a, b, kh, kw]
= 1 for a = b): the lowerings of :mod:`dcn_onnxscript.lowering.table` then write it with all their
guarantees (hostile offsets, every opset, static and dynamic sizes). ``remove_center`` leaves out the centre
point (kh // 2, kw // 2): its weight is zero. :func:`lower` writes "gather" so; "grid_sample" reads the cores'
layouts directly (:mod:`dcn_onnxscript.lowering.dcnv3_grid_sample`), the same sum.

Layouts (read from the kernels, ``dcnv3_im2col_cuda.cuh`` and ``dcnv4_im2col_cuda.cuh``): points are
ordered column-major over the kernel, p = iw·kH + ih (the centre skipped with ``remove_center``);

- DCNv3: ``input`` (N, H, W, G·Cg), ``offset`` (N, Ho, Wo, G·P·2) with (Δx, Δy) of point p of group g at
  channels (g·P + p)·2 and + 1, ``mask`` (N, Ho, Wo, G·P) at g·P + p (the module softmax-normalises it);
- DCNv4: ``offset_mask`` (N, Ho, Wo, D ≥ 3·G·P; the module's linear pads D to a multiple of 8), group g's
  3P channels from g·3P: (Δx, Δy) of point p at 2p and 2p + 1, then the P masks (not normalised) at 2P + p.

Output: (N, Ho, Wo, G·Cg).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import onnx_ir as ir

from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import FLOAT_TYPES, Layer, OffsetOrder
from dcn_onnxscript.lowering.validation import static_shape

Value = Any
#: NHWC -> NCHW and back.
_CHANNELS_FIRST, _CHANNELS_LAST = [0, 3, 1, 2], [0, 2, 3, 1]
#: The order of the offset pairs the layout steps write: the cores' own (Δx, Δy), which the lowerings read as
#: given (no pairwise swap); native ``DeformConv`` and torchvision's ``deform_conv2d`` take (Δy, Δx).
OFFSET_ORDER = OffsetOrder.XY
#: The core's offset parts (the coordinate of a pair, then the mask) by name, as :func:`_point_channel` numbers them.
_PARTS = "xym"


@dataclasses.dataclass(frozen=True)
class Core:
    """The attributes of one DCNv3 or DCNv4 core call (``version`` 3 or 4), (h, w) pairs as in upstream's
    ``kernel_h, kernel_w`` etc."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    group_channels: int
    offset_scale: float = 1.0
    remove_center: bool = False
    version: int = 3

    @property
    def channels(self) -> int:
        """C = G·Cg."""
        return self.group * self.group_channels

    @property
    def taps(self) -> int:
        """K = kH·kW, the kernel's taps (the centre included)."""
        return self.kernel[0] * self.kernel[1]

    @property
    def points(self) -> int:
        """P = K, or K − 1 with ``remove_center``."""
        return self.taps - int(self.remove_center)

    def output_size(self, size: tuple[Optional[int], Optional[int]]) -> tuple[Optional[int], Optional[int]]:
        """(Ho, Wo) for an input of (H, W) (``None`` where unknown)."""
        return tuple(None if s is None else (s + 2 * p - d * (k - 1) - 1) // st + 1
                     for s, k, st, p, d in zip(size, self.kernel, self.stride, self.padding, self.dilation))


def core_of(kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
            dilation_w: int, group: int, group_channels: int, offset_scale: float, remove_center: bool,
            version: int) -> Core:
    """The :class:`Core` of upstream's flat arguments (the ops', the exporters' and the rewriter's)."""
    return Core(kernel=(kernel_h, kernel_w), stride=(stride_h, stride_w), padding=(pad_h, pad_w),
                dilation=(dilation_h, dilation_w), group=group, group_channels=group_channels,
                offset_scale=float(offset_scale), remove_center=bool(remove_center), version=version)


def kernel_points(core: Core) -> list[tuple[int, int]]:
    """(kh, kw), the kernel index of every point in the cores' order: column-major, p = kw·kH + kh, the centre
    left out with ``remove_center``."""
    (kH, kW), centre = core.kernel, (core.kernel[0] // 2, core.kernel[1] // 2)
    return [(kh, kw) for kw in range(kW) for kh in range(kH) if not (core.remove_center and (kh, kw) == centre)]


def tap_points(core: Core) -> list[Optional[int]]:
    """The point index p of every tap k = kh·kW + kw (deform_conv2d's row-major order), ``None`` for the
    centre tap of a core with ``remove_center`` (:func:`kernel_points`)."""
    order = kernel_points(core)
    return [order.index((kh, kw)) if (kh, kw) in order else None
            for kh in range(core.kernel[0]) for kw in range(core.kernel[1])]


def _point_channel(core: Core, g: int, p: Optional[int], part: int) -> int:
    """Channel of the core's offset (part 0: Δx, 1: Δy) or mask (part 2) of point p in group g (:data:`_PARTS`);
    a removed centre (p ``None``) reads channel 0, which its zero weight cancels."""
    if p is None:
        return 0
    P = core.points
    if core.version == 3:
        return (g * P + p) * 2 + part if part < 2 else g * P + p
    return g * 3 * P + (2 * p + part if part < 2 else 2 * P + p)


def offset_channels(core: Core, order: OffsetOrder = OFFSET_ORDER) -> np.ndarray:
    """INT64 (2·G·K,): the core's channel of deform_conv2d's offset channel (g·K + k)·2 + a, coordinate a of the
    pair in ``order`` (YX: a = 0 is Δy; XY: Δx)."""
    parts = [_PARTS.index(axis) for axis in order.value]
    return np.array([_point_channel(core, g, p, parts[a]) for g in range(core.group) for p in tap_points(core)
                     for a in range(2)], dtype=np.int64)


def mask_channels(core: Core) -> np.ndarray:
    """INT64 (G·K,): the core's channel of deform_conv2d's mask channel g·K + k."""
    return np.array([_point_channel(core, g, p, 2) for g in range(core.group) for p in tap_points(core)],
                    dtype=np.int64)


def offset_shift(core: Core, order: OffsetOrder = OFFSET_ORDER) -> np.ndarray:
    """(i·dilation − c)·(offset_scale − 1) at deform_conv2d's offset channel (g·K + k)·2 + a, pairs in ``order``:
    (2·G·K,) float64."""
    per_axis = []
    for k, d in zip(core.kernel, core.dilation):
        per_axis.append(np.arange(k) * d - d * (k - 1) // 2)
    rows, cols = np.meshgrid(*per_axis, indexing="ij")
    pairs = order.ordered(np.stack([rows.reshape(-1), cols.reshape(-1)]))
    shift = pairs.T.reshape(-1) * (core.offset_scale - 1)
    return np.tile(shift, core.group).astype(np.float64)


def identity_weight(core: Core, dtype=np.float32) -> np.ndarray:
    """W (C, Cg, kH, kW): 1 where an output channel reads its own input channel, 0 elsewhere and at a
    removed centre tap."""
    per_group = np.eye(core.group_channels, dtype=dtype)[:, :, None, None] * np.ones((1, 1, *core.kernel), dtype)
    if core.remove_center:
        per_group[:, :, core.kernel[0] // 2, core.kernel[1] // 2] = 0
    return np.tile(per_group, (core.group, 1, 1, 1))


def layer(core: Core, dtype: int, batch: Optional[int], input_size: tuple[Optional[int], Optional[int]],
          output_size: tuple[Optional[int], Optional[int]]) -> Layer:
    """The deform_conv2d :class:`Layer` the core equals, for an input of ONNX type ``dtype``; ``ValueError`` for a
    type without a numpy type (bfloat16), whose constants cannot be written."""
    if FLOAT_TYPES.get(dtype) is None:
        raise ValueError(f"input must be float16, float32 or float64 to export a DCNv3/DCNv4 core, got ONNX type "
                         f"{dtype}")
    return Layer(kernel=core.kernel, stride=core.stride, padding=core.padding, dilation=core.dilation,
                 groups=core.group, offset_groups=core.group, in_channels=core.channels,
                 out_channels=core.channels, dtype=dtype, bias=False, mask=True, offset_order=OFFSET_ORDER,
                 batch=batch, input_size=input_size, output_size=output_size)


def deform_conv2d_shapes(core: Core, input_shape: Optional[tuple], offset_shape: Optional[tuple]
                         ) -> tuple[Optional[tuple], Optional[tuple], Optional[tuple]]:
    """The shapes of the deform_conv2d inputs the layout steps write, X (N, C, H, W), offset (N, 2·G·K, Ho, Wo)
    and mask (N, G·K, Ho, Wo), from the core's ``input_shape`` (N, H, W, C) and ``offset_shape`` (N, Ho, Wo, D)
    (``None`` where a rank is unknown, ``None`` inside for an unknown size)."""
    X = None if input_shape is None else tuple(input_shape[i] for i in _CHANNELS_FIRST)
    if offset_shape is None:
        return X, None, None
    N, Ho, Wo = offset_shape[:3]
    GK = core.group * core.taps
    return X, (N, 2 * GK, Ho, Wo), (N, GK, Ho, Wo)


def typed(core: Core, input: ir.Value, offset: ir.Value, X: ir.Value, delta: ir.Value, mask: ir.Value) -> None:
    """Give the layout steps' outputs ``X``, ``delta`` and ``mask`` (onnx_ir values: the rewriter's, around the
    ``DeformConv`` of ``--impl native``) the input's type and the shapes of :func:`deform_conv2d_shapes`, so that
    the node between them has its static shapes."""
    for value, shape in zip((X, delta, mask), deform_conv2d_shapes(core, static_shape(input), static_shape(offset))):
        value.dtype = input.dtype
        if shape is not None:
            value.shape = ir.Shape(list(shape))


def channels_first(op: Emitter, value: Value) -> Value:
    """(N, H, W, C) -> (N, C, H, W)."""
    return op.Transpose(value, perm=_CHANNELS_FIRST)


def channels_last(op: Emitter, value: Value) -> Value:
    """(N, C, H, W) -> (N, H, W, C)."""
    return op.Transpose(value, perm=_CHANNELS_LAST)


def deform_conv2d_offset(op: Emitter, core: Core, dtype: int, offset: Value, order: OffsetOrder = OFFSET_ORDER
                         ) -> Value:
    """deform_conv2d's offset (N, 2·G·K, Ho, Wo), pairs in ``order``, from the core's offset (or DCNv4's
    offset_mask) (N, Ho, Wo, D): the channels of :func:`offset_channels`, times offset_scale, plus
    :func:`offset_shift`."""
    delta = op.Gather(channels_first(op, offset), offset_channels(core, order), axis=1)
    if core.offset_scale == 1:
        return delta
    numpy_type = FLOAT_TYPES[dtype]
    scale = np.array(core.offset_scale, dtype=numpy_type)
    return op.Add(op.Mul(delta, scale), offset_shift(core, order).astype(numpy_type).reshape(1, -1, 1, 1))


def deform_conv2d_mask(op: Emitter, core: Core, mask: Value) -> Value:
    """deform_conv2d's mask (N, G·K, Ho, Wo) from the core's mask (or DCNv4's offset_mask) (N, Ho, Wo, D)."""
    return op.Gather(channels_first(op, mask), mask_channels(core), axis=1)


def lower(op: Emitter, core: Core, layer: Layer, input: Value, offset: Value, mask: Value, impl: str = table.AUTO
         ) -> Value:
    """The core's output (N, Ho, Wo, G·Cg) of ``input`` (N, H, W, G·Cg), ``offset`` and ``mask`` (DCNv4: both the
    ``offset_mask``) in the layouts of the module docstring, through lowering ``impl`` (resolved at ``op.opset``
    and the dtype) of the equivalent deform_conv2d ``layer`` (:func:`layer`, whose sizes are the core's static
    ones): "grid_sample" reads the cores' layouts directly (:mod:`dcn_onnxscript.lowering.dcnv3_grid_sample`),
    "gather" through the layout steps around the deform_conv2d lowering."""
    if table.resolve(impl, op.opset, layer.dtype) == "grid_sample":
        table.lowering("grid_sample", op.opset)  # the opset check
        from dcn_onnxscript.lowering import dcnv3_grid_sample

        return dcnv3_grid_sample.lower(op, core, layer, input, offset, mask)
    X = channels_first(op, input)
    W = identity_weight(core, FLOAT_TYPES[layer.dtype])
    Y = table.build(impl, op, layer, X, W, deform_conv2d_offset(op, core, layer.dtype, offset, layer.offset_order),
                    None, deform_conv2d_mask(op, core, mask))
    return channels_last(op, Y)
