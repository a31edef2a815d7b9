"""The DCNv3/DCNv4 cores' "grid_sample" lowering, read straight from their channels-last layouts.

    y(p_0) = Σ_p x(p_0 + p_p + Δp_p) · Δm_p          per group, over its P points

A core has no weights: each group samples its own channels at its P points and sums them weighed by the
mask. ``GridSample`` wants the sampling positions as (x, y) pairs, last, which is the layout the cores
already give their offsets in: point p of group g at channels (g·P + p)·2 + a (DCNv3), or 2p + a of group g's
3P channels (DCNv4), a = 0 for Δx and 1 for Δy. So the offsets are read without being taken apart (no
channels-first ``Transpose`` and back, no ``Gather`` of channels):

- Δp: the offset (N, Ho, Wo, ·) as (N, Ho·Wo, G, 2P), (Δx, Δy) of point p at 2p and 2p + 1 (DCNv4: its
  offset_mask's first 3·G·P channels as (N, Ho·Wo, G, 3P), split into the 2P offsets and the P masks);
- the grid g = (p + 1/2 - S/2) / (S/2) of every point, (N, Ho·Wo, G, 2P), in align_corners=0 units of the
  input (S = W for x, H for y): Δp times offset_scale / (S/2), plus a constant (1, Ho·Wo, 1, 2P) for p_0 + p_p,
  both folded where the sizes are static; then the guard against hostile offsets of
  :mod:`dcn_onnxscript.lowering.grid_sample`;
- the samples shared among ``GridSample`` calls (:func:`parts`): chunks of whole groups with all their points
  where a group fits the budget of :data:`RUN_POINTS` points of every group, else runs of points over every group;
- the grid of every chunk and run, (N·g, n, Ho·Wo, 2), a row of output positions per point: one ``Transpose`` of
  the grid (groups before positions) and ``Split`` nodes;
- the masks (N, Ho, Wo, G·P) (DCNv4: the split's P masks per group) as (N·g, 1, n, Ho·Wo), split likewise;
- the input (N, H, W, G·Cg) as the N·g images (N·g, Cg, H, W) of every chunk; each run of each chunk sampled by
  one ``GridSample`` (N·g, Cg, n, Ho·Wo), weighed by its masks and summed over its points; the chunks' sums
  joined and returned as (N, Ho, Wo, G·Cg).

Points keep the cores' order (column-major over the kernel, the centre left out with ``remove_center``): a sum
over points does not care. Positions are computed in the coordinate type (float32, float64 for float64
cores); the samples in float32. Every tensor has rank 4 or less, and every constant that meets one has rank 4
too (onnx2tf, see :mod:`dcn_onnxscript.lowering.grid_sample`). Sizes as in the deform_conv2d lowerings: N, H
and W read from the input, Ho and Wo from the offset, the mask cut to them, where they are dynamic.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import onnx_ir as ir

from dcn_onnxscript.lowering import grid_sample, sampling
from dcn_onnxscript.lowering.dcnv3 import Core, channels_first, channels_last, kernel_points
from dcn_onnxscript.lowering.emitter import Emitter
from dcn_onnxscript.lowering.layer import Layer
from dcn_onnxscript.lowering.validation import static_shape

Value = Any
#: The input's and the offset's spatial axes, channels last: (H, W) of (N, H, W, C).
_SPATIAL = [1, 2]
#: The most samples one ``GridSample`` call holds, in points of every group (:func:`parts`). onnxruntime's
#: ``GridSample`` opens a parallel section per image, so a call per point over N·G images makes two threads wait
#: more than they work; one call over all P points holds all their samples, and their product with the masks, at
#: once, as InternImage's plain export of a core does. Measured against that export (onnxruntime 1.32, 2 threads,
#: 56×56×64 with 4 groups and 28×28×128 with 8), with runs of points over every group: runs of 3 took 0.95–0.97× /
#: 1.02× its latency without spinning threads at 0.57× / 0.80× its peak memory, runs of 5 0.93–0.95× / 0.96× at
#: 0.66× / 0.93×, all 9 points 0.90× / 0.89× at 0.78× / 0.99×. Chunks of whole groups under the same budget (two
#: chunks of 2 or 4 groups) open N·G sections in all, as one call does, and took 0.94× / 0.92–0.94× with runs of 5's
#: memory.
RUN_POINTS = 5


def point_shifts(core: Core, layer: Layer) -> np.ndarray:
    """What p_0 lacks for point p, per axis: p_p = c - pad + (i·dilation - c)·offset_scale, c = ⌊dilation·(k -
    1) / 2⌋, i the point's kernel index (:func:`kernel_points`; the cores' kernel grid, scaled about its centre),
    plus 1/2 (align_corners=0 counts pixels from their edges); (x, y) of point p at 2p and 2p + 1, shaped
    (1, 1, 1, 2P) of the coordinate type."""
    yx, indices = [], np.array(kernel_points(core)).reshape(-1, 2)
    for axis in (0, 1):
        k, d, pad = core.kernel[axis], core.dilation[axis], core.padding[axis]
        c = d * (k - 1) // 2
        yx.append(c - pad + (indices[:, axis] * d - c) * core.offset_scale + 0.5)
    return layer.coordinates(np.stack([yx[1], yx[0]], axis=1).reshape(1, 1, 1, -1))


def _xy(core: Core, pair) -> np.ndarray:
    """``pair`` (x-value, y-value) at the x and y place of every point: (1, 1, 1, 2P)."""
    return np.tile(np.asarray(pair), core.points).reshape(1, 1, 1, -1)


def output_positions(op: Emitter, core: Core, layer: Layer, Ho_Wo: Optional[Value]) -> Value:
    """p_0 = o·stride of every output position, (x, y) at the x and y place of every point: (1, Ho·Wo, 1, 2P)
    of the coordinate type; a constant when (Ho, Wo) are static, else built on ``Ho_Wo`` (INT64 (2,), the
    offset's)."""
    (sy, sx), (Ho, Wo) = core.stride, layer.output_size
    if not sampling.dynamic(Ho, Wo):
        rows, cols = np.meshgrid(np.arange(Ho) * sy, np.arange(Wo) * sx, indexing="ij")
        xy = np.stack([cols.reshape(-1), rows.reshape(-1)], axis=1)  # (Ho·Wo, 2)
        return layer.coordinates(np.tile(xy, (1, core.points)).reshape(1, Ho * Wo, 1, -1))
    step = sx if sx == sy else 1
    ones = op.ConstantOfShape(Ho_Wo, value=layer.coordinates([step]))  # (Ho, Wo)
    one_column = np.array([1, -1, 1, 1], dtype=np.int64)
    cols, rows = (op.Reshape(op.CumSum(ones, np.array(axis)), one_column) for axis in (1, 0))  # from `step`
    xy = op.Concat(cols, rows, axis=3)  # (1, Ho·Wo, 1, 2)
    if sx != sy:
        xy = op.Mul(xy, layer.coordinates([sx, sy]).reshape(1, 1, 1, 2))
    positions = op.Tile(xy, np.array([1, 1, 1, core.points], dtype=np.int64))
    return op.Sub(positions, layer.coordinates(_xy(core, [sx, sy])))  # the count started at one step


def half_sizes(op: Emitter, core: Core, layer: Layer, input_shape: Optional[Value]) -> np.ndarray | Value:
    """(W/2, H/2) of the input at the x and y place of every point, (1, 1, 1, 2P) of the coordinate type: a
    constant when (H, W) are static, else from the input's ``Shape`` ``input_shape``."""
    H, W = layer.input_size
    if not sampling.dynamic(H, W):
        return layer.coordinates(_xy(core, [W / 2, H / 2]))
    return sampling.half_sizes(op, layer, input_shape, 1, _xy(core, [0, 1]))


def group_offsets_and_masks(op: Emitter, core: Core, layer: Layer, offset: Value, mask: Value, N: Optional[Value],
                            Ho_Wo: Optional[Value]) -> tuple[Value, Value]:
    """Δp (N, Ho·Wo, G, 2P) of the coordinate type and Δm, (N, Ho, Wo, G·P) or (N, Ho·Wo, G, P) float32, of the
    core's ``offset`` (cut to the input's batch already) and ``mask`` (DCNv4: both the offset_mask)
    (N, Ho, Wo, ·); the mask is cut to the input's batch ``N`` and the offset's ``Ho_Wo`` where they are
    dynamic. DCNv4's offset_mask is cut to its first 3·G·P channels (the module pads them) unless it is known to
    hold no more."""
    G, P = core.group, core.points
    if core.version == 3:
        delta = op.Reshape(sampling.as_coordinates(op, layer, offset), np.array([0, -1, G, 2 * P], dtype=np.int64))
        return delta, grid_sample.sampled(op, layer, sampling.cut_to(op, mask, N, Ho_Wo, spatial_axes=_SPATIAL))
    if _channels(offset) != 3 * G * P:
        offset = op.Slice(offset, np.array([0]), np.array([3 * G * P]), np.array([3]))
    per_group = op.Reshape(sampling.as_coordinates(op, layer, offset), np.array([0, -1, G, 3 * P], dtype=np.int64))
    delta, masks = op.split_sizes(per_group, [2 * P, P], axis=3)
    return delta, masks if layer.coordinate_dtype == grid_sample.SAMPLED else op.Cast(masks, to=grid_sample.SAMPLED)


def _channels(value: Value) -> Optional[int]:
    """The last size of ``value`` (N, Ho, Wo, D) where an onnx_ir value knows it, else ``None``."""
    shape = static_shape(value) if isinstance(value, ir.Value) else None
    return shape[3] if shape is not None and len(shape) == 4 else None


def grid_values(op: Emitter, core: Core, layer: Layer, delta: Value, p0: Value, halves: Value) -> Value:
    """``GridSample``'s grid values of every point, (N, Ho·Wo, G, 2P) float32, (x, y) of point p at 2p and
    2p + 1: (p_0 + p_p + Δp·offset_scale - S/2) / (S/2) (:func:`point_shifts` holds the 1/2), from ``delta`` Δp
    (N, Ho·Wo, G, 2P), ``p0`` (:func:`output_positions`) and ``halves`` (:func:`half_sizes`); every value
    that is not finite or lies far outside the image moved to where ``GridSample`` reads zero
    (:func:`grid_sample.guarded`)."""
    shifts = point_shifts(core, layer)
    if isinstance(halves, np.ndarray):
        centres = (p0 + shifts - halves) / halves if isinstance(p0, np.ndarray) else \
            op.Div(op.Add(p0, shifts - halves), halves)
        g = op.Add(op.Mul(delta, layer.coordinates(core.offset_scale / halves)), centres)
    else:
        scaled = delta if core.offset_scale == 1 else op.Mul(delta, layer.coordinates(core.offset_scale))
        g = op.Div(op.Add(scaled, op.Add(p0, op.Sub(shifts, halves))), halves)
    return grid_sample.guarded(op, layer, g)


def run_lengths(points: int, most: int = RUN_POINTS) -> list[int]:
    """``points`` cut into ⌈points / ``most``⌉ runs of near-equal length (9 in runs of at most 5: 5 and 4; 8: 4
    and 4)."""
    runs = -(-points // most)
    return [points // runs + (i < points % runs) for i in range(runs)]


def parts(core: Core, most: int = RUN_POINTS) -> tuple[list[int], list[int]]:
    """How the core's samples are shared among ``GridSample`` calls, one call per chunk of groups and run of
    points: (the groups of every chunk, the points of every run). No call holds more samples than ``most``
    points of every group would. Whole groups where one fits, all P points each: onnxruntime's ``GridSample``
    opens a parallel section per image, and a chunk of g groups is N·g images where a run of points over
    every group is N·G (3x3 with 8 groups: chunks of 4 and 4 groups, one run of 9 points); runs of points over
    every group where not one group's P points fit (3x3 with 1 group: runs of 5 and 4 points)."""
    G, P = core.group, core.points
    groups_per_chunk = G * most // P
    if groups_per_chunk >= 1:
        return run_lengths(G, groups_per_chunk), [P]
    return [G], run_lengths(P, most)


def chunk_grids(op: Emitter, core: Core, values: Value, chunks: list[int], runs: list[int]) -> list[list[Value]]:
    """The grids of every chunk of g groups and run of n points (:func:`parts`): (N·g, n, Ho·Wo, 2), a row of
    output positions per point, from ``values`` (N, Ho·Wo, G, 2P) (:func:`grid_values`)."""
    G, P = core.group, core.points
    pairs = op.Reshape(values, np.array([0, -1, G * P, 2], dtype=np.int64))  # (N, Ho·Wo, G·P, 2)
    by_group = op.Transpose(pairs, perm=[0, 2, 1, 3])  # (N, G·P, Ho·Wo, 2)
    return chunks_and_runs(op, core, by_group, chunks, runs, np.array([-1, P, 0, 2], dtype=np.int64), axis=1)


def chunk_masks(op: Emitter, core: Core, masks: Value, chunks: list[int], runs: list[int]) -> list[list[Value]]:
    """Δm of every chunk of g groups and run of n points: (N·g, 1, n, Ho·Wo) float32, from ``masks``
    (N, Ho, Wo, G·P) or (N, Ho·Wo, G, P) float32 (:func:`group_offsets_and_masks`)."""
    G, P = core.group, core.points
    column = op.Reshape(masks, np.array([0, -1, 1, G * P], dtype=np.int64))  # (N, Ho·Wo, 1, G·P)
    by_group = op.Transpose(column, perm=[0, 2, 3, 1])  # (N, 1, G·P, Ho·Wo)
    return chunks_and_runs(op, core, by_group, chunks, runs, np.array([-1, 1, P, 0], dtype=np.int64), axis=2)


def chunks_and_runs(op: Emitter, core: Core, by_group: Value, chunks: list[int], runs: list[int],
                    per_group: np.ndarray, axis: int) -> list[list[Value]]:
    """``by_group``, N first and its G·P points group by group along ``axis``, cut into chunks of g groups, each
    reshaped to ``per_group`` (N·g first, one group's P points along ``axis``) and cut into runs of n points
    (:func:`parts`)."""
    P = core.points
    return [op.split_sizes(op.Reshape(chunk, per_group), runs, axis=axis)
            for chunk in op.split_sizes(by_group, [g * P for g in chunks], axis=axis)]


def run_samples(op: Emitter, images: Value, grid: Value, mask: Value) -> Value:
    """Σ_p x(p)·Δm_p over one run of n points for every channel: (N·g, Cg, Ho·Wo) float32, from the ``images``
    (N·g, Cg, H, W) float32 of a chunk of g groups, the run's ``grid`` (N·g, n, Ho·Wo, 2) and ``mask``
    (N·g, 1, n, Ho·Wo) float32.
    The sum runs over the middle axis (contiguous rows: a last axis of n costs onnxruntime's ``ReduceSum``
    three times as much)."""
    samples = grid_sample.bilinear_samples(op, images, grid)  # (N·g, Cg, n, Ho·Wo)
    return op.ReduceSum(op.Mul(samples, mask), np.array([2], dtype=np.int64), keepdims=0)


def channels_of(op: Emitter, layer: Layer, Y: Value, Ho_Wo: Optional[Value]) -> Value:
    """The sums ``Y`` (N·G, Cg, Ho·Wo) or (N, G·Cg, Ho·Wo) as (N, Ho, Wo, G·Cg); ``Ho_Wo`` (INT64 (2,)) where
    they are dynamic."""
    Ho, Wo = layer.output_size
    channels = np.array([-1, layer.in_channels], dtype=np.int64)
    shape = np.array([*channels, Ho, Wo], dtype=np.int64) if Ho_Wo is None else op.Concat(channels, Ho_Wo, axis=0)
    return channels_last(op, op.Reshape(Y, shape))


def chunk_images(op: Emitter, core: Core, layer: Layer, input: Value, chunks: list[int]) -> list[Value]:
    """The input (N, H, W, G·Cg) as the N·g images (N·g, Cg, H, W) float32 of every chunk of g groups."""
    X = grid_sample.sampled(op, layer, channels_first(op, input))
    Cg = core.group_channels
    return [part if g == 1 else op.Reshape(part, np.array([-1, Cg, 0, 0], dtype=np.int64))
            for part, g in zip(op.split_sizes(X, [g * Cg for g in chunks], axis=1), chunks)]


def chunk_sums(op: Emitter, images: Value, grids: list[Value], masks: list[Value]) -> Value:
    """Σ_p x(p)·Δm_p over every point of one chunk of g groups, (N·g, Cg, Ho·Wo) float32, from its ``images``
    (N·g, Cg, H, W), and the ``grids`` and ``masks`` of its runs (:func:`chunk_grids`, :func:`chunk_masks`)."""
    return functools.reduce(op.Add, (run_samples(op, images, grid, mask) for grid, mask in zip(grids, masks)))


def joined(op: Emitter, core: Core, sums: list[Value], chunks: list[int]) -> Value:
    """The sums of every chunk of g groups (N·g, Cg, Ho·Wo) as those of all groups, (N·G, Cg, Ho·Wo) or
    (N, G·Cg, Ho·Wo)."""
    if len(sums) == 1:
        return sums[0]
    Cg = core.group_channels
    return op.concat([Y if g == 1 else op.Reshape(Y, np.array([-1, g * Cg, 0], dtype=np.int64))
                      for Y, g in zip(sums, chunks)], axis=1)


def lower(op: Emitter, core: Core, layer: Layer, input: Value, offset: Value, mask: Value) -> Value:
    """The core's output (N, Ho, Wo, G·Cg) of ``input`` (N, H, W, G·Cg), ``offset`` and ``mask`` (DCNv4: both
    the offset_mask) in the layouts of :mod:`dcn_onnxscript.lowering.dcnv3`; ``layer`` (its
    :func:`~dcn_onnxscript.lowering.dcnv3.layer`) gives the dtype and the static sizes."""
    input_shape = op.Shape(input) if sampling.dynamic(layer.batch, *layer.input_size) else None
    N = sampling.dims(op, input_shape, 0, 1) if sampling.dynamic(layer.batch) else None
    offset = sampling.with_batch_of(op, N, offset)
    Ho_Wo = sampling.dims(op, op.Shape(offset), 1, 3) if sampling.dynamic(*layer.output_size) else None
    delta, masks = group_offsets_and_masks(op, core, layer, offset, mask, N, Ho_Wo)
    values = grid_values(op, core, layer, delta, output_positions(op, core, layer, Ho_Wo),
                         half_sizes(op, core, layer, input_shape))
    chunks, runs = parts(core)
    sums = [chunk_sums(op, images, grids, run_masks) for images, grids, run_masks in zip(
        chunk_images(op, core, layer, input, chunks), chunk_grids(op, core, values, chunks, runs),
        chunk_masks(op, core, masks, chunks, runs))]
    return grid_sample.in_dtype(op, layer, channels_of(op, layer, joined(op, core, sums, chunks), Ho_Wo))
