"""Runs one ONNX model on one deployment runtime, in the venv that has it, as its own process (a runtime that
aborts or segfaults on a graph takes only this process down):

    python tests/deploy_worker.py RUNTIME MODEL.onnx INPUTS.npz OUTPUT.npy
    python tests/deploy_worker.py nncf MODEL.onnx CALIBRATION.npz EXCLUDED.txt INT8.onnx [OVERFLOW_FIX]

RUNTIME is one of :data:`RUNNERS`. INPUTS.npz holds the model's inputs by ONNX name; OUTPUT.npy gets its first
output. Needs numpy and onnx besides the runtime; no torch. A runtime's refusal exits non-zero with its
error on stderr. The venvs: OpenCV and MNN run in the test venv (``opencv-python-headless`` and ``MNN`` are in the
``test`` extra), the others in the venvs that ``.ci/deploy`` builds (``.ci/deploy-requirements.txt``: ncnn and pnnx,
tinygrad, Apache TVM, NNCF; ``.ci/deploy-ovep-requirements.txt``: onnxruntime-openvino, which replaces
onnxruntime; ``.ci/deploy-rknn-requirements.txt``: rknn-toolkit2, Python 3.11).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np
import onnx

Feeds = dict[str, np.ndarray]


def _first_output(model: onnx.ModelProto) -> str:
    return model.graph.output[0].name


def opencv(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """OpenCV DNN (``cv2.dnn.readNetFromONNX``) with the installed release's default engine (OpenCV 5.1: its
    graph engine, ``ENGINE_AUTO`` -> ``ENGINE_OPENCV``; 4.x: its only importer), default CPU backend, float32.
    The engine is the one a user gets: no engine constant is named, as they differ between releases."""
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path))
    for name, value in feeds.items():
        net.setInput(value, name)
    return np.asarray(net.forward(_first_output(onnx.load(str(path), load_external_data=False))))


def opencv4(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """OpenCV 4.x DNN (``cv2.dnn.readNetFromONNX``, default CPU backend, float32) as users of the newest 4.x
    release run it: in the venv ``.ci/deploy`` builds for it (``.ci/deploy-opencv4-requirements.txt``). The
    engine is detected, not assumed: 4.x has one ONNX importer and ``readNetFromONNX`` takes no engine
    argument, so an OpenCV that has ``cv2.dnn.ENGINE_*`` constants (5.x) is the wrong venv and is refused."""
    import cv2

    engines = sorted(name for name in dir(cv2.dnn) if name.startswith("ENGINE_"))
    if not cv2.__version__.startswith("4.") or engines:
        raise SystemExit(f"opencv4 needs OpenCV 4.x (one importer, no engine argument); this is OpenCV "
                         f"{cv2.__version__} with engines {engines}")
    return opencv(path, feeds)


def tvm(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """Apache TVM: the Relax ONNX frontend with the inputs' concrete shapes, compiled for ``llvm`` (CPU)."""
    import tvm as tvm_
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(path))
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    dtypes = {name: str(value.dtype) for name, value in feeds.items()}
    module = relax.transform.DecomposeOpsForInference()(from_onnx(model, shape_dict=shapes, dtype_dict=dtypes))
    executable = tvm_.compile(module, target="llvm")
    machine = relax.VirtualMachine(executable, tvm_.cpu())
    names = [i.name for i in model.graph.input if i.name in feeds]
    result = machine["main"](*[tvm_.runtime.tensor(feeds[name]) for name in names])
    return (result[0] if isinstance(result, (list, tuple)) or type(result).__name__ == "Array" else result).numpy()


