"""Runners of every ONNX runtime the tests use: each takes an ``onnx.ModelProto`` and a sequence of numpy
inputs (in graph-input order) and returns the first output as a numpy array."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from dcn_onnxscript.rewrite import targets

Inputs = Sequence[np.ndarray]


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


def run_openvino(model: onnx.ModelProto, inputs: Inputs, precision: Optional[str] = "f32") -> np.ndarray:
    """OpenVINO CPU in float32 (its default inference precision there is bf16 on capable CPUs), or with
    ``precision=None`` in its default precision."""
    import openvino

    core = openvino.Core()
    ov_model = core.read_model(model.SerializeToString(), b"")  # bytes: an in-memory model
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = core.compile_model(ov_model, "CPU", config)
    result = compiled([np.asarray(v) for v in inputs])
    return np.asarray(result[compiled.output(0)])


def run_tract(model: onnx.ModelProto, inputs: Inputs, concrete: bool = True, plain_sizes: bool = True) -> np.ndarray:
    """tract, with every input's shape and type fixed to the given arrays' (``concrete``), or loaded as it
    is, symbolic dimensions and all. A symbolic model must type with output sizes that are plain symbols
    or numbers (``plain_sizes``: a deformable layer's output has its offset's sizes): an expression (a
    rounded split, a broadcast of two spellings of one size) grows with every layer a network stacks, until
    tract takes minutes to load it. (In a whole model a strided convolution's output sizes are expressions
    of the image's: ``plain_sizes=False`` there.)"""
    import tract

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        inference_model = tract.onnx().load(path)
        for i, value in enumerate(inputs if concrete else ()):
            value = np.asarray(value)
            fact = f"{','.join(map(str, value.shape))},{_tract_dtype(value.dtype)}"
            inference_model.set_input_fact(i, fact)
        typed = inference_model.into_model()
        if not concrete and plain_sizes:
            sizes = str(typed.output_fact(0)).split(",")[:-1]
            assert all(re.fullmatch(r"<?\w+>?", size) for size in sizes), f"tract output fact {typed.output_fact(0)}"
        return typed.into_runnable().run([np.asarray(v) for v in inputs])[0].to_numpy()


def _tract_dtype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}[
        np.dtype(dtype)]


#: The Python of the LiteRT venv that ``.ci/tflite`` builds (onnx2tf, tensorflow, ai-edge-litert; no torch).
TFLITE_PYTHON = os.environ.get(
    "DCN_TFLITE_PYTHON", str(pathlib.Path(__file__).resolve().parents[1] / ".venv-tflite" / "bin" / "python"))
_TFLITE_WORKER = pathlib.Path(__file__).resolve().parent / "tflite_worker.py"
#: Where the converted files live; removed with the test process.
_TFLITE_FOLDER = tempfile.TemporaryDirectory(prefix="dcn_tflite_")


