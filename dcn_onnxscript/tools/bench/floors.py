"""The floors of a layer case: its GEMM alone, (N·Ho·Wo, C·kH·kW) x (C·kH·kW, O), as one onnxruntime
``MatMul``, and its sampling alone, one ``GridSample`` (bilinear, zeros, align_corners=0: onnxruntime's
fast path) of X at every tap's positions p_0 + p_k + Δp_k. GEMM + sampling is what any graph of standard
ops that samples with ``GridSample`` costs at least."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dcn_onnxscript.tools.bench.cases import Case
from dcn_onnxscript.tools.bench.catalog import GEMM, SAMPLING, Layer

#: Kernel taps of the layer cases (3x3).
TAPS = 9


def gemm_model(m: int, k: int, o: int, seed: int) -> onnx.ModelProto:
    """A single ``MatMul`` of an input A (m, k) with a constant B (k, o)."""
    b = np.random.default_rng(seed).standard_normal((k, o), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, o])],
        [numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def sampling_model() -> onnx.ModelProto:
    """A single ``GridSample`` (bilinear, zeros, align_corners=0) of an input x (N, C, H, W) at a grid
    (N, Ho', Wo', 2)."""
    graph = helper.make_graph(
        [helper.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear", padding_mode="zeros",
                          align_corners=0)], "sampling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", "Ho", "Wo", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "Ho", "Wo"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])


def tap_grid(offset: np.ndarray) -> np.ndarray:
    """``GridSample``'s grid (N, 9·H, W, 2) of every tap's positions p_0 + p_k + Δp_k of a 3x3 layer (padding
    1, stride 1) with ``offset`` (N, 18, H, W) ((Δy, Δx) per tap), taps stacked along the rows."""
    n, _, h, w = offset.shape
    ky, kx = np.divmod(np.arange(TAPS), 3)
    y = np.arange(h)[None, None, :, None] + ky[None, :, None, None] - 1 + offset[:, 0::2]  # (N, 9, H, W)
    x = np.arange(w)[None, None, None, :] + kx[None, :, None, None] - 1 + offset[:, 1::2]
    grid = np.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], axis=-1)
    return grid.reshape(n, TAPS * h, w, 2).astype(np.float32)


def add_floors(case: Case, layer: Layer, workdir: pathlib.Path, seed: int) -> None:
    """Write the floor models of ``case`` (a layer case) to ``workdir/{name}_*.onnx`` with their inputs."""
    m, k, o = layer.gemm_shape()
    case.onnx_paths[GEMM] = workdir / f"{case.name}_gemm.onnx"
    onnx.save(gemm_model(m, k, o, seed), str(case.onnx_paths[GEMM]))
    case.floor_inputs[GEMM] = (np.random.default_rng(seed).standard_normal((m, k), dtype=np.float32),)
    case.gemm_flops = 2.0 * m * k * o
    case.onnx_paths[SAMPLING] = workdir / f"{case.name}_sampling.onnx"
    onnx.save(sampling_model(), str(case.onnx_paths[SAMPLING]))
    x, offset, _ = (t.numpy() for t in case.inputs)
    case.floor_inputs[SAMPLING] = (x, tap_grid(offset))
