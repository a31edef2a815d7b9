"""The bench's cases: a torch module, its example inputs and what became of every export path.

A case is a single deformable layer (:data:`.catalog.LAYERS`), the DCNv2 ResNet-50 of
``examples/dcn_resnet50.py`` or one of its blocks, BiRefNet (:mod:`.birefnet`) or a DCNv3/DCNv4 core
(:data:`.catalog.CORES`, :mod:`.internimage`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib
from types import ModuleType

import numpy as np
import torch
from torchvision.ops import DeformConv2d

from dcn_onnxscript.tools.bench import birefnet, internimage
from dcn_onnxscript.tools.bench.catalog import (
    BIREFNET,
    BLOCK,
    BLOCK_INPUT,
    CORES,
    LAYERS,
    NETWORK,
    ExportPath,
    Layer,
    paths_of,
)

_EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "dcn_resnet50.py"


@dataclasses.dataclass
class Case:
    """One row group of the table: the eager ``module`` on ``inputs``; ``dynamic``: whether exports give
    input 0 a dynamic batch, height and width; ``paths``: its export paths by row name. Filled by the
    exports: ``onnx_paths`` (row -> file; the floors have their own inputs ``floor_inputs``), ``export_s``,
    ``nodes`` (row -> (per layer, total)), ``opsets`` and ``sampling_ops`` (row -> what the file holds) and
    ``failures`` (row -> why it has no model)."""

    name: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    dynamic: bool = False
    paths: dict[str, ExportPath] = dataclasses.field(default_factory=dict)
    onnx_paths: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)
    export_s: dict[str, float] = dataclasses.field(default_factory=dict)
    nodes: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    opsets: dict[str, int] = dataclasses.field(default_factory=dict)
    sampling_ops: dict[str, str] = dataclasses.field(default_factory=dict)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    floor_inputs: dict[str, tuple[np.ndarray, ...]] = dataclasses.field(default_factory=dict)
    gemm_flops: float = 0.0


class LayerModule(torch.nn.Module):
    """A torchvision ``DeformConv2d`` (3x3, padding 1) taking (x, offset, mask) as inputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.deform = DeformConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.deform(x, offset, mask)


def layer_inputs(layer: Layer, seed: int) -> tuple[torch.Tensor, ...]:
    """x (N, C, H, W), offsets of a few pixels (N, 18, H, W) and a mask in (0, 1) (N, 9, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    n, c, s = layer.batch, layer.channels, layer.size
    x = torch.randn(n, c, s, s, generator=generator)
    offset = 2 * torch.randn(n, 18, s, s, generator=generator)
    mask = torch.rand(n, 9, s, s, generator=generator)
    return x, offset, mask


def build_module(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """The eager model of case ``name``, random weights from ``args.seed``, in eval mode."""
    if name == NETWORK:
        return load_example().build_model(args.seed)
    if name == BLOCK:
        return load_example().build_model(args.seed).layer2[0]
    if name == BIREFNET:
        return birefnet.build(args.birefnet, args.seed)
    if name in CORES:
        return internimage.CoreModule(internimage.core_of(CORES[name]))
    torch.manual_seed(args.seed)
    return LayerModule(LAYERS[name].channels).eval()


def image(size: int, seed: int) -> torch.Tensor:
    """A random (1, 3, size, size) image."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def build_case(name: str, args: argparse.Namespace) -> Case:
    """Case ``name`` with its module and inputs, nothing exported yet."""
    module, paths = build_module(name, args), paths_of(name, args.from_seed)
    if name == NETWORK:
        return Case(name, module, (image(args.image_size, args.seed),), dynamic=True, paths=paths)
    if name == BLOCK:
        x = torch.randn(*BLOCK_INPUT, generator=torch.Generator().manual_seed(args.seed))
        return Case(name, module, (x,), dynamic=True, paths=paths)
    if name == BIREFNET:
        return Case(name, module, (image(args.birefnet_size, args.seed),), paths=paths)
    if name in CORES:
        return Case(name, module, internimage.core_inputs(CORES[name], args.seed), paths=paths)
    return Case(name, module, layer_inputs(LAYERS[name], args.seed), paths=paths)


def load_example() -> ModuleType:
    """``examples/dcn_resnet50.py`` as a module (it is not installed with the package)."""
    if not _EXAMPLE.exists():
        raise FileNotFoundError(f"the {NETWORK} case needs {_EXAMPLE} (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("dcn_resnet50", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
