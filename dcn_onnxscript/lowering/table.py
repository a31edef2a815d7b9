"""The one table of lowerings: every consumer (torch.onnx registration, TorchScript symbolic, rewriter,
command line, bench) reads names, builders and minimum opsets from here."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from dcn_onnxscript.lowering import emitter, gather, grid_sample
from dcn_onnxscript.lowering.layer import Layer

Build = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Lowering:
    """A way to write deform_conv2d in standard ONNX ops: ``build(op, layer, X, W, offset, B, mask)``."""

    name: str
    build: Build
    min_opset: int
    summary: str


LOWERINGS: dict[str, Lowering] = {
    lowering.name: lowering
    for lowering in (
        Lowering("gather", gather.deform_conv2d, emitter.MIN_OPSET,
                 "index arithmetic + GatherND + MatMul; every runtime"),
        Lowering("grid_sample", grid_sample.deform_conv2d, grid_sample.MIN_OPSET,
                 "ONNX GridSample + MatMul"),
    )
}
#: The lowering used unless another is asked for.
DEFAULT = "gather"


def lowering(name: str, opset: Optional[int] = None) -> Lowering:
    """The lowering called ``name``; ``ValueError`` naming the choices, or the opset it needs when
    ``opset`` is below its minimum."""
    if name not in LOWERINGS:
        raise ValueError(f"impl must be one of {sorted(LOWERINGS)}, got {name!r}")
    found = LOWERINGS[name]
    if opset is not None and opset < found.min_opset:
        raise ValueError(f"impl={name!r} needs opset >= {found.min_opset}, got opset {opset}; impl='gather' "
                         f"works from opset {LOWERINGS['gather'].min_opset}")
    return found


def build(name: str, op: emitter.Emitter, layer: Layer, X, W, offset, B=None, mask=None):
    """Write layer ``layer`` with lowering ``name`` through ``op``; returns Y."""
    return lowering(name, op.opset).build(op, layer, X, W, offset, B, mask)
