"""The sampling positions p = p_0 + p_k + Δp_k of deformable convolution, shared by the lowerings.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

Each function writes a few nodes through an :class:`~dcn_onnxscript.lowering.emitter.Emitter` ``op``.
Positions are computed in the layer's coordinate type (float32, or float64 for float64 layers), whatever
the type of the model: a float16 model samples at float32 positions.

Sizes have one source each: N, H and W are X's, Ho and Wo the offset's. Inputs whose sizes must equal those
(the offset's batch, the mask's batch and grid) are cut to them (:func:`with_batch_of`, :func:`cut_to`): a
``Slice`` that keeps every element of a valid call, after which a runtime that types the graph symbolically
(tract) no longer has to prove two inputs' symbols equal, which it cannot (torch.export's ``Dim.AUTO``
names every input's sizes apart).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import onnx

from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer

Value = Any


def dynamic(*sizes: Optional[int]) -> bool:
    """Whether any of a layer's ``sizes`` is unknown at build time (``None``): read at run time."""
    return None in sizes


def dims(op: Emitter, shape: Value, start: int, end: int) -> Value:
    """Dimensions start … end - 1 of ``shape``, a ``Shape`` output: INT64 (end - start,). A ``Slice`` of the
    whole ``Shape`` rather than ``Shape(start=, end=)``, which onnx_tool ignores."""
    return op.Slice(shape, np.array([start]), np.array([end]))


def output_size(op: Emitter, offset: Value) -> Value:
    """(Ho, Wo) of ``offset`` (N, 2·G·K, Ho, Wo): INT64 (2,)."""
    return dims(op, op.Shape(offset), 2, 4)


def with_batch_of(op: Emitter, N: Optional[Value], value: Value) -> Value:
    """``value`` (N', …) cut to the batch ``N`` (INT64 (1,): :func:`dims` of X's ``Shape``) where the layer's
    batch is dynamic (``value`` itself where it is static: ``N`` is ``None``): N, not N', is then the batch of
    everything computed from it."""
    return value if N is None else op.Slice(value, np.array([0]), N, np.array([0]))


def cut_to(op: Emitter, value: Value, N: Optional[Value], Ho_Wo: Optional[Value],
           spatial_axes: Sequence[int] = (2, 3)) -> Value:
    """``value`` (N', C, Ho', Wo') (or channels last, (N', Ho', Wo', C), with ``spatial_axes`` [1, 2]) cut to the
    batch ``N`` (INT64 (1,)) and the sizes ``Ho_Wo`` (INT64 (2,)), each where given (dynamic): its sizes then are
    those of their sources. Only those axes are sliced, never an
    axis kept whole by an end beyond its size (onnxruntime-web's JSEP ``Slice`` gets the output's shape wrong
    when it has to clamp an end). The ends are the :func:`dims` values themselves, concatenated: Apache TVM keeps
    a ``Slice`` or ``Concat`` of a ``Shape`` as sizes, but turns a ``Gather`` of one into a tensor, after which
    the cut value's shape is unknown and TVM cannot compile the model."""
    axes = ([0] if N is not None else []) + (list(spatial_axes) if Ho_Wo is not None else [])
    ends = [size for size in (N, Ho_Wo) if size is not None]
    if not ends:
        return value
    return op.Slice(value, np.zeros(len(axes), dtype=np.int64), ends[0] if len(ends) == 1 else op.Concat(*ends, axis=0),
                    np.array(axes, dtype=np.int64))


def half_sizes(op: Emitter, layer: Layer, shape: Value, height_axis: int, axes: np.ndarray) -> Value:
    """(W/2, H/2) of an image whose ``Shape`` ``shape`` holds H at ``height_axis`` and W after it, at the places
    of ``axes`` (an int array of any shape, 0 where x's half width goes and 1 where y's half height goes), of
    the coordinate type. A float32 layer sums halves instead of casting the sizes: onnxconverter-common's
    float16 conversion retypes a ``Cast(to=FLOAT)``'s output but keeps its ``to`` (its issue 320), which a
    float32 model must therefore not have; other dtypes cast."""
    axes = np.asarray(axes)
    if layer.coordinate_dtype != layer.dtype or layer.dtype != onnx.TensorProto.FLOAT:
        sizes = op.Gather(shape, (height_axis + 1 - axes).astype(np.int64))  # x: W, y: H
        return op.Mul(op.Cast(sizes, to=layer.coordinate_dtype), layer.coordinates(0.5))
    halves = op.ConstantOfShape(dims(op, shape, height_axis, height_axis + 2), value=layer.coordinates([0.5]))
    widths, heights = op.ReduceSum(halves, np.array([1]), keepdims=0), op.ReduceSum(halves, np.array([0]), keepdims=0)
    first_and_last = (-axes).astype(np.int64)  # W/2 starts, H/2 ends (H + W,)
    return op.Gather(op.Concat(widths, heights, axis=0), first_and_last)


def first_tap(layer: Layer, shift: float) -> np.ndarray:
    """What p_0 counted from 1 (s·(o + 1), as the grid_sample lowering builds it) lacks for p_0 + p_k:
    p_k - pads - stride, plus ``shift``; shape (2, K) of the coordinate type."""
    begin = np.array(layer.padding).reshape(2, 1) + np.array(layer.stride).reshape(2, 1)
    return layer.coordinates(layer.kernel_grid() - begin + shift)


def as_coordinates(op: Emitter, layer: Layer, value: Value) -> Value:
    """``value`` (offset or mask) in the coordinate type."""
    return value if layer.coordinate_dtype == layer.dtype else op.Cast(value, to=layer.coordinate_dtype)


def kept(weights: list) -> list[bool]:
    """Which of the taps (or slice-taps) weighed by ``weights`` to write: not those whose weights are known
    (numpy arrays: folded) and all zero, which add nothing (DCNv3's removed centre); all of them where every
    one is zero (Y is still written)."""
    zero = [isinstance(w, np.ndarray) and not w.any() for w in weights]
    return [True] * len(weights) if all(zero) else [not z for z in zero]


def passes_through(weights: Any, groups: int) -> bool:
    """Whether ``weights`` are known and, as ``groups`` square blocks (``weights`` (groups·n, n, ...) or
    (n, groups·n) flattened per block), each the identity: the product by them is the samples themselves (the
    DCNv3/DCNv4 cores' weight), so the lowerings write no product."""
    if not isinstance(weights, np.ndarray) or weights.size % groups:
        return False
    n = int(round((weights.size // groups) ** 0.5))
    return n * n * groups == weights.size and np.array_equal(weights.reshape(groups, n, n),
                                                              np.broadcast_to(np.eye(n), (groups, n, n)))
