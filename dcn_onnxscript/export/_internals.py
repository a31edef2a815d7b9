"""The one place that touches private internals of torch and onnxscript.

Each function reaches one internal, checks that it is there and otherwise raises :class:`InternalsError`
naming the installed versions, so that a torch or onnxscript release that moves it fails loudly at the
first use instead of exporting something else. ``tests/export/test_internals.py`` pins each one.

- torch_lib's registry entries of ``torchvision::deform_conv2d`` and of this package's DCNv3/DCNv4 cores
  (``registration.default_registry`` and, when an entry is missing, its private ``_registry`` dict): the
  dynamo exporter builds its own registry from it at every export, so swapping an entry's overloads is how a
  translation is registered globally;
- the opset of the graph the exporter is building (``evaluator.default().opset``), for refusing
  ``impl="native"`` below opset 19 and for writing the cores' layout steps in its form;
- ``torch.onnx.symbolic_helper._get_tensor_sizes``, the static sizes of a TorchScript value;
- torch's TorchScript ``_type_utils`` under its old name ``torch.onnx._type_utils`` (for the bench's
  deform_conv2d_onnx_exporter 1.2.0, which imports it from there);
- ``torch.onnx._internal._lazy_import.onnxscript_apis.convert_version``, the dynamo exporter's opset
  conversion step.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from typing import Any, Callable, Iterator, Optional

QUALIFIED_NAME = "torchvision::deform_conv2d"


class InternalsError(RuntimeError):
    """A private internal of torch or onnxscript is not where this package expects it."""


def _versions() -> str:
    import onnxscript
    import torch

    return f"torch {torch.__version__}, onnxscript {onnxscript.__version__}"


def _missing(what: str) -> InternalsError:
    return InternalsError(f"{what} is not available with {_versions()}; dcn_onnxscript needs an update for "
                          "this version (or pin the versions listed in its pyproject.toml)")


def torchlib_entry(name: str = QUALIFIED_NAME):
    """torch_lib's registry entry (an ``OverloadedFunction``) of the operator ``name`` (``torchvision::deform_conv2d``
    by default, or one of this package's cores), created when onnxscript has none."""
    try:
        from onnxscript.function_libs.torch_lib import (
            ops,  # noqa: F401  (fills the default registry)
            registration,
        )
    except ImportError as error:
        raise _missing(f"onnxscript's torch_lib ({error})") from None
    registry = getattr(registration, "default_registry", None)
    if registry is None or not hasattr(registration, "OverloadedFunction"):
        raise _missing("onnxscript.function_libs.torch_lib.registration.default_registry")
    if name not in registry:
        entries = getattr(registry, "_registry", None)
        if not isinstance(entries, dict):
            raise _missing("torch_lib's Registry._registry")
        entries[name] = registration.OverloadedFunction(name)
    entry = registry[name]
    if not isinstance(getattr(entry, "overloads", None), list):
        raise _missing("torch_lib's OverloadedFunction.overloads")
    return entry


#: The original overloads of each entry this package replaced, by operator name.
_original: dict[str, list] = {}


def set_translation(translation: Callable, name: str = QUALIFIED_NAME) -> None:
    """Make ``translation`` the only overload of operator ``name``'s entry, remembering the original ones once."""
    entry = torchlib_entry(name)
    _original.setdefault(name, list(entry.overloads))
    entry.overloads[:] = [translation]


def restore_translation(name: str = QUALIFIED_NAME) -> None:
    """Put operator ``name``'s original overloads back (idempotent)."""
    if name in _original:
        torchlib_entry(name).overloads[:] = _original.pop(name)


def current_translation(name: str = QUALIFIED_NAME) -> Optional[Callable]:
    overloads = torchlib_entry(name).overloads
    return overloads[0] if overloads else None


def original_translation() -> Callable:
    """torch_lib's own translation of ``torchvision::deform_conv2d`` (ONNX ``DeformConv``)."""
    overloads = _original.get(QUALIFIED_NAME, torchlib_entry().overloads)
    if not overloads:
        raise _missing("torch_lib's translation of torchvision::deform_conv2d")
    return overloads[0]


def exporter_opset() -> int:
    """The ONNX opset of the graph torch.onnx's dynamo exporter is building (only valid inside a
    translation)."""
    from onnxscript import evaluator

    opset = getattr(evaluator.default(), "opset", None)
    version = getattr(opset, "version", None)
    if not isinstance(version, int):
        raise _missing("the exporter's graph opset (onnxscript evaluator.default().opset)")
    return version


def tensor_sizes(value: Any) -> Optional[list[Optional[int]]]:
    """The sizes of a TorchScript graph value (``None`` for a dynamic one), or ``None`` when unknown."""
    from torch.onnx import symbolic_helper

    get_sizes = getattr(symbolic_helper, "_get_tensor_sizes", None)
    if get_sizes is None:
        raise _missing("torch.onnx.symbolic_helper._get_tensor_sizes")
    return get_sizes(value)


_original_convert_version: Optional[Callable] = None


def wrap_convert_version(wrapper: Callable) -> None:
    """Route the dynamo exporter's opset conversion (``torch.onnx._internal._lazy_import.onnxscript_apis
    .convert_version(model, target_version)``) through ``wrapper(model, target_version, original)``
    (idempotent)."""
    global _original_convert_version
    apis = _onnxscript_apis()
    if _original_convert_version is None:
        _original_convert_version = apis.convert_version
        # An instance attribute of torch's lazy module object wins over the module it stands for.
        apis.convert_version = lambda model, target_version: wrapper(model, target_version,
                                                                     _original_convert_version)


def unwrap_convert_version() -> None:
    """Undo :func:`wrap_convert_version` (idempotent)."""
    global _original_convert_version
    if _original_convert_version is not None:
        apis = _onnxscript_apis()
        apis.__dict__.pop("convert_version", None)
        _original_convert_version = None


def _onnxscript_apis():
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis
    except ImportError:
        raise _missing("torch.onnx._internal._lazy_import.onnxscript_apis") from None
    if not callable(getattr(onnxscript_apis, "convert_version", None)):
        raise _missing("torch.onnx._internal._lazy_import.onnxscript_apis.convert_version")
    return onnxscript_apis


@contextlib.contextmanager
def legacy_type_utils() -> Iterator[None]:
    """While the block runs, ``torch.onnx._type_utils`` names torch's TorchScript ``_type_utils`` (torch
    2.9 moved it), unless it exists already."""
    alias, home = "torch.onnx._type_utils", "torch.onnx._internal.torchscript_exporter._type_utils"
    if importlib.util.find_spec(alias) is not None:
        yield
        return
    try:
        sys.modules[alias] = importlib.import_module(home)
    except ImportError:
        raise _missing(home) from None
    try:
        yield
    finally:
        del sys.modules[alias]
