"""What importing each part of the package loads: the rewriter and the standalone functions work without
torch; ``import dcn_onnxscript`` registers the translation as soon as torch.onnx is there."""

from __future__ import annotations

import subprocess
import sys

import pytest


def python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("module", ["dcn_onnxscript.rewrite", "dcn_onnxscript.lowering.gather",
                                    "dcn_onnxscript.lowering.script", "dcn_onnxscript"])
def test_import_does_not_import_torch(module):
    assert python(f"import sys, {module}; print('torch' in sys.modules)") == "False"


def test_import_of_the_package_loads_no_heavy_dependency():
    """``import dcn_onnxscript`` (the hook and the names) loads none of torch, onnxscript, onnx_ir, onnx or
    numpy: what it serves is imported or built on first use."""
    heavy = {"torch", "onnxscript", "onnx_ir", "onnx", "numpy"}
    code = f"import sys, dcn_onnxscript; print(sorted({heavy!r} & set(sys.modules)))"
    assert python(code) == "[]"


def test_rewrite_model_works_without_torch():
    code = """
import sys
import numpy as np
from onnx import TensorProto, helper
from dcn_onnxscript import rewrite_model
node = helper.make_node("DeformConv", ["X", "W", "offset"], ["Y"], pads=[1, 1, 1, 1])
graph = helper.make_graph([node], "g",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2, 5, 5]),
     helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 2, 3, 3]),
     helper.make_tensor_value_info("offset", TensorProto.FLOAT, [1, 18, 5, 5])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, 5, 5])])
model = rewrite_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
print({n.op_type for n in model.graph.node} >= {"GridSample", "Conv"}, "torch" in sys.modules)
"""
    assert python(code) == "True False"


#: torch.onnx loaded before the package, after it, through torchvision, in the middle of the package's own
#: export modules (they import torch), and through the public API's lazy names.
ORDERS = ["import torch.onnx; import dcn_onnxscript", "import dcn_onnxscript; import torch.onnx",
          "import dcn_onnxscript; import torchvision", "import dcn_onnxscript.export.dynamo",
          "from dcn_onnxscript import translation_table"]
_CHECK = "\nimport torch.onnx\nimport dcn_onnxscript\nprint(dcn_onnxscript.is_registered())"


def test_registered_whichever_is_imported_first():
    """Each order in a fresh process (all side by side: each pays the import of torch)."""
    runs = {order: subprocess.Popen([sys.executable, "-c", order + _CHECK], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for order in ORDERS}
    for order, run in runs.items():
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0 and stdout.strip() == "True", (order, stderr[-2000:])
