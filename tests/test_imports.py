"""What importing each part of the package loads: the rewriter and the standalone functions work without
torch; ``import dcn_onnxscript`` registers the translation as soon as torch.onnx is there."""

from __future__ import annotations

import importlib.util
import pkgutil
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


def _modules(*packages: str) -> list[str]:
    """Every module of ``packages`` (the packages themselves included), found on disk: a module added later is
    imported first too."""
    names = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        names.append(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)]
    return names


#: torch.onnx loaded before the package, after it, through torchvision, through the public API's lazy names, and
#: in the middle of each module that imports torch (registration, the exporters, the ops; the package, and so
#: the import hook, comes first): a circular import among them fails its order.
ORDERS = ["import torch.onnx; import dcn_onnxscript", "import dcn_onnxscript; import torch.onnx",
          "import dcn_onnxscript; import torchvision", "from dcn_onnxscript import translation_table",
          *(f"import {module}" for module in _modules("dcn_onnxscript.export", "dcn_onnxscript.ops"))]
#: Then: deform_conv2d's translation and, once the ops are imported, the cores' are registered.
_CHECK = """
import torch.onnx
import dcn_onnxscript
import dcn_onnxscript.ops
from dcn_onnxscript.export import _internals, dcnv3
cores = [_internals.current_translation(name) is dcnv3._TRANSLATIONS["auto"][version]
         for version, name in dcnv3.QUALIFIED_NAMES.items()]
print(dcn_onnxscript.is_registered(), all(cores))"""


#: The orders the default suite runs (a fresh interpreter takes about 5 s each): torch.onnx before and after the
#: package, through torchvision and the lazy names, and the two modules a circular import once broke; ``-m slow``
#: runs the other modules' orders.
DEFAULT_ORDERS = ORDERS[:4] + ["import dcn_onnxscript.export.dcnv3", "import dcn_onnxscript.ops"]


@pytest.mark.parametrize("order", [order if order in DEFAULT_ORDERS else pytest.param(order, marks=pytest.mark.slow)
                                   for order in ORDERS])
def test_registered_whichever_is_imported_first(order: str):
    """Each order in a fresh process."""
    assert python(order + _CHECK) == "True True"
