"""``python -m dcn_onnxscript demo``: export a small DCNv2 network with the dynamo exporter, run it on
onnxruntime at a new input size, and print the max error against torchvision, the ops used and the path."""

from __future__ import annotations

import argparse
import collections
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime
import torch
from torchvision.ops import DeformConv2d

import dcn_onnxscript


class DCNv2Block(torch.nn.Module):
    """conv -> (offset, mask) predictor -> modulated deformable 3x3 conv -> ReLU, on (N, C, H, W)."""

    def __init__(self, channels: int = 16, offset_groups: int = 2) -> None:
        super().__init__()
        taps = 9
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.offset_mask = torch.nn.Conv2d(channels, 3 * offset_groups * taps, 3, padding=1)
        self.deform = DeformConv2d(channels, channels, 3, padding=1)
        self.split = 2 * offset_groups * taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        offset_mask = self.offset_mask(features)
        offset = offset_mask[:, : self.split]
        mask = torch.sigmoid(offset_mask[:, self.split :])
        return torch.relu(self.deform(features, offset, mask))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="keep the .onnx file here (default: a temporary folder, removed at the end)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--impl", default=None, help="lowering (default: the registered one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dcn_onnxscript_demo_") as folder:
        return _demo(args, args.output or pathlib.Path(folder) / "dcnv2_block.onnx", kept=args.output is not None)


def _demo(args: argparse.Namespace, output: pathlib.Path, kept: bool) -> int:
    torch.manual_seed(args.seed)
    model = DCNv2Block().eval()
    for parameter in model.offset_mask.parameters():  # large offsets, so the sampling really deforms
        torch.nn.init.normal_(parameter, std=0.5)
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    torch.onnx.export(
        model, (torch.randn(1, 3, 32, 32),), str(output), dynamo=True, opset_version=args.opset,
        dynamic_shapes=({0: batch, 2: height, 3: width},), verbose=False,
        custom_translation_table=dcn_onnxscript.translation_table(args.impl) if args.impl else None,
    )
    onnx_model = onnx.load(str(output))
    onnx.checker.check_model(onnx_model, full_check=True)

    x = torch.randn(2, 3, 45, 37)  # another size than the example's
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    ops = collections.Counter(node.op_type for node in onnx_model.graph.node)
    print(f"nodes        {len(onnx_model.graph.node)} (1 deformable layer, 2 convolutions, activations)")
    print(f"wrote        {output}" if kept else "wrote        a temporary file (--output PATH keeps it)")
    print(f"opset        {_default_opset(onnx_model)}")
    print(f"ops used     {', '.join(f'{op} x{n}' for op, n in sorted(ops.items()))}")
    print(f"DeformConv   {'present' if 'DeformConv' in ops else 'absent'}")
    print(f"input        {tuple(x.shape)} (exported at (1, 3, 32, 32))")
    print(f"max |error|  {np.abs(actual - expected).max():.3g} against torchvision (float64)")
    return 0


def _default_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
