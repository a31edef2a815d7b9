"""The one table of lowerings: every consumer (torch.onnx registration, TorchScript symbolic, rewriter,
command line, bench) reads names, builders and minimum opsets from here.

The default, "auto", is a choice by opset and dtype, not a lowering of its own: "grid_sample" (leanest and
fastest, :mod:`.grid_sample`) where the opset has ``GridSample`` (16), "gather" (:mod:`.gather`) below and
for float64 layers, which it computes in float64 (grid_sample computes in float32)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import onnx

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
                 "one GridSample + 1x1 Conv per kernel tap, summed; opset >= 16"),
    )
}
#: The default: "grid_sample" from its opset on, "gather" below it and for float64 layers.
AUTO = "auto"
DEFAULT = AUTO
#: Every name a user may pass as ``impl``.
NAMES = (AUTO, *LOWERINGS)


def resolve(name: str, opset: int, dtype: Optional[int] = None) -> str:
    """The lowering ``name`` stands for at ``opset`` for a layer of ONNX type ``dtype``: itself, or for "auto"
    the one that fits them."""
    if name != AUTO:
        return name
    if opset >= LOWERINGS["grid_sample"].min_opset and dtype != onnx.TensorProto.DOUBLE:
        return "grid_sample"
    return "gather"


def lowering(name: str, opset: Optional[int] = None) -> Lowering:
    """The lowering called ``name`` (resolved at ``opset``); ``ValueError`` naming the choices, or the opset it
    needs when ``opset`` is below its minimum."""
    if name not in NAMES:
        raise ValueError(f"impl must be one of {list(NAMES)}, got {name!r}")
    if name == AUTO:
        name = resolve(name, opset if opset is not None else emitter.MIN_OPSET)
    found = LOWERINGS[name]
    if opset is not None and opset < found.min_opset:
        raise ValueError(f"impl={name!r} needs opset >= {found.min_opset}, got opset {opset}; impl='gather' "
                         f"works from opset {LOWERINGS['gather'].min_opset}")
    return found


def build(name: str, op: emitter.Emitter, layer: Layer, X, W, offset, B=None, mask=None):
    """Write layer ``layer`` with lowering ``name`` (resolved at ``op.opset``) through ``op``; returns Y."""
    return lowering(resolve(name, op.opset, layer.dtype), op.opset).build(op, layer, X, W, offset, B, mask)
