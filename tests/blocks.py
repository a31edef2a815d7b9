"""The deployment block of the tests and benchmarks: Conv -> offset/mask predictor -> DCNv2 -> ReLU, and its
five exports (dynamo at torch's default opset, static and dynamic; dynamo at opset 17; TorchScript at 13
and 17), and the same block with native ``DeformConv`` (torch's own translation, opset 19)."""

from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np
import onnx
import torch
import torchvision

import dcn_onnxscript

#: Kernel taps of the 3x3 deformable convolution.
TAPS = 9
#: The first opset with a native ``DeformConv``.
NATIVE_OPSET = 19


class DeployBlock(torch.nn.Module):
    """Conv 3->C, an offset/mask predictor Conv C->27 (offset 18, sigmoid mask 9), DCNv2 C->C_out 3x3, ReLU:
    (N, 3, H, W) -> (N, C_out, H, W). ``offset_scale`` multiplies the predictor's weights: 4 gives offsets of
    a pixel or two, 1 sub-pixel ones."""

    def __init__(self, channels: int = 8, seed: int = 0, out_channels: Optional[int] = None,
                 offset_scale: float = 4.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.predictor = torch.nn.Conv2d(channels, 3 * TAPS, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(channels, out_channels or channels, 3, padding=1)
        with torch.no_grad():  # offsets of a pixel or two, so that samples land between and outside pixels
            self.predictor.weight.mul_(offset_scale)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        offset, mask = torch.split(self.predictor(x), [2 * TAPS, TAPS], dim=1)
        return torch.relu(self.dcn(x, offset, torch.sigmoid(mask)))


#: Generated blocks for the int8 comparisons: (channels, out_channels, seed, offset_scale, input shape).
INT8_BLOCKS = [(8, 8, 0, 4.0, (1, 3, 32, 32)), (16, 32, 1, 4.0, (1, 3, 48, 40)), (32, 16, 2, 1.0, (1, 3, 40, 48)),
               (16, 16, 3, 8.0, (1, 3, 32, 40))]


def images(kind: str, count: int, seed: int, shape) -> list[np.ndarray]:
    """``count`` inputs of ``shape``: "random" (standard normal noise) or "smooth" (image-like: bicubic
    upsampled low-frequency noise plus a random linear gradient per channel; no data set is downloaded)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
    return [_smooth(rng, shape) for _ in range(count)]


def _smooth(rng: np.random.Generator, shape) -> np.ndarray:
    n, c, h, w = shape
    coarse = torch.from_numpy(rng.standard_normal((n, c, max(2, h // 8), max(2, w // 8))).astype(np.float32))
    low = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).numpy()
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    gradient = rng.uniform(-1, 1, (n, c, 1, 1)) * yy + rng.uniform(-1, 1, (n, c, 1, 1)) * xx
    return (low + gradient).astype(np.float32)


#: name -> (exporter, opset (None: torch's default), dynamic shapes); "native" is torch's DeformConv.
EXPORTS = {
    "dynamo-default": ("dynamo", None, False),
    "dynamo-default-dynamic": ("dynamo", None, True),
    "dynamo-17": ("dynamo", 17, False),
    "torchscript-13": ("torchscript", 13, False),
    "torchscript-17": ("torchscript", 17, False),
}


def export(module: torch.nn.Module, name: str, shape=(1, 3, 24, 20)) -> onnx.ModelProto:
    """``module`` exported the way ``name`` (a key of :data:`EXPORTS`, or "native") says, at an input of
    ``shape``; a dynamic export has a dynamic batch, height and width."""
    if name == "native":
        return export_native(module, shape)
    exporter, opset, dynamic = EXPORTS[name]
    img = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(module, (img,), buffer, dynamo=False, opset_version=opset, input_names=["img"],
                              output_names=["y"])
            return onnx.load_from_string(buffer.getvalue())
        dims = ({0: torch.export.Dim("n"), 2: torch.export.Dim("h", min=4), 3: torch.export.Dim("w", min=4)},)
        return torch.onnx.export(module, (img,), dynamo=True, opset_version=opset, verbose=False,
                                 dynamic_shapes=dims if dynamic else None).model_proto


def export_native(module: torch.nn.Module, shape, opset: Optional[int] = None) -> onnx.ModelProto:
    """``module`` with torch's own translation of deform_conv2d: one native ``DeformConv`` node."""
    was_registered = dcn_onnxscript.is_registered()
    dcn_onnxscript.unregister()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(module, (torch.randn(*shape),), dynamo=True, verbose=False,
                                     opset_version=opset or NATIVE_OPSET).model_proto
    finally:
        if was_registered:
            dcn_onnxscript.register()


def reference(module: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """``module`` in eager float64 PyTorch on ``img``."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(module).double()(torch.from_numpy(img).double()).numpy()
