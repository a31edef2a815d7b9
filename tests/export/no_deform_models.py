"""Models without a deformable convolution, exported with the dynamo exporter at the opsets given, in this
process; with ``--import-package``, ``dcn_onnxscript`` is imported first. Prints one JSON object: for each
"model/opset", whether the export succeeded, the opset the file states, the error's type and first line,
and the largest difference of onnxruntime's output from eager PyTorch.

    python tests/export/no_deform_models.py [--import-package] --models conv_relu_mul ... --opsets 12 13 ...

Run by tests/export/test_side_effects.py, each way in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch


class ConvReluMul(torch.nn.Module):
    """Conv → ReLU → × 2 (the smallest model whose export torch converts below opset 18)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)) * 2.0


class SmallResNet(torch.nn.Module):
    """Conv → BatchNorm → ReLU → MaxPool → a residual block → global average pool → flatten → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class NormAttention(torch.nn.Module):
    """LayerNorm → Linear → softmax over the last axis → attention product (a transformer's pieces)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(12)
        self.query = torch.nn.Linear(12, 12)

    def forward(self, x):
        tokens = self.norm(x.flatten(2).transpose(1, 2)[..., :12])
        weights = torch.softmax(self.query(tokens) @ tokens.transpose(1, 2), dim=-1)
        return weights @ tokens


class Upsample(torch.nn.Module):
    """Conv → bilinear upsampling ×2 → Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(torch.nn.functional.interpolate(self.conv(x), scale_factor=2, mode="bilinear"))


MODELS = {"conv_relu_mul": ConvReluMul, "small_resnet": SmallResNet, "norm_attention": NormAttention,
          "upsample": Upsample}


def outcome(name: str, opset: int) -> dict:
    import onnxruntime

    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 12, 12)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, verbose=False).model_proto
    except Exception as error:  # noqa: BLE001  (the outcome is what is compared)
        return {"exported": False, "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"}
    stated = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    return {"exported": True, "opset": stated, "difference": float(np.abs(actual - expected).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-package", action="store_true")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--opsets", nargs="+", type=int, default=list(range(12, 19)))
    args = parser.parse_args()
    if args.import_package:
        import dcn_onnxscript  # noqa: F401
    print(json.dumps({f"{name}/{opset}": outcome(name, opset) for name in args.models for opset in args.opsets}))


if __name__ == "__main__":
    main()
