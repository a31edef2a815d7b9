"""The "grid_sample" lowering: bilinear sampling by one ONNX ``GridSample`` (opset ≥ 16), then one ``MatMul``.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

The sampled columns come out of ``GridSample`` in X's channel order, (N·G, C/G, K, P), which is already
the grouped matmul's layout: neither they nor the weights are ever transposed. A runtime with a native
``GridSample`` kernel writes the columns once, without the four-neighbour intermediate of the gather
lowering. ``GridSample`` runs in float32 for float16 and bfloat16 layers (onnxruntime's CPU kernel has no
float16 version, and none for float64 before opset 20), and so do float64 layers: their columns and matmul
are float32, their sampling positions float64 until they become the grid.

Notation as in :mod:`dcn_onnxscript.lowering.gather`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from dcn_onnxscript.lowering import sampling
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.gather import bias_per_channel
from dcn_onnxscript.lowering.layer import Layer

Value = Any

#: ``GridSample`` first appears in opset 16.
MIN_OPSET = 16
#: The type ``GridSample`` and the matmul run in: FLOAT (onnxruntime's CPU kernel has no other before
#: opset 20, and none for float16 at all).
_SAMPLED = 1


def _sampled(op: Emitter, layer: Layer, value: Value) -> Value:
    """``value`` of the layer's dtype as float32."""
    return value if layer.dtype == _SAMPLED else op.Cast(value, to=_SAMPLED)


def sampling_grid(op: Emitter, layer: Layer, offset: Value, H_W: Value, Ho_Wo: Value) -> Value:
    """``GridSample``'s grid (N·G, K, P, 2), last axis (x, y) in align_corners=0 coordinates
    (2·p + 1) / size - 1, for p = p_0 + p_k + Δp_k. A sample with no neighbour in the image (NaN, ±Inf and
    huge offsets included) is moved to pixel -2, where both its neighbours lie outside: it reads zero and
    keeps non-finite values out of ``GridSample``."""
    G, K = layer.offset_groups, layer.taps
    delta = op.Transpose(op.Reshape(offset, np.array([0, G * K, 2, -1])), perm=[0, 1, 3, 2])  # (N, GK, P, 2)
    p0 = sampling.output_grid(op, layer, Ho_Wo, np.array([1, 1, -1, 1]), axis=3)  # (1, 1, P, 2)
    pk = np.tile(sampling.first_tap(layer, shift=0.0).T, (G, 1)).reshape(1, G * K, 1, 2)
    p = op.Add(sampling.as_coordinates(op, layer, delta), op.Add(p0, pk))
    size = op.Cast(op.Reshape(H_W, np.array([1, 1, 1, 2])), to=layer.coordinate_dtype)
    inside = op.And(op.Greater(p, layer.coordinates(-1)), op.Less(p, size))
    p = op.Where(inside, p, layer.coordinates(-2))
    scale = op.Reciprocal(size)
    grid = op.Add(op.Mul(p, op.Add(scale, scale)), op.Sub(scale, layer.coordinates(1)))
    xy = op.Gather(grid, np.array([1, 0]), axis=3)
    if layer.coordinate_dtype != _SAMPLED:
        xy = op.Cast(xy, to=_SAMPLED)
    return op.Reshape(xy, np.array([-1, K, 0, 2]))


def sampled_columns(op: Emitter, layer: Layer, X: Value, grid: Value, opset: int) -> Value:
    """x(p) for every channel, tap and position: (N·G, C/G, K, P), float32."""
    per_group = op.Reshape(X, np.array([-1, layer.in_channels // layer.offset_groups, 0, 0]))
    mode = "linear" if opset >= 20 else "bilinear"
    return op.GridSample(_sampled(op, layer, per_group), grid, align_corners=0, mode=mode, padding_mode="zeros")


def modulated(op: Emitter, layer: Layer, columns: Value, mask: Value) -> Value:
    """Δm_k: ``columns`` (N·G, C/G, K, P) times ``mask`` (N, G·K, Ho, Wo), broadcast over channels."""
    G, K = layer.offset_groups, layer.taps
    per_group = op.Reshape(op.Reshape(mask, np.array([0, G, K, -1])), np.array([-1, 1, K, 0]))
    return op.Mul(columns, _sampled(op, layer, per_group))


def grouped_product(op: Emitter, layer: Layer, columns: Value, W: Value, Ho_Wo: Value) -> Value:
    """Σ_c Σ_k w · columns per conv group: W as (R, O/R, C/R·K) times the columns as (N, R, C/R·K, P);
    returns Y (N, O, Ho, Wo) in the layer's dtype."""
    R, O = layer.groups, layer.out_channels
    known = op.known(W)
    if known is not None:
        w = known.astype(np.float32).reshape(R, O // R, -1)
    else:
        w = op.Reshape(_sampled(op, layer, W), np.array([R, O // R, -1]))
    per_group = op.Reshape(columns, np.array([-1, R, layer.in_channels // R * layer.taps, 0]))
    shape = op.Concat(np.array([-1, O], dtype=np.int64), Ho_Wo, axis=0)
    Y = op.Reshape(op.MatMul(w, per_group), shape)
    return Y if layer.dtype == _SAMPLED else op.Cast(Y, to=layer.dtype)


def deform_conv2d(op: Emitter, layer: Layer, X: Value, W: Value, offset: Value, B: Optional[Value] = None,
                  mask: Optional[Value] = None) -> Value:
    """Y (N, O, Ho, Wo); arguments as :func:`dcn_onnxscript.lowering.gather.deform_conv2d`."""
    H_W, Ho_Wo = sampling.image_size(op, X), sampling.output_size(op, offset)
    columns = sampled_columns(op, layer, X, sampling_grid(op, layer, offset, H_W, Ho_Wo), op.opset)
    if mask is not None:
        columns = modulated(op, layer, columns, mask)
    Y = grouped_product(op, layer, columns, W, Ho_Wo)
    return Y if B is None else op.Add(Y, bias_per_channel(op, B))
