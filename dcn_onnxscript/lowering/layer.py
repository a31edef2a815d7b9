"""What a lowering knows about one deformable layer when it writes the layer's nodes.

At export (and rewrite) time the kernel size, strides, pads, dilations, groups and channel counts are
Python ints: the lowerings unroll over them, so only the batch and image sizes are left to the graph.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional, Sequence

import numpy as np
import onnx

#: ONNX data types a deformable layer may have, with their numpy types.
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.BFLOAT16: None,  # no numpy type; constants of this type are never emitted
}


class OffsetOrder(enum.Enum):
    """The order of each tap's two offset channels: ``YX`` (Δy, Δx), deform_conv2d's and ``DeformConv``'s;
    ``XY`` (Δx, Δy), the DCNv3/DCNv4 cores' and ``GridSample``'s (the lowerings read the pairs as given, so the
    cores write no swap)."""

    YX = "yx"
    XY = "xy"

    @property
    def y(self) -> int:
        """Where Δy is in a pair: 0 or 1."""
        return self.value.index("y")

    @property
    def x(self) -> int:
        """Where Δx is in a pair: 0 or 1."""
        return self.value.index("x")

    def ordered(self, yx: Sequence) -> Sequence:
        """``yx`` (2, ...), y first (an array or a pair), with its first axis in this order."""
        return yx if self is OffsetOrder.YX else yx[::-1]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One deform_conv2d layer in ``DeformConv``-19 terms.

    ``kernel`` (kH, kW), ``stride``, ``padding`` (begin pads, h and w: the end pads only set Ho and Wo,
    which the graph reads from ``offset``), ``dilation``; ``groups`` R, ``offset_groups`` G; channels C
    (input) and O (output); ``dtype`` the ONNX data type of X; ``bias`` and ``mask``: whether B and the
    mask are given; ``offset_order``: the order of each tap's pair of offset channels. ``batch`` N,
    ``input_size`` (H, W) and ``output_size`` (Ho, Wo): the sizes known at build time (static shapes), ``None``
    where dynamic; a lowering may write constants for what they fix.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    offset_groups: int
    in_channels: int
    out_channels: int
    dtype: int = onnx.TensorProto.FLOAT
    bias: bool = True
    mask: bool = True
    offset_order: OffsetOrder = OffsetOrder.YX
    batch: Optional[int] = None
    input_size: tuple[Optional[int], Optional[int]] = (None, None)
    output_size: tuple[Optional[int], Optional[int]] = (None, None)

    @property
    def taps(self) -> int:
        """K = kH·kW."""
        return self.kernel[0] * self.kernel[1]

    @property
    def slices(self) -> int:
        """S = lcm(G, R): channel slices of C/S channels, each inside one offset group and one conv group."""
        return math.lcm(self.groups, self.offset_groups)

    @property
    def slice_channels(self) -> int:
        """Cs = C/S."""
        return self.in_channels // self.slices

    @property
    def coordinate_dtype(self) -> int:
        """The type sampling positions are computed in: float64 for float64 layers, float32 otherwise, so
        that float16 and bfloat16 layers sample as precisely as float32 ones."""
        return onnx.TensorProto.DOUBLE if self.dtype == onnx.TensorProto.DOUBLE else onnx.TensorProto.FLOAT

    def coordinates(self, values) -> np.ndarray:
        """``values`` as a numpy array of :attr:`coordinate_dtype`."""
        return np.asarray(values, dtype=FLOAT_TYPES[self.coordinate_dtype])

    def kernel_grid(self) -> np.ndarray:
        """p_k: the (Δy, Δx) of every tap from the top-left tap, shape (2, K), taps row-major."""
        rows, cols = np.meshgrid(np.arange(self.kernel[0]) * self.dilation[0],
                                 np.arange(self.kernel[1]) * self.dilation[1], indexing="ij")
        return np.stack([rows.reshape(-1), cols.reshape(-1)])