def ncnn(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """ncnn through pnnx (``pnnx MODEL.onnx inputshape=... fp16=0``, the converter ncnn recommends; without
    ``fp16=0`` it stores the weights as float16), run in float32 (no fp16/bf16 storage or arithmetic). ncnn
    has no batch axis: batch-1 inputs only, fed without their batch axis, or with it where pnnx found none (its
    own test script feeds them with ``batch_index=233``: the DCNv3/DCNv4 cores' channels-last inputs)."""
    import importlib.util

    import ncnn as ncnn_

    # the converter binary of the pnnx wheel (its Python package imports torch, which this venv has not)
    converter = pathlib.Path(importlib.util.find_spec("pnnx").submodule_search_locations[0]) / "pnnx"

    model = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name in feeds]
    assert all(feeds[name].shape[0] == 1 for name in names), "ncnn runs one image at a time"
    shapes = ",".join(f"[{','.join(map(str, feeds[name].shape))}]f32" for name in names)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = pathlib.Path(folder) / "model.onnx"
        onnx_path.write_bytes(path.read_bytes())
        done = subprocess.run([str(converter), str(onnx_path), f"inputshape={shapes}", "fp16=0"], capture_output=True,
                              text=True, cwd=folder, timeout=600)
        param, weights = onnx_path.with_suffix(".ncnn.param"), onnx_path.with_suffix(".ncnn.bin")
        if done.returncode != 0 or not param.exists():
            raise SystemExit(f"pnnx failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        net = ncnn_.Net()
        for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                       "use_bf16_packed"):
            setattr(net.opt, option, False)
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            unknown = sorted({line.split()[0] for line in param.read_text().splitlines()[2:]
                              if line.split()[0].startswith(("torch.", "Tensor.", "pnnx.", "F."))})
            raise SystemExit(f"ncnn cannot load pnnx's model; layers it lacks: {unknown}")
        batchless = _pnnx_batchless(onnx_path.with_name(f"{onnx_path.stem}_ncnn.py"))
        extractor = net.create_extractor()
        for index, name in enumerate(names):
            value = feeds[name] if f"in{index}" in batchless else feeds[name][0]
            extractor.input(f"in{index}", ncnn_.Mat(np.ascontiguousarray(value, dtype=np.float32)).clone())
        status, output = extractor.extract("out0")
        if status != 0:
            raise SystemExit(f"ncnn extract failed with status {status}")
        return np.array(output) if "out0" in batchless else np.array(output)[None]


def _pnnx_batchless(script: pathlib.Path) -> set[str]:
    """The blobs (``in0``, ``out0``, ...) that pnnx's ncnn test script ``script`` passes with
    ``batch_index=233``: those whose first axis pnnx did not take for a batch, which ncnn then holds whole."""
    text = script.read_text() if script.exists() else ""
    inputs = re.findall(r'ex\.input\("(\w+)", ncnn\.Mat\(\w+\.numpy\(\), batch_index=233\)', text)
    outputs = re.findall(r'out\.append\(torch\.from_numpy\((\w+)\.numpy\(batch_index=233\)', text)
    return {*inputs, *outputs}


