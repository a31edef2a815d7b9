"""The one table of lowerings: every consumer (torch.onnx registration, TorchScript symbolic, rewriter,
command line, bench) reads names, builders and minimum opsets from here.

The default, "auto", is a choice by opset and dtype, not a lowering of its own: "grid_sample" (leanest and
fastest, :mod:`.grid_sample`) where the opset has ``GridSample`` (16), "gather" (:mod:`.gather`) below and
for float64 layers, which it computes in float64 (grid_sample computes in float32).

This module imports nothing heavy: the command lines read their choices from it for ``--help``; a
lowering's module (numpy, onnx_ir) is imported when it first builds a layer.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from dcn_onnxscript.lowering.emitter import Emitter
    from dcn_onnxscript.lowering.layer import Layer

#: The lowest ONNX opset the lowerings write (Min/Max on INT64 and GatherND come at 12).
MIN_OPSET = 12
#: ``GridSample`` first appears in opset 16.
GRID_SAMPLE_OPSET = 16
#: ONNX's DOUBLE (``onnx.TensorProto.DOUBLE``): "auto" lowers float64 layers with gather.
_DOUBLE = 11


@dataclasses.dataclass(frozen=True)
class Lowering:
    """A way to write deform_conv2d in standard ONNX ops: the function ``deform_conv2d`` of ``module``,
    called as ``build(op, layer, X, W, offset, B, mask)``."""

    name: str
    module: str
    min_opset: int
    summary: str

    def build(self, op: Emitter, layer: Layer, X, W, offset, B=None, mask=None) -> Any:
        return importlib.import_module(self.module).deform_conv2d(op, layer, X, W, offset, B, mask)


LOWERINGS: dict[str, Lowering] = {
    lowering.name: lowering
    for lowering in (
        Lowering("gather", "dcn_onnxscript.lowering.gather", MIN_OPSET,
                 "index arithmetic + Gather + MatMul per tap; every runtime"),
        Lowering("grid_sample", "dcn_onnxscript.lowering.grid_sample", GRID_SAMPLE_OPSET,
                 "one GridSample + 1x1 Conv per kernel tap, summed; opset >= 16"),
    )
}
#: The default: "grid_sample" from its opset on, "gather" below it and for float64 layers.
AUTO = "auto"
DEFAULT = AUTO
#: Every name a user may pass as ``impl``.
NAMES = (AUTO, *LOWERINGS)
#: ``impl`` of ONNX's own ``DeformConv`` (no lowering), which needs opset 19: torch's translation in the
#: exporters, the node itself in the rewriter.
NATIVE = "native"
NATIVE_MIN_OPSET = 19
#: What the exporters' ``impl`` and the rewriter's ``--impl`` accept: the names above and "native".
IMPLS = (*NAMES, NATIVE)


def resolve(name: str, opset: int, dtype: Optional[int] = None) -> str:
    """The lowering ``name`` stands for at ``opset`` for a layer of ONNX type ``dtype``: itself, or for "auto"
    the one that fits them."""
    if name != AUTO:
        return name
    if opset >= LOWERINGS["grid_sample"].min_opset and dtype != _DOUBLE:
        return "grid_sample"
    return "gather"


def lowering(name: str, opset: Optional[int] = None) -> Lowering:
    """The lowering called ``name`` (resolved at ``opset``); ``ValueError`` naming the choices, or the opset it
    needs when ``opset`` is below its minimum."""
    if name not in NAMES:
        raise ValueError(f"impl must be one of {list(NAMES)}, got {name!r}")
    if name == AUTO:
        name = resolve(name, opset if opset is not None else MIN_OPSET)
    found = LOWERINGS[name]
    if opset is not None and opset < found.min_opset:
        raise ValueError(f"impl={name!r} needs opset >= {found.min_opset}, got opset {opset}; impl='gather' "
                         f"works from opset {LOWERINGS['gather'].min_opset}")
    return found


def build(name: str, op: Emitter, layer: Layer, X, W, offset, B=None, mask=None):
    """Write layer ``layer`` with lowering ``name`` (resolved at ``op.opset``) through ``op``; returns Y."""
    return lowering(resolve(name, op.opset, layer.dtype), op.opset).build(op, layer, X, W, offset, B, mask)
