"""DCNv2 ResNet-50: export with dynamic batch and image size, run on onnxruntime, compare to PyTorch.

As in the DCNv2 paper (Zhu et al., 2019, "Deformable ConvNets v2"), the 3x3 convolutions of stages
conv3–conv5 (torchvision's ``layer2`` … ``layer4``, 13 of them) become modulated deformable convolutions,
each with its own (offset, mask) predictor: a 3x3 convolution with the stride of the convolution it
replaces. Weights are random (``resnet50(weights=None)``, nothing is downloaded); the predictors get a
small random initialisation so that the sampling really deforms (the paper uses zeros, ``--offset-std 0``).

    python examples/dcn_resnet50.py                # export at 224x224, check at 2x3x192x160
    python examples/dcn_resnet50.py --native       # the same with native DeformConv (opset 19)
    python examples/dcn_resnet50.py --impl gather  # the other lowering of dcn_onnxscript

The default lowering, "auto", is grid_sample from opset 16 (torch's default export opset is above it) and
gather below and for float64 layers; the output says which one the export got.

Progress goes to stderr (the export takes several seconds to a minute, in torch.export, decompositions and
torch.onnx's optimizer pass; each phase is printed as it starts and ends), the results to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision
from torchvision.ops import DeformConv2d

import dcn_onnxscript
from dcn_onnxscript.export import dynamo
from dcn_onnxscript.lowering.table import DEFAULT, LOWERINGS, NAMES, resolve
from dcn_onnxscript.tools.progress import Progress

#: Kernel taps of a 3x3 convolution.
TAPS = 9
#: The first opset with a native ``DeformConv``.
NATIVE_OPSET = dynamo.NATIVE_MIN_OPSET


class ModulatedDeformConv(torch.nn.Module):
    """A 3x3 modulated deformable convolution (DCNv2) with its own (offset, mask) predictor, on
    (N, C, H, W) -> (N, O, H/stride, W/stride)."""

    def __init__(self, conv: torch.nn.Conv2d, offset_std: float) -> None:
        super().__init__()
        self.offset_mask = torch.nn.Conv2d(conv.in_channels, 3 * TAPS, 3, stride=conv.stride, padding=1)
        torch.nn.init.normal_(self.offset_mask.weight, std=offset_std)
        torch.nn.init.zeros_(self.offset_mask.bias)
        self.deform = DeformConv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1,
                                   bias=conv.bias is not None)
        self.deform.weight.data.copy_(conv.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = torch.split(self.offset_mask(x), [2 * TAPS, TAPS], dim=1)
        return self.deform(x, offset, torch.sigmoid(mask))


def build_model(seed: int = 0, offset_std: float = 0.01) -> torch.nn.Module:
    """torchvision ``resnet50(weights=None)`` with every 3x3 convolution of ``layer2`` … ``layer4``
    replaced by a :class:`ModulatedDeformConv`; random weights from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    for stage in (model.layer2, model.layer3, model.layer4):
        for block in stage:
            block.conv2 = ModulatedDeformConv(block.conv2, offset_std)
    return model.eval()


def export(model: torch.nn.Module, path: pathlib.Path, image_size: int = 224, native: bool = False, *,
           impl: Optional[str] = None, verbose: bool = False) -> float:
    """Export ``model`` to ``path`` with a dynamic batch, height and width (example input
    (1, 3, image_size, image_size)). ``impl`` picks dcn_onnxscript's lowering (a name of
    ``dcn_onnxscript.lowering.table.NAMES``; default: the registered one) or "native", torch's default
    translation, the native ``DeformConv`` of opset 19 (``native=True`` is the same). ``verbose`` lets
    torch.onnx print its phases. Returns the export time in seconds."""
    example = (torch.randn(1, 3, image_size, image_size),)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    native = native or impl == "native"
    table = None if native or impl is None else dcn_onnxscript.translation_table(impl)
    was_registered = dcn_onnxscript.is_registered()
    if native:
        dcn_onnxscript.unregister()
    start = time.perf_counter()
    try:
        torch.onnx.export(model, example, str(path), dynamo=True, dynamic_shapes=(dims,),
                          opset_version=NATIVE_OPSET if native else None, custom_translation_table=table,
                          verbose=verbose)
    finally:
        if was_registered:
            dcn_onnxscript.register()
    return time.perf_counter() - start


def max_relative_error(path: pathlib.Path, model: torch.nn.Module, shape: Sequence[int], threads: int = 0) -> float:
    """Run the ONNX model at ``path`` and ``model`` (float32 eager) on one random input of ``shape``
    (N, 3, H, W); returns max |onnx - eager| / max |eager| over the (N, 1000) logits."""
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = model(x).numpy()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def translation(impl: str, path: pathlib.Path) -> str:
    """How the ONNX file at ``path``, exported with ``impl``, writes the deformable convolutions: native
    ``DeformConv``, or the lowering ``impl`` stands for at the file's opset (float32 layers)."""
    if impl == "native":
        return "native DeformConv"
    model = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    lowering = resolve(impl, opset, onnx.TensorProto.FLOAT)
    return f"portable: {lowering}" + (f" ({impl} at opset {opset})" if lowering != impl else f" (opset {opset})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="where to write the .onnx file (default: a temporary directory, removed at exit)")
    parser.add_argument("--image-size", type=int, default=224, help="export example size (square)")
    parser.add_argument("--check-shape", type=int, nargs=4, default=(2, 3, 192, 160), metavar=("N", "C", "H", "W"),
                        help="input shape of the onnxruntime check (another size than the export's)")
    parser.add_argument("--impl", choices=[*NAMES, "native"], default=DEFAULT,
                        help=f"dcn_onnxscript's lowering, or native DeformConv (default: {DEFAULT}: grid_sample "
                             f"from opset {LOWERINGS['grid_sample'].min_opset}, gather below and for float64)")
    parser.add_argument("--native", action="store_true", help="export native DeformConv (opset 19): --impl native")
    parser.add_argument("--offset-std", type=float, default=0.01, help="std of the offset/mask predictors' weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    impl = "native" if args.native else args.impl

    progress = Progress()
    progress(f"building the DCNv2 ResNet-50 (seed {args.seed})")
    model = build_model(args.seed, args.offset_std)
    with contextlib.ExitStack() as stack:
        path = args.output or pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dcn_resnet50.onnx"
        progress(f"exporting with impl={impl} at 1x3x{args.image_size}x{args.image_size} to {path}; torch.onnx's "
                 f"phases follow")
        with contextlib.redirect_stdout(progress):
            seconds = export(model, path, args.image_size, impl=impl, verbose=True)
        progress(f"exported in {seconds:.1f} s; checking on onnxruntime at {'x'.join(map(str, args.check_shape))} "
                 f"against PyTorch eager")
        error = max_relative_error(path, model, args.check_shape)
        progress("done")
        print(f"wrote           {path}{'' if args.output else ' (temporary: removed at exit; --output keeps it)'}")
        print(f"translation     {translation(impl, path)}")
        print(f"export time     {seconds:.1f} s (example 1x3x{args.image_size}x{args.image_size})")
        print(f"max rel. error  {error:.2g} at {'x'.join(map(str, args.check_shape))} against PyTorch eager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
