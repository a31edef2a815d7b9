"""Registration on ``import dcn_onnxscript`` without importing torch there.

If ``torch.onnx`` is loaded already, the translation is registered at once; otherwise an import hook
registers it right after ``torch.onnx`` loads, which every ``torch.onnx.export`` call does first. What is
registered (:mod:`dcn_onnxscript.export.registration`) needs nothing but torch.onnx and onnxscript to be
loaded, so the hook may fire in the middle of any other import, this package's own included.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Optional, Sequence

_TRIGGER = "torch.onnx"
_pending = False


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
    global _pending
    _pending = False
    from dcn_onnxscript.export import registration

    registration.register()


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
