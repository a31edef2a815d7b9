"""The sampling positions p = p_0 + p_k + Δp_k of deformable convolution, shared by the lowerings.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

Each function writes a few nodes through an :class:`~dcn_onnxscript.lowering.emitter.Emitter` ``op``.
Positions are computed in the layer's coordinate type (float32, or float64 for float64 layers), whatever
the type of the model: a float16 model samples at float32 positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer

Value = Any


def output_size(op: Emitter, offset: Value) -> Value:
    """(Ho, Wo) of ``offset`` (N, 2·G·K, Ho, Wo): INT64 (2,)."""
    return op.Slice(op.Shape(offset), np.array([2]), np.array([4]))


def output_grid(op: Emitter, layer: Layer, Ho_Wo: Value, shape: np.ndarray, axis: int) -> Value:
    """p_0 counted from 1: the (row, column) of every output position, 1 … Ho and 1 … Wo, times the
    stride; rows and columns each reshaped to ``shape`` (P on one axis, 1 elsewhere) and stacked along
    ``axis``. Of the coordinate type; callers add p_k, the pads and the 1 back (:func:`first_tap`)."""
    ones = op.ConstantOfShape(Ho_Wo, value=layer.coordinates([1]))
    rows = op.Reshape(op.CumSum(ones, np.array(0)), shape)
    cols = op.Reshape(op.CumSum(ones, np.array(1)), shape)
    grid = op.Concat(rows, cols, axis=axis)
    if layer.stride == (1, 1):
        return grid
    stride = np.ones(len(shape), dtype=np.int64)
    stride[axis] = 2
    return op.Mul(grid, layer.coordinates(layer.stride).reshape(stride))


def first_tap(layer: Layer, shift: float) -> np.ndarray:
    """What :func:`output_grid` lacks for p_0 + p_k: p_k - pads - stride (its count starts at 1), plus
    ``shift``; shape (2, K) of the coordinate type."""
    begin = np.array(layer.padding).reshape(2, 1) + np.array(layer.stride).reshape(2, 1)
    return layer.coordinates(layer.kernel_grid() - begin + shift)


def as_coordinates(op: Emitter, layer: Layer, value: Value) -> Value:
    """``value`` (offset or mask) in the coordinate type."""
    return value if layer.coordinate_dtype == layer.dtype else op.Cast(value, to=layer.coordinate_dtype)