@functools.lru_cache(maxsize=8)
def _tflite_file(serialized: bytes) -> str:
    """onnx2tf's float32 TFLite file of a serialized ONNX model (converted once per model, in the LiteRT
    venv; kept in :data:`_TFLITE_FOLDER` until the test process ends)."""
    import pytest

    if not os.path.exists(TFLITE_PYTHON):
        pytest.fail(f"no LiteRT venv at {TFLITE_PYTHON}: run `bash .ci/tflite` or set DCN_TFLITE_PYTHON")
    folder = tempfile.mkdtemp(dir=_TFLITE_FOLDER.name)
    model, tflite = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.tflite")
    with open(model, "wb") as file:
        file.write(serialized)
    done = subprocess.run([TFLITE_PYTHON, str(_TFLITE_WORKER), "convert", model, tflite], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"onnx2tf failed:\n{done.stderr[-3000:]}"
    return tflite


def run_tflite(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """onnx2tf (its defaults: channels-last inputs) to a float32 TFLite model, run by LiteRT, in the LiteRT
    venv (``tflite_worker.py``); the output back in the model's NCHW. The converted model must use LiteRT's
    builtin ops only (no "Flex" select-TensorFlow ops, which plain LiteRT runtimes lack).

    onnx2tf leaves a rank-4 output NCHW or makes it NHWC and the TFLite file does not say which: where both
    read as the ONNX output's shape (O = Ho = Wo), the layout is the one in which LiteRT's output is nearer
    to onnxruntime's for the same ONNX model (the caller then compares with its own reference)."""
    tflite = _tflite_file(model.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        feeds, output = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "output.npy")
        np.savez(feeds, **{value.name: np.asarray(array) for value, array in zip(model.graph.input, inputs)})
        done = subprocess.run([TFLITE_PYTHON, str(_TFLITE_WORKER), "run", tflite, feeds, output],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"LiteRT failed:\n{done.stderr[-3000:]}"
        result = np.load(output)
    ops = done.stdout.strip().splitlines()[-1].split()[1:]
    assert not [op for op in ops if op.startswith("Flex")], f"select TensorFlow ops in the TFLite model: {ops}"
    shape = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    channels_last = result.transpose(0, 3, 1, 2)
    if result.shape != shape:
        return channels_last
    if channels_last.shape != shape:
        return result
    onnx_result = np.nan_to_num(run_onnxruntime(model, inputs))
    distance = [np.abs(np.nan_to_num(r) - onnx_result).max() for r in (result, channels_last)]
    return result if distance[0] <= distance[1] else channels_last


#: The Pythons of the deployment venvs that ``.ci/deploy`` builds: ncnn + pnnx, tinygrad, Apache TVM and NNCF
#: in one; onnxruntime-openvino (which replaces onnxruntime) in the other.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY_PYTHON = os.environ.get("DCN_DEPLOY_PYTHON", str(_ROOT / ".venv-deploy" / "bin" / "python"))
RKNN_PYTHON = os.environ.get("DCN_RKNN_PYTHON", str(_ROOT / ".venv-rknn" / "bin" / "python"))
OVEP_PYTHON = os.environ.get("DCN_OVEP_PYTHON", str(_ROOT / ".venv-ovep" / "bin" / "python"))
#: The venv of OpenCV 4.x (the newest 4.x release, as users run it) that ``.ci/deploy`` builds.
OPENCV4_PYTHON = os.environ.get("DCN_OPENCV4_PYTHON", str(_ROOT / ".venv-opencv4" / "bin" / "python"))
_DEPLOY_WORKER = pathlib.Path(__file__).resolve().parent / "deploy_worker.py"
#: runtime of ``deploy_worker.py`` -> the Python that has it. OpenCV 5 and MNN are in the test venv, but run in a
#: process of its own too: a runtime that aborts on a graph takes only that process down.
WORKER_PYTHONS = {"opencv": sys.executable, "mnn": sys.executable, "tvm": DEPLOY_PYTHON,
                  "ncnn": DEPLOY_PYTHON, "tinygrad": DEPLOY_PYTHON, "openvino_ep": OVEP_PYTHON,
                  "opencv4": OPENCV4_PYTHON, "rknn": RKNN_PYTHON}
#: How long one worker may take (TVM compiles the model, pnnx converts it).
_WORKER_TIMEOUT = 600


def run_worker(runtime: str, model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """``runtime`` (a key of :data:`WORKER_PYTHONS`) in a process of its own (``deploy_worker.py``); a
    crash (segfault, abort) is an ``AssertionError`` naming the exit status."""
    python = WORKER_PYTHONS[runtime]
    if not os.path.exists(python):
        import pytest

        pytest.fail(f"no venv at {python} for {runtime}: run `bash .ci/deploy`")
    with tempfile.TemporaryDirectory() as tmp:
        path, feeds, output = (os.path.join(tmp, name) for name in ("model.onnx", "inputs.npz", "output.npy"))
        onnx.save(model, path)
        np.savez(feeds, **{value.name: np.asarray(array) for value, array in zip(model.graph.input, inputs)})
        done = subprocess.run([python, str(_DEPLOY_WORKER), runtime, path, feeds, output], capture_output=True,
                              text=True, timeout=_WORKER_TIMEOUT)
        assert done.returncode == 0, f"{runtime} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        return np.load(output)


def nncf_int8(model: onnx.ModelProto, calibration: Inputs, excluded: Sequence[str],
              overflow_fix: str = "enable") -> onnx.ModelProto:
    """NNCF's int8 ``model`` (ONNX backend, ``overflow_fix`` "enable": 7-bit weights everywhere, or its default
    "first_layer_only"), calibrated on ``calibration`` (values of the first input), the nodes named in
    ``excluded`` left float; in the deploy venv (``deploy_worker.py nncf``)."""
    if not os.path.exists(DEPLOY_PYTHON):
        import pytest

        pytest.fail(f"no venv at {DEPLOY_PYTHON} for NNCF: run `bash .ci/deploy`")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, name) for name in ("model.onnx", "calibration.npz", "excluded.txt", "int8.onnx")]
        onnx.save(model, paths[0])
        np.savez(paths[1], **{f"{i:04d}": np.asarray(value) for i, value in enumerate(calibration)})
        pathlib.Path(paths[2]).write_text("\n".join(excluded))
        done = subprocess.run([DEPLOY_PYTHON, str(_DEPLOY_WORKER), "nncf", *paths, overflow_fix], capture_output=True,
                              text=True, timeout=_WORKER_TIMEOUT)
        assert done.returncode == 0, f"NNCF failed:\n{done.stderr[-3000:]}"
        return onnx.load(paths[3])


RUNNERS = {
    "onnxruntime": run_onnxruntime,
    "reference": run_reference,
    "openvino": run_openvino,
    "tract": run_tract,
    "tflite": run_tflite,
    **{runtime: functools.partial(run_worker, runtime) for runtime in WORKER_PYTHONS},
}

#: runtime -> runner; "openvino" compares in f32, "openvino_default" runs OpenVINO's own default precision
#: (bf16 on this AMX CPU); "tract" runs static models with concrete input facts, "tract_symbolic" loads
#: dynamic models as they are; "tflite" converts static float32 models with onnx2tf and runs LiteRT (in
#: its own venv: marked ``tflite``, run by ``.ci/tflite``, not by the default command); "opencv" is
#: OpenCV DNN 5.x with its default engine (test venv); "tvm", "ncnn", "tinygrad", "openvino_ep", "opencv4"
#: (OpenCV 4.x) and "rknn" (rknn-toolkit2's RK3588 simulator, float16 NPU arithmetic: compared at 1e-2) run in
#: the venvs of ``.ci/deploy`` (marked ``deploy``).
MATRIX_RUNTIMES = ("onnxruntime", "openvino", "openvino_default", "tract", "tract_symbolic", "reference", "tflite",
                   "opencv", "tvm", "ncnn", "openvino_ep", "tinygrad", "opencv4", "rknn")
#: runtime -> the pytest mark of the extra job that runs it in its own venv (not the default command).
EXTRA_JOBS = {"tflite": "tflite", "tvm": "deploy", "ncnn": "deploy", "openvino_ep": "deploy", "tinygrad": "deploy",
              "opencv4": "deploy", "rknn": "deploy"}
#: RKNN's NPU (and its simulator) computes a float model in float16: measured 3.4e-3 on the deploy block.
RKNN_TOLERANCE = 1e-2


def run_runtime(runtime: str, model: onnx.ModelProto, inputs: Inputs, whole_model: bool = False) -> np.ndarray:
    """The matrix's runners by name (see :data:`MATRIX_RUNTIMES`); ``whole_model``: a network around the
    deformable layer, whose output sizes tract may derive as expressions of the input's."""
    if runtime == "openvino_default":
        return run_openvino(model, inputs, precision=None)
    if runtime == "tract_symbolic":
        return run_tract(model, inputs, concrete=False, plain_sizes=not whole_model)
    if runtime in targets.TARGETS:  # the documented recipes: `rewrite --for ncnn` (then pnnx), `--for opencv4`, `rknn`
        retargeted = ir.from_proto(model)
        targets.for_target(retargeted, runtime)
        model = ir.to_proto(retargeted)
    return RUNNERS[runtime](model, inputs)
