"""Torch ops for the deformable operators that torchvision lacks: InternImage's DCNv3 core and
FlashInternImage's DCNv4 core (``torch.ops.dcn_onnxscript.dcnv3`` / ``.dcnv4``), exportable by both
``torch.onnx`` exporters into standard ONNX ops.

Importing this module defines the ops and, while the package's translations are registered (the default),
registers theirs; ``import dcn_onnxscript`` alone does neither, so torch is unchanged for other models.
"""

from __future__ import annotations

import torch.onnx  # noqa: F401  (the package registers its deform_conv2d translation first)

from dcn_onnxscript.export import dcnv3 as _exports
from dcn_onnxscript.export import registration as _registration
from dcn_onnxscript.ops.dcnv3 import dcnv3, dcnv4

__all__ = ["dcnv3", "dcnv4"]

_registration.follow(_exports)
