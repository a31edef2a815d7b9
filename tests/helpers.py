"""Shared test helpers: torchvision references, model builders and runners for every ONNX runtime.

Runners take an ``onnx.ModelProto`` and a sequence of numpy inputs (in graph-input order) and return the
first output as a numpy array.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import onnx
import torch
import torchvision  # noqa: F401  (loads torchvision::deform_conv2d)
from torchvision.ops import deform_conv2d as tv_deform_conv2d

Inputs = Sequence[np.ndarray]


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
