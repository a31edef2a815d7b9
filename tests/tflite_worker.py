"""Runs in the LiteRT venv (``.ci/tflite``; numpy, onnx2tf, tensorflow, ai-edge-litert, no torch): converts an
ONNX model with onnx2tf's defaults (channels-last inputs) to a float32 ``.tflite``, and runs one with LiteRT.

    python tests/tflite_worker.py convert MODEL.onnx MODEL.tflite
    python tests/tflite_worker.py run MODEL.tflite INPUTS.npz OUTPUT.npy

INPUTS.npz holds the ONNX inputs by name, in ONNX's layout (NCHW); a rank-4 input goes in as NHWC where the
converted model takes it so. OUTPUT.npy gets the model's first output as LiteRT returns it (onnx2tf may
leave it NCHW or make it NHWC: the caller knows the expected shape). The last line of stdout lists the
TFLite model's op types ("ops: ADD CONV_2D ..."): TensorFlow ops that LiteRT's builtins lack show up as
"Flex..." (select TF ops, which plain LiteRT runtimes do not have). A failed conversion exits non-zero with
onnx2tf's error on stderr.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import numpy as np

#: Where onnx2tf looks, in the working directory, for its sample images before it downloads them.
SAMPLE_IMAGES = "calibration_image_sample_data_20x128x128x3_float32.npy"


def convert(model: pathlib.Path, tflite: pathlib.Path) -> None:
    """onnx2tf's float32 TFLite file of ``model``, written to ``tflite``."""
    import onnx
    import onnx2tf

    with tempfile.TemporaryDirectory() as folder:
        _offline_sample_images(onnx.load(str(model), load_external_data=False), pathlib.Path(folder))
        onnx2tf.convert(input_onnx_file_path=str(model), output_folder_path=folder, non_verbose=True,
                        copy_onnx_input_output_names_to_tflite=True)
        (pathlib.Path(folder) / f"{model.stem}_float32.tflite").replace(tflite)


def _offline_sample_images(model, folder: pathlib.Path) -> None:
    """When every input is an image of 3 channels, onnx2tf runs the model once on sample images, which it
    downloads unless a file of theirs is in the working directory: write random ones of the first input's
    size there (NHWC) and work there, so that conversion needs no network."""
    import os

    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and dims[1] == 3 and all(dims):
        images = np.random.default_rng(0).random((20, dims[2], dims[3], 3), dtype=np.float32)
        np.save(folder / SAMPLE_IMAGES, images)
    os.chdir(folder)


def as_fed(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` (NCHW) in the layout of the converted model's input ``shape``: NHWC unless it takes NCHW."""
    if value.ndim == 4 and value.shape == value.transpose(0, 2, 3, 1).shape:
        raise SystemExit(f"an input of shape {value.shape} reads the same in NCHW and NHWC: choose other sizes")
    if value.ndim == 4 and tuple(shape) == value.transpose(0, 2, 3, 1).shape:
        return np.ascontiguousarray(value.transpose(0, 2, 3, 1))
    if tuple(shape) != value.shape:
        raise SystemExit(f"converted model takes {tuple(shape)}, the input has {value.shape}")
    return value


def _onnx_name(tflite_name: str) -> str:
    """The ONNX input name of a TFLite input tensor's name ("serving_default_x:0" -> "x")."""
    return tflite_name.removeprefix("serving_default_").split(":")[0]


def run(tflite: pathlib.Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The first output of the model at ``tflite`` and its op types."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        feeds = {name: as_fed(inputs[name], detail["shape"]) for name, detail in runner.get_input_details().items()}
        result = next(iter(runner(**feeds).values()))
    else:  # onnx2tf writes no signature for some models: feed the tensors by name
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], as_fed(inputs[_onnx_name(detail["name"])], detail["shape"]))
        interpreter.invoke()
        result = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})  # LiteRT's only op listing
    return result, ops


def main() -> int:
    command, *paths = sys.argv[1:]
    if command == "convert":
        convert(*map(pathlib.Path, paths))
        return 0
    tflite, inputs, output = map(pathlib.Path, paths)
    with np.load(inputs) as arrays:
        result, ops = run(tflite, dict(arrays))
    np.save(output, result)
    print("ops:", " ".join(ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
