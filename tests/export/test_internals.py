"""Each private internal of torch and onnxscript is reached through dcn_onnxscript.export._internals only;
these tests pin each adapter against the installed versions, so that a release that moves one fails
here first, with the adapter's message."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
import torchvision

import dcn_onnxscript
from dcn_onnxscript.export import _internals

PACKAGE = pathlib.Path(dcn_onnxscript.__file__).parent


def test_torchlib_entry_is_an_overloaded_function_with_a_list_of_overloads():
    entry = _internals.torchlib_entry()
    assert isinstance(entry.overloads, list) and entry.overloads


def test_set_and_restore_translation_round_trip():
    registered = _internals.current_translation()
    original = _internals.original_translation()
    try:
        _internals.restore_translation()
        assert _internals.current_translation() is original
    finally:
        _internals.set_translation(registered)
    assert _internals.current_translation() is registered
    assert _internals.original_translation() is original


def test_exporter_opset_is_read_inside_a_translation():
    seen = []

    def spy(*args):
        seen.append(_internals.exporter_opset())
        return _internals.original_translation()(*args)

    from onnxscript.values import Opset, TracedOnnxFunction

    layer = torchvision.ops.DeformConv2d(2, 2, 3, padding=1).eval()
    table = {torch.ops.torchvision.deform_conv2d.default: TracedOnnxFunction(Opset("spy", 1), spy)}
    torch.onnx.export(layer, (torch.randn(1, 2, 4, 4), torch.randn(1, 18, 4, 4)), dynamo=True, opset_version=19,
                      custom_translation_table=table)
    assert seen == [19]


def test_exporter_opset_outside_a_translation_is_a_clear_error():
    with pytest.raises(_internals.InternalsError, match="evaluator.default"):
        _internals.exporter_opset()


def test_tensor_sizes_of_a_torchscript_value():
    seen = []

    def symbolic(g, x, *args):
        seen.append(_internals.tensor_sizes(x))
        return g.op("Identity", x)

    torch.onnx.register_custom_op_symbolic("aten::relu", symbolic, 12)
    try:
        import io

        torch.onnx.export(torch.nn.ReLU(), (torch.randn(2, 3),), io.BytesIO(), dynamo=False, opset_version=12)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::relu", 12)
    assert seen == [[2, 3]]


def test_wrap_convert_version_routes_the_exporters_conversion():
    from torch.onnx._internal._lazy_import import onnxscript_apis

    calls = []
    _internals.unwrap_convert_version()
    try:
        _internals.wrap_convert_version(lambda model, target, original: calls.append(target) or original(model, target))
        layer = torchvision.ops.DeformConv2d(2, 2, 3, padding=1).eval()
        torch.onnx.export(layer, (torch.randn(1, 2, 4, 4), torch.randn(1, 18, 4, 4)), dynamo=True, opset_version=17)
        assert calls == [17]
        assert callable(onnxscript_apis.convert_version)
    finally:
        _internals.unwrap_convert_version()
        dcn_onnxscript.register()


def test_missing_internal_names_the_versions():
    error = _internals._missing("something.private")
    assert re.search(r"something\.private is not available with torch \S+, onnxscript \S+", str(error))


def test_no_other_module_touches_private_internals():
    """Private names of torch and onnxscript appear in _internals.py only."""
    pattern = re.compile(r"\b(?:torch\.onnx\._internal|_lazy_import|_get_tensor_sizes|\._registry|evaluator\.default)")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "_internals.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_legacy_type_utils_names_the_moved_module_only_inside_the_block():
    import importlib
    import sys

    with _internals.legacy_type_utils():
        module = importlib.import_module("torch.onnx._type_utils")
        assert hasattr(module, "JitScalarType")
    if "torch.onnx._type_utils" in sys.modules:  # a torch that still has it under the old name
        assert importlib.util.find_spec("torch.onnx._type_utils") is not None

