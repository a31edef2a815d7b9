"""Registration on ``import dcn_onnxscript`` without importing torch there.

If ``torch.onnx`` is loaded already, the translation is registered at once; otherwise an import hook
registers it right after ``torch.onnx`` loads, which every ``torch.onnx.export`` call does first.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Optional, Sequence

_TRIGGER = "torch.onnx"
#: The modules that register; each ends with :func:`finish_deferred`.
_REGISTERING = ("dcn_onnxscript.export.dynamo", "dcn_onnxscript.export.torchscript")
_pending = False
#: Set when torch.onnx finished loading while one of those modules was being imported (they import
#: torch.onnx, or torchvision, which imports it): the last of them registers at its own end.
_deferred = False


def install() -> None:
    """Register now if ``torch.onnx`` is loaded, else when it loads (idempotent)."""
    global _pending
    if _TRIGGER in sys.modules:
        _register()
    elif not _pending:
        _pending = True
        sys.meta_path.insert(0, _Hook())


def settle() -> None:
    """Finish a pending registration now (the public registration API calls this first)."""
    if _pending:
        import torch.onnx  # noqa: F401  (the hook registers)


def _register() -> None:
    global _pending, _deferred
    _pending = False
    if _importing():
        _deferred = True
        return
    from dcn_onnxscript.export import dynamo

    dynamo.register()


def _importing() -> bool:
    """Whether a registering module is half imported (it has no ``register`` yet)."""
    return any(name in sys.modules and not hasattr(sys.modules[name], "register") for name in _REGISTERING)


def finish_deferred() -> None:
    """Called at the end of each registering module: the registration that had to wait for them."""
    global _deferred
    if _deferred and not _importing():
        _deferred = False
        from dcn_onnxscript.export import dynamo

        dynamo.register()


class _Hook(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``torch.onnx`` so that :func:`_register` runs once it has loaded."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        if fullname != _TRIGGER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            if _pending:
                _register()

        spec.loader.exec_module = exec_module
        return spec
