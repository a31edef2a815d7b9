"""Shared test helpers: torchvision references, model builders and runners for every ONNX runtime.

Runners take an ``onnx.ModelProto`` and a sequence of numpy inputs (in graph-input order) and return the
first output as a numpy array.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import onnx
import torch
import torchvision  # noqa: F401  (loads torchvision::deform_conv2d)
from torchvision.ops import deform_conv2d as tv_deform_conv2d

Inputs = Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Case:
    """One deform_conv2d layer configuration; inputs are made at ``size`` = (H, W) and ``batch``."""

    in_channels: int = 4
    out_channels: int = 6
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    size: tuple[int, int] = (7, 6)
    batch: int = 1

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(size, self.kernel, self.stride, self.padding, self.dilation)
        )


class DeformConvLayer(torch.nn.Module):
    """torchvision.ops.deform_conv2d with the weights of ``case``; forward(x, offset[, mask])."""

    def __init__(self, case: Case, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shape = (case.out_channels, case.in_channels // case.groups, *case.kernel)
        self.weight = torch.nn.Parameter(torch.randn(shape, generator=g) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(case.out_channels, generator=g)) if case.bias else None
        self.case = case

    def forward(self, x, offset, mask=None):
        c = self.case
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, c.stride, c.padding,
                                             c.dilation, mask)


def make_inputs(case: Case, seed: int = 1, size: Optional[tuple[int, int]] = None,
                batch: Optional[int] = None, dtype=np.float32, offset_scale: float = 2.0) -> list[np.ndarray]:
    """``[x, offset(, mask)]`` for ``case`` at ``size``/``batch`` (defaults: the case's); offsets of a few
    pixels, so samples leave the image and land between pixels."""
    rng = np.random.default_rng(seed)
    n, (h, w) = batch or case.batch, size or case.size
    ho, wo = case.output_size((h, w))
    taps = case.kernel[0] * case.kernel[1] * case.offset_groups
    arrays = [rng.standard_normal((n, case.in_channels, h, w)),
              rng.standard_normal((n, 2 * taps, ho, wo)) * offset_scale]
    if case.mask:
        arrays.append(rng.uniform(0.0, 1.0, (n, taps, ho, wo)))
    return [a.astype(dtype) for a in arrays]


def layer_reference(layer: DeformConvLayer, inputs: Inputs) -> np.ndarray:
    """float64 torchvision output of ``layer`` on ``inputs`` = [x, offset(, mask)]."""
    c = layer.case
    x, offset, *mask = inputs
    bias = None if layer.bias is None else layer.bias.detach().numpy()
    return torchvision_reference(x, layer.weight.detach().numpy(), offset, mask[0] if mask else None, bias,
                                 c.stride, c.padding, c.dilation)


def export_dynamo(module: torch.nn.Module, inputs: Inputs, opset: Optional[int] = None,
                  dynamic: bool = False, **kwargs) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` of ``module`` at ``inputs``; with ``dynamic``, batch, height and
    width of every input are dynamic (the output grid of offset/mask follows the input's); or give your own
    ``dynamic_shapes``."""
    args = tuple(torch.from_numpy(np.asarray(a)) for a in inputs)
    shapes = kwargs.pop("dynamic_shapes", None)
    if dynamic:
        n, h, w = torch.export.Dim("n"), torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
        grid = ({0: n, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},) * (len(args) - 1)
        shapes = ({0: n, 2: h, 3: w}, *grid)
    program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                verbose=False, **kwargs)
    return program.model_proto


def default_opset(model: onnx.ModelProto) -> int:
    return next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))


def torchvision_reference(
    x: np.ndarray,
    weight: np.ndarray,
    offset: np.ndarray,
    mask: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
) -> np.ndarray:
    """torchvision.ops.deform_conv2d in float64 on CPU: ``x`` (N, C, H, W), ``weight`` (O, C/groups, kH, kW),
    ``offset`` (N, 2·G·kH·kW, Ho, Wo), ``mask`` (N, G·kH·kW, Ho, Wo), ``bias`` (O); returns (N, O, Ho, Wo)."""

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))

    # torchvision's CPU kernel reads out of bounds (segfaults) on NaN offsets: its in-image test is false
    # for NaN and it then casts floor(NaN) to an index. A NaN sample position has no in-image neighbour,
    # so it contributes zero, like -Inf, which torchvision handles.
    offset = np.where(np.isnan(offset), -np.inf, offset)

    with torch.no_grad():
        y = tv_deform_conv2d(t(x), t(offset), t(weight), t(bias), tuple(stride), tuple(padding),
                             tuple(dilation), t(mask))
    return y.numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """|actual - expected| ≤ rtol·max(1, max|expected|) wherever ``expected`` is finite (a fraction of the
    output scale: float32 accumulation error grows with it)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    err = np.abs(actual.astype(np.float64)[finite] - expected[finite])
    worst = float(err.max(initial=0.0)) if not np.isnan(err).any() else float("nan")
    assert worst <= rtol * scale, f"max |error| {worst:.3g} > {rtol:g}·{scale:.3g}"


# --------------------------------------------------------------------------------------------- runners

def run_onnxruntime(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(v) for i, v in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0]


def run_reference(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    session = ReferenceEvaluator(model)
    feeds = {i.name: np.asarray(v) for i, v in zip(model.graph.input, inputs)}
    return session.run(None, feeds)[0]


def run_openvino(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """OpenVINO CPU in float32 (its default inference precision there is bf16 on capable CPUs)."""
    import openvino

    core = openvino.Core()
    ov_model = core.read_model(model.SerializeToString(), b"")  # bytes: an in-memory model
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([np.asarray(v) for v in inputs])
    return np.asarray(result[compiled.output(0)])


def run_tract(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """tract, with every input's shape and type fixed to the given arrays' (tract's declutter pass needs
    concrete facts for some symbolic-shape arithmetic)."""
    import tract

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        inference_model = tract.onnx().load(path)
        for i, value in enumerate(inputs):
            value = np.asarray(value)
            fact = f"{','.join(map(str, value.shape))},{_tract_dtype(value.dtype)}"
            inference_model.set_input_fact(i, fact)
        runnable = inference_model.into_model().into_runnable()
        return runnable.run([np.asarray(v) for v in inputs])[0].to_numpy()


def _tract_dtype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}[
        np.dtype(dtype)]


RUNNERS = {
    "onnxruntime": run_onnxruntime,
    "reference": run_reference,
    "openvino": run_openvino,
    "tract": run_tract,
}
