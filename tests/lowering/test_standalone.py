"""The standalone examples (examples/standalone.py): eager numpy evaluation, use inside another script
function, and FunctionProtos in a hand-built model, on onnxruntime and the reference evaluator, and on
OpenVINO once the model's functions are inlined."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import pytest

from helpers import assert_close, torchvision_reference
from runtimes import run_onnxruntime, run_openvino, run_reference

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "standalone.py"


@pytest.fixture(scope="module")
def standalone():
    spec = importlib.util.spec_from_file_location("standalone_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @script reads its function's module from sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def expected(standalone):
    i = standalone.example_inputs()
    return torchvision_reference(i["X"], i["W"], i["offset"], i["mask"], i["B"], padding=(1, 1))


def test_eager_call_on_numpy_matches_torchvision(standalone, expected):
    assert_close(standalone.eager(standalone.example_inputs()), expected)


def run_openvino_inlined(model: onnx.ModelProto, inputs) -> np.ndarray:
    """OpenVINO reads no model-local functions: the model as ``onnx.inliner`` flattens it."""
    flat = onnx.inliner.inline_local_functions(model)
    onnx.checker.check_model(flat, full_check=True)
    return run_openvino(flat, inputs)


RUNNERS = [run_onnxruntime, run_reference, run_openvino_inlined]


@pytest.mark.parametrize("runner", RUNNERS)
def test_script_function_calling_deform_conv2d_builds_a_runnable_model(standalone, expected, runner):
    inputs = standalone.example_inputs()
    actual = runner(standalone.block_model(), list(inputs.values()))
    assert_close(actual, np.maximum(expected, 0))


@pytest.mark.parametrize("runner", RUNNERS)
def test_function_protos_in_a_hand_built_model(standalone, expected, runner):
    inputs = standalone.example_inputs()
    assert_close(runner(standalone.hand_built_model(), list(inputs.values())), expected)


def test_example_script_runs():
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FunctionProtos in model" in result.stdout
