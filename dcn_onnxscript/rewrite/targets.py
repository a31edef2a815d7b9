"""Graph patterns for one deployment target, on a model that already holds this package's lowerings:
``python -m dcn_onnxscript rewrite IN.onnx OUT.onnx --for ncnn``.

ncnn (through pnnx, the converter ncnn's maintainers recommend) has no comparison and no select layer, so
the grid_sample lowering's guard against non-finite and far sample positions,

    g ← Where(|g| < far, g, far)        (far = 4 half image sizes from the centre)

becomes ``Clip(g, -far, far)``, which ncnn has. Both agree on every finite or infinite grid value: a grid
value at or beyond ``far`` samples nothing either way (both neighbours lie outside the image). They differ
on NaN, which ``Where`` moves out of the image and ``Clip`` passes on: the default export keeps ``Where``,
because onnxruntime's and ``onnx.reference``'s ``GridSample`` return non-zero values or fail on a NaN grid.
ncnn's ``GridSample`` reads no pixel for a NaN position (its integer in-image test fails), so there a NaN
offset still samples nothing.

The gather lowering (opsets below 16, float64 layers) indexes with integer arithmetic, which ncnn lacks
altogether; ncnn takes models exported at opset 16 or later in float32.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

#: The targets :func:`for_target` knows.
TARGETS = ("ncnn",)


def _far_guard(op: Any, g: Any, far: Any, moved_to: Any) -> Any:
    """The grid_sample lowering's guard: ``g`` where ``|g| < far``, else ``moved_to`` (the same constant, once
    or written twice: the TorchScript exporter gives each use a ``Constant`` of its own)."""
    return op.Where(op.Less(op.Abs(g), far), g, moved_to)


def _scalar(value: Any) -> Optional[np.ndarray]:
    """The one value of constant ``value`` (rank 0), or ``None`` where it is not a constant of one value."""
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None or tensor.size != 1 else tensor.numpy().reshape(())


def _is_far_guard(context: Any, g: Any, far: Any, moved_to: Any, **_: Any) -> bool:
    """``far`` and ``moved_to`` are one positive constant (what the lowering writes)."""
    bound, target = _scalar(far), _scalar(moved_to)
    return bound is not None and target is not None and bound == target and bound > 0


def _clip(op: Any, g: Any, far: Any, moved_to: Any) -> Any:
    """``Clip(g, -far, far)``, both bounds scalars of ``g``'s type (``Clip`` takes no other shape)."""
    value = _scalar(far)
    low = op.Constant(value=ir.tensor(np.asarray(-value, dtype=value.dtype)))
    high = op.Constant(value=ir.tensor(np.asarray(value, dtype=value.dtype)))
    return op.Clip(g, low, high)


#: ``Where(|g| < far, g, far)`` -> ``Clip(g, -far, far)``.
GUARD_AS_CLIP = pattern.RewriteRule(_far_guard, _clip, _is_far_guard)


def guards_as_clip(model: ir.Model) -> int:
    """Replace every far-position guard of ``model`` (main graph, subgraphs, local functions) by a ``Clip``, in
    place; returns how many were replaced."""
    return GUARD_AS_CLIP.apply_to_model(model)


def for_target(model: ir.Model, target: str) -> int:
    """``model`` in the graph patterns of ``target`` (one of :data:`TARGETS`), in place; returns how many
    patterns were replaced."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    return guards_as_clip(model)