def openvino_ep(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """onnxruntime's OpenVINO execution provider (``onnxruntime-openvino``) on CPU in FP32, with the CPU
    provider's fallback disabled: a node that the OpenVINO provider does not take fails the session."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = onnxruntime.InferenceSession(str(path), options, providers=["OpenVINOExecutionProvider"],
                                           provider_options=[{"device_type": "CPU", "precision": "FP32"}])
    return session.run(None, feeds)[0]


def tinygrad(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """tinygrad's ONNX runner (``tinygrad.nn.onnx.OnnxRunner``) on its CPU device (which compiles with
    clang)."""
    os.environ.setdefault("DEV", "CPU")
    from tinygrad import Tensor
    from tinygrad.nn.onnx import OnnxRunner

    runner = OnnxRunner(path)
    outputs = runner({name: Tensor(value) for name, value in feeds.items()})
    return next(iter(outputs.values())).numpy()


def rknn(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """rknn-toolkit2's simulator for the RK3588 NPU (``target_platform="rk3588"``, ``init_runtime()`` without
    a target), not quantized: the toolkit builds the model at the feeds' shapes (it takes static shapes only),
    and the NPU computes in float16. Inputs are fed as NCHW, as the ONNX model has them."""
    from rknn.api import RKNN

    model = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name in feeds]
    toolkit = RKNN(verbose=False)
    try:
        toolkit.config(target_platform="rk3588")
        steps = (("load_onnx", lambda: toolkit.load_onnx(str(path), inputs=names,
                                                         input_size_list=[list(feeds[n].shape) for n in names])),
                 ("build", lambda: toolkit.build(do_quantization=False)), ("init_runtime", toolkit.init_runtime))
        for step, call in steps:
            if call() != 0:
                raise SystemExit(f"rknn {step} failed")
        outputs = toolkit.inference(inputs=[feeds[n] for n in names], data_format=["nchw"] * len(names))
        if outputs is None:
            raise SystemExit("rknn inference failed")
        return np.asarray(outputs[0])
    finally:
        toolkit.release()


def mnn(path: pathlib.Path, feeds: Feeds) -> np.ndarray:
    """MNN: its converter (the C++ extension ``_tools``, called with ``mnnconvert``'s own arguments: the
    console script's telemetry wrapper pip-installs a package) to an .mnn file, run by ``MNN.nn`` in high
    precision on CPU. Inputs are fed as given (``NCHW``: MNN's tag for "the ONNX model's own layout")."""
    import _tools
    import MNN.expr as F
    import MNN.nn as nn

    model = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name in feeds]
    with tempfile.TemporaryDirectory() as tmp:
        converted = os.path.join(tmp, "model.mnn")
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(path), "--MNNModel", converted,
                           "--bizCode", "dcn_onnxscript"])
        if not os.path.exists(converted):
            raise SystemExit("MNN's converter wrote no model")
        module = nn.load_module_from_file(converted, names, [_first_output(model)],
                                          precision_mode=F.PrecisionMode.High)
        arrays = [np.ascontiguousarray(feeds[n]) for n in names]
        output = module.forward([F.const(a, list(a.shape), F.NCHW) for a in arrays])[0]
        output = F.convert(output, F.NCHW)
        return np.array(output.read(), copy=True).reshape(output.shape)


RUNNERS: dict[str, Callable[[pathlib.Path, Feeds], np.ndarray]] = {
    "mnn": mnn,
    "opencv": opencv,
    "opencv4": opencv4,
    "tvm": tvm,
    "ncnn": ncnn,
    "openvino_ep": openvino_ep,
    "tinygrad": tinygrad,
    "rknn": rknn,
}


def nncf_quantize(model: pathlib.Path, calibration: pathlib.Path, excluded: pathlib.Path, output: pathlib.Path,
                  overflow_fix: str = "first_layer_only") -> None:
    """NNCF's post-training int8 quantization (ONNX backend, its defaults but ``overflow_fix``: "enable" gives
    every layer 7-bit weights, as onnxruntime's reduce_range) of ``model`` on the inputs in ``calibration``
    (an .npz of arrays, each a batch of the model's first input), with the nodes named in ``excluded`` (one
    a line: ``dcn_onnxscript.quantization.nodes_to_exclude``) left float."""
    import nncf

    with np.load(calibration) as arrays:
        samples = [arrays[name] for name in sorted(arrays.files)]
    onnx_model = onnx.load(str(model))
    name = onnx_model.graph.input[0].name
    names = [line for line in excluded.read_text().splitlines() if line]
    quantized = nncf.quantize(onnx_model, nncf.Dataset(samples, lambda sample: {name: sample}),
                              subset_size=len(samples), ignored_scope=nncf.IgnoredScope(names=names),
                              advanced_parameters=nncf.AdvancedQuantizationParameters(
                                  overflow_fix=nncf.OverflowFix(overflow_fix)))
    onnx.save(quantized, str(output))


def main() -> int:
    if sys.argv[1] == "nncf":
        nncf_quantize(*map(pathlib.Path, sys.argv[2:6]), *sys.argv[6:])
        return 0
    runtime, model, inputs, output = sys.argv[1:]
    with np.load(inputs) as arrays:
        feeds = dict(arrays)
    np.save(output, RUNNERS[runtime](pathlib.Path(model), feeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
