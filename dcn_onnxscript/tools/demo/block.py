"""The demo's network and run: export with a dynamic batch, height and width, check with onnx.checker, run
on onnxruntime at another size than the export's, compare to torchvision in float64."""

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
from dcn_onnxscript.tools.progress import Progress

#: Kernel taps of the 3x3 deformable convolution.
TAPS = 9
#: The export's example input, and the other size the ONNX model runs at.
EXAMPLE_SHAPE, RUN_SHAPE = (1, 3, 32, 32), (2, 3, 45, 37)


class DCNv2Block(torch.nn.Module):
    """conv -> (offset, mask) predictor -> modulated deformable 3x3 conv -> ReLU, on (N, C, H, W)."""

    def __init__(self, channels: int = 16, offset_groups: int = 2) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.offset_mask = torch.nn.Conv2d(channels, 3 * offset_groups * TAPS, 3, padding=1)
        self.deform = DeformConv2d(channels, channels, 3, padding=1)
        self.split = 2 * offset_groups * TAPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        offset_mask = self.offset_mask(features)
        offset = offset_mask[:, : self.split]
        mask = torch.sigmoid(offset_mask[:, self.split :])
        return torch.relu(self.deform(features, offset, mask))


def run(args: argparse.Namespace, progress: Progress) -> int:
    with tempfile.TemporaryDirectory(prefix="dcn_onnxscript_demo_") as folder:
        output = args.output or pathlib.Path(folder) / "dcnv2_block.onnx"
        return _demo(args, output, kept=args.output is not None, progress=progress)


def _demo(args: argparse.Namespace, output: pathlib.Path, kept: bool, progress: Progress) -> int:
    torch.manual_seed(args.seed)
    model = DCNv2Block().eval()
    for parameter in model.offset_mask.parameters():  # large offsets, so the sampling really deforms
        torch.nn.init.normal_(parameter, std=0.5)
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    with progress.step(f"exporting with impl={args.impl} (torch.onnx dynamo exporter)"):
        torch.onnx.export(
            model, (torch.randn(*EXAMPLE_SHAPE),), str(output), dynamo=True, opset_version=args.opset,
            dynamic_shapes=({0: batch, 2: height, 3: width},), verbose=False,
            custom_translation_table=dcn_onnxscript.translation_table(args.impl),
        )
    onnx_model = onnx.load(str(output))
    onnx.checker.check_model(onnx_model, full_check=True)

    x = torch.randn(*RUN_SHAPE)  # another size than the example's
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
    print(f"input        {tuple(x.shape)} (exported at {EXAMPLE_SHAPE})")
    print(f"max |error|  {np.abs(actual - expected).max():.3g} against torchvision (float64)")
    return 0


def _default_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
