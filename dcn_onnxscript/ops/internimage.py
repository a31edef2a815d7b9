"""Export models built with InternImage's ``DCNv3`` / ``DCNv3_pytorch`` or FlashInternImage's ``DCNv4``
modules unchanged: :func:`portable_cores` routes their core calls to this package's ops while the block runs.

Upstream's modules call their core through a name of their own module: ``DCNv3Function.apply(...)``
(InternImage's CUDA extension; its ONNX symbolic writes ``mmdeploy::TRTDCNv3``, which only TensorRT runs),
``dcnv3_core_pytorch(...)`` (the pure-PyTorch core, exported through ``GridSample`` at opset 16 and later
only) and ``DCNv4Function.apply(...)`` (CUDA only). Inside the block those names stand for
``torch.ops.dcn_onnxscript.dcnv3`` / ``dcnv4`` (``im2col_step``, a CUDA batching knob, dropped), so the model
runs on CPU and ``torch.onnx.export`` writes standard ONNX ops; the modules, their parameters and their
state_dict are untouched, and the names are restored on exit.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import torch

from dcn_onnxscript.ops.dcnv3 import dcnv3, dcnv4

__all__ = ["portable_cores"]

#: The position of ``im2col_step`` in ``DCNv3Function.apply``'s and ``DCNv4Function.apply``'s arguments.
_V3_IM2COL_STEP, _V4_IM2COL_STEP = 14, 13


def _typed(op: Callable, *args):
    """``op`` called with upstream's flat arguments, offset_scale as float and remove_center as bool (upstream
    passes ints)."""
    *head, offset_scale, remove_center = args
    return op(*head, float(offset_scale), bool(remove_center))


class _Function:
    """Stands for an autograd function: ``apply`` calls ``op`` without the argument at ``dropped``."""

    def __init__(self, op: Callable, dropped: int) -> None:
        self.op, self.dropped = op, dropped

    def apply(self, *args):
        return _typed(self.op, *args[:self.dropped], *args[self.dropped + 1:])


#: The name upstream's module code calls -> what it stands for inside :func:`portable_cores`.
_CORES: dict[str, object] = {
    "DCNv3Function": _Function(dcnv3, _V3_IM2COL_STEP),
    "dcnv3_core_pytorch": lambda *args: _typed(dcnv3, *args),
    "DCNv4Function": _Function(dcnv4, _V4_IM2COL_STEP),
}


@contextlib.contextmanager
def portable_cores(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """While the block runs, the DCNv3/DCNv4 modules of ``model`` call this package's ops.

    ``ValueError`` when no module of ``model`` is defined where one of those names is.

    Examples::

        >>> import dcn_onnxscript.ops
        >>> from dcn_onnxscript.ops.internimage import portable_cores
        >>> with portable_cores(model):
        ...     torch.onnx.export(model, (image,), "internimage.onnx", dynamo=True)
    """
    homes = {sys.modules[type(m).__module__] for m in model.modules() if type(m).__module__ in sys.modules}
    swaps = [(home, name) for home in homes for name in _CORES if name in vars(home)]
    if not swaps:
        raise ValueError(f"model holds no module that calls {' or '.join(_CORES)}: nothing to route to the "
                         "portable ops (InternImage's DCNv3 and FlashInternImage's DCNv4 modules do)")
    originals = [getattr(home, name) for home, name in swaps]
    for home, name in swaps:
        setattr(home, name, _CORES[name])
    try:
        yield model
    finally:
        for (home, name), original in zip(swaps, originals):
            setattr(home, name, original)
