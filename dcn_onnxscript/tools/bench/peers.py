"""The peers: deform_conv2d_onnx_exporter 1.2.0 (pip), as installed and as BiRefNet's tutorial patches it,
and its maintained fork github nusu-github/deform_conv2d_onnx_exporter, loaded from a checkout (it has the
same package name as 1.2.0)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Iterator, Optional

from dcn_onnxscript.export import _internals
from dcn_onnxscript.tools.bench.catalog import Unavailable

#: The module name the fork is loaded under (its package has the same name as 1.2.0's).
_FORK_MODULE = "deform_conv2d_onnx_exporter_fork"


def import_dcoe() -> ModuleType:
    """deform_conv2d_onnx_exporter, importable on torch >= 2.9: it looks for ``JitScalarType`` in
    ``torch.onnx._type_utils``, which moved, and otherwise falls back to tables that no longer hold
    torch's scalar types. The old name is aliased while it imports (and only then)."""
    if importlib.util.find_spec("deform_conv2d_onnx_exporter") is None:
        raise Unavailable("not installed")
    with _internals.legacy_type_utils():
        return importlib.import_module("deform_conv2d_onnx_exporter")


#: BiRefNet's tutorial's patch of deform_conv2d_onnx_exporter: dim -> its size from the strides of a
#: contiguous (N, C, H, W) tensor, where TorchScript does not know it (N as the stride of W: 1).
_SIZE_FROM_STRIDES = {3: lambda s: s[2], 2: lambda s: s[1] // s[2], 0: lambda s: s[3]}


@contextlib.contextmanager
def tutorial_patch(dcoe: ModuleType) -> Iterator[None]:
    """deform_conv2d_onnx_exporter's ``get_tensor_dim_size`` patched as BiRefNet's tutorial does, while the
    block runs."""
    original = dcoe.get_tensor_dim_size

    def get_tensor_dim_size(tensor, dim: int):
        size = original(tensor, dim)
        if size is None and dim in _SIZE_FROM_STRIDES:
            size = _SIZE_FROM_STRIDES[dim](tensor.type().strides())
        return size

    dcoe.get_tensor_dim_size = get_tensor_dim_size
    try:
        yield
    finally:
        dcoe.get_tensor_dim_size = original


def load_fork(checkout: Optional[pathlib.Path]) -> ModuleType:
    """The fork's module, from its checkout (the repository, its ``src`` package folder, or the
    ``__init__.py``), under its own module name beside deform_conv2d_onnx_exporter 1.2.0."""
    if _FORK_MODULE in sys.modules:
        return sys.modules[_FORK_MODULE]
    if checkout is None:
        raise Unavailable("skipped: no checkout of the fork (--fork PATH or DCN_BENCH_FORK; github "
                          "nusu-github/deform_conv2d_onnx_exporter)")
    candidates = [checkout, checkout / "__init__.py", checkout / "src" / "deform_conv2d_onnx_exporter" / "__init__.py"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise Unavailable(f"skipped: no src/deform_conv2d_onnx_exporter/__init__.py under {checkout}")
    spec = importlib.util.spec_from_file_location(_FORK_MODULE, found)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "create_deform_conv2d_custom_op", None)):
        raise Unavailable(f"skipped: {found} has no create_deform_conv2d_custom_op (not the fork)")
    sys.modules[_FORK_MODULE] = module
    return module
