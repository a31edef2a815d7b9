"""Exports deform_conv2d_onnx_exporter's layers with one of its releases, in the venv of the torch it was written
for (torch 1.13.1 and torchvision 0.14.1, Python 3.10: ``.ci/deploy`` builds ``.venv-seedold``), as its own
process:

    python tests/seed_release_worker.py CASES.json OUT_DIR

CASES.json is a list of cases, each with ``name``, ``module`` (the path of the release's
``deform_conv2d_onnx_exporter.py``, taken from its tag), ``options`` (the keyword arguments of its
``register_deform_conv2d_onnx_op``: none before 1.1.0), ``opset``, ``dynamic`` (the inputs' batch declared
dynamic, through BiRefNet's tutorial's patch: the releases read every size off the inputs' types), ``mask``,
and the layer's ``stride``, ``padding``, ``dilation`` and ``groups``; ``OUT_DIR/NAME.npz`` holds its ``weight``
(and ``bias``) and its inputs ``x``, ``offset``, ``mask`` (the offset groups follow from their shapes). Each case
is written to ``OUT_DIR/NAME.onnx``, or its error (one line) to ``OUT_DIR/NAME.error``. Needs torch and
torchvision only.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
import sys
import warnings

import numpy as np
import torch
import torchvision


class Layer(torch.nn.Module):
    """torchvision's DeformConv2d with the case's weights; without the mask where the case has none."""

    def __init__(self, case: dict, arrays: dict) -> None:
        super().__init__()
        weight = torch.from_numpy(arrays["weight"])
        out_channels, per_group, *kernel = weight.shape
        self.conv = torchvision.ops.DeformConv2d(per_group * case["groups"], out_channels, kernel,
                                                 stride=case["stride"], padding=case["padding"],
                                                 dilation=case["dilation"], groups=case["groups"],
                                                 bias="bias" in arrays)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if "bias" in arrays:
                self.conv.bias.copy_(torch.from_numpy(arrays["bias"]))
        self.use_mask = case["mask"]

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask if self.use_mask else None)


#: BiRefNet's tutorial's patch of the exporter (as ``dcn_onnxscript.tools.bench.peers.tutorial_patch``, which
#: this venv cannot import): a dim that TorchScript does not know (the dynamic batch) -> its size from the
#: strides of a contiguous (N, C, H, W) tensor.
_SIZE_FROM_STRIDES = {3: lambda s: s[2], 2: lambda s: s[1] // s[2], 0: lambda s: s[3]}


def load_release(path: str, dynamic: bool):
    """The release's module, under a name of its own; with the tutorial's patch where ``dynamic``."""
    spec = importlib.util.spec_from_file_location(f"seed_release_{abs(hash(path))}_{dynamic}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if dynamic:
        original = module.get_tensor_dim_size

        def get_tensor_dim_size(tensor, dim):
            size = original(tensor, dim)
            if size is None and dim in _SIZE_FROM_STRIDES:
                size = _SIZE_FROM_STRIDES[dim](tensor.type().strides())
            return size

        module.get_tensor_dim_size = get_tensor_dim_size
    return module


def export(case: dict, out: pathlib.Path) -> None:
    arrays = dict(np.load(out / f"{case['name']}.npz"))
    load_release(case["module"], case["dynamic"]).register_deform_conv2d_onnx_op(**case["options"])
    layer = Layer(case, arrays).eval()
    names = ["x", "offset", "mask"]
    inputs = tuple(torch.from_numpy(arrays[name]) for name in names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, inputs, buffer, opset_version=case["opset"], input_names=names,
                          output_names=["y"],
                          dynamic_axes={name: {0: "batch"} for name in [*names, "y"]} if case["dynamic"] else None)
    (out / f"{case['name']}.onnx").write_bytes(buffer.getvalue())


def main(cases_path: str, out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    for case in json.loads(pathlib.Path(cases_path).read_text()):
        try:
            export(case, out)
        except Exception as error:  # noqa: BLE001  (the test reports whatever the release raised)
            (out / f"{case['name']}.error").write_text(f"{type(error).__name__}: {' '.join(str(error).split())}")


if __name__ == "__main__":
    main(*sys.argv[1:])
