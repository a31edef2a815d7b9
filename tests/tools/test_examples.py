"""examples/dcn_resnet50.py: the DCNv2 ResNet-50 exports with dynamic batch and image size and matches
PyTorch eager on onnxruntime at another size than the export's."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
from types import ModuleType

import onnx
import pytest
import torch
from onnx import helper

from dcn_onnxscript.lowering import table

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "dcn_resnet50.py"


def load_example() -> ModuleType:
    """``examples/dcn_resnet50.py`` as a module (examples are not installed with the package)."""
    spec = importlib.util.spec_from_file_location("dcn_resnet50", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 90 s on 2 cores, most of it in torch.onnx's optimizer
def test_dcn_resnet50_exports_dynamic_and_matches_eager(tmp_path) -> None:
    example = load_example()
    model = example.build_model(seed=0, offset_std=0.05)
    path = tmp_path / "dcn_resnet50.onnx"
    seconds = example.export(model, path, image_size=64)
    assert seconds > 0
    graph = onnx.load(str(path)).graph
    assert "DeformConv" not in {node.op_type for node in graph.node}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # batch, 3, height, width
    assert example.max_relative_error(path, model, (2, 3, 80, 48)) < 1e-3


def test_dcn_resnet50_has_a_modulated_deformable_conv_in_every_block_of_conv3_to_conv5() -> None:
    example = load_example()
    model = example.build_model(seed=0)
    stages = {name: [isinstance(block.conv2, example.ModulatedDeformConv) for block in getattr(model, name)]
              for name in ("layer1", "layer2", "layer3", "layer4")}
    assert stages == {"layer1": [False] * 3, "layer2": [True] * 4, "layer3": [True] * 6, "layer4": [True] * 3}
    first = model.layer2[0].conv2
    assert first.offset_mask.stride == (2, 2) and first.deform.stride == (2, 2)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 1000)


def test_dcn_resnet50_help_gives_the_default_lowering_per_opset() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert f"grid_sample from opset {table.LOWERINGS['grid_sample'].min_opset}, gather below and for float64" in text
    assert "another lowering" not in text


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_dcn_resnet50_says_which_lowering_auto_chose(tmp_path, opset: int) -> None:
    """The "translation" line names the lowering "auto" stands for at the file's opset."""
    example = load_example()
    path = tmp_path / "model.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    chosen = table.resolve(table.AUTO, opset, onnx.TensorProto.FLOAT)
    assert example.translation(table.AUTO, path) == f"portable: {chosen} (auto at opset {opset})"
    assert example.translation("gather", path) == f"portable: gather (opset {opset})"
    assert example.translation("native", path) == "native DeformConv"
