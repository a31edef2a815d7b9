"""Exports a small DCNv2 block for the browser page next to it (index.html): conv -> offset/mask predictor ->
DeformConv2d -> relu, random weights, at a static 1x3x128x128 (what both WebGPU builds of onnxruntime-web run
on the GPU), opset 19 (GridSample-20 has no WebGPU kernel).

    python examples/web/export.py            # writes examples/web/block.onnx
"""

from __future__ import annotations

import pathlib
import sys

import torch
import torchvision

import dcn_onnxscript  # noqa: F401  (registers the translation of deform_conv2d)

#: The page's input size (N, C, H, W).
SIZE = (1, 3, 128, 128)
#: ONNX opset: the newest whose GridSample both WebGPU builds run on the GPU.
OPSET = 19


class Block(torch.nn.Module):
    """(N, 3, H, W) -> (N, 8, H, W): conv, offset/mask predictor, DCNv2 3x3, relu."""

    def __init__(self, channels: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.predictor = torch.nn.Conv2d(channels, 27, 3, padding=1)
        self.dcn = torchvision.ops.DeformConv2d(channels, channels, 3, padding=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img)
        offset, mask = torch.split(self.predictor(x), [18, 9], dim=1)
        return torch.relu(self.dcn(x, offset, torch.sigmoid(mask)))


def export(path: pathlib.Path, seed: int = 0) -> Block:
    """Writes the block of ``seed`` to ``path`` (input ``img``, output ``y``) and returns it."""
    block = Block(seed=seed).eval()
    program = torch.onnx.export(block, (torch.rand(*SIZE),), dynamo=True, opset_version=OPSET, verbose=False,
                                input_names=["img"], output_names=["y"])
    program.save(str(path))
    return block


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("block.onnx")
    export(target)
    print(f"wrote {target}")
