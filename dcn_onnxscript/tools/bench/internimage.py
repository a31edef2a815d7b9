"""The bench's DCNv3 and DCNv4 core cases: the package's ops (``torch.ops.dcn_onnxscript.dcnv3`` / ``dcnv4``),
their inputs, and the baseline every DCNv3 user has today: InternImage's pure-PyTorch core
(``dcnv3_core_pytorch``), written here from the core's definition the way InternImage writes it, and exported
by plain ``torch.onnx`` (one ``GridSample`` over every point of every group, at opset 16, where
``F.grid_sample`` exports).

The core is 3x3, stride 1, pad 1, dilation 1, offset_scale 1 (InternImage-T's), on (1, size, size, channels)
channels-last inputs (:class:`.catalog.CoreLayer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.tools.bench.catalog import CoreLayer

#: InternImage-T's core geometry: kernel, stride, pad, dilation (h, w each).
KERNEL, STRIDE, PAD, DILATION = (3, 3), (1, 1), (1, 1), (1, 1)


def core_of(layer: CoreLayer) -> Core:
    """The :class:`~dcn_onnxscript.lowering.dcnv3.Core` of a bench case."""
    return Core(KERNEL, STRIDE, PAD, DILATION, group=layer.group, group_channels=layer.channels // layer.group,
                version=layer.version)


class CoreModule(torch.nn.Module):
    """The package's op of ``core``: (input, offset, mask) for DCNv3, (input, offset_mask) for DCNv4."""

    def __init__(self, core: Core) -> None:
        super().__init__()
        import dcn_onnxscript.ops  # noqa: F401  (defines the ops)

        self.core = core

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        c = self.core
        attributes = (*c.kernel, *c.stride, *c.padding, *c.dilation, c.group, c.group_channels, c.offset_scale,
                      c.remove_center)
        if c.version == 3:
            return torch.ops.dcn_onnxscript.dcnv3(input, offset, mask, *attributes)
        return torch.ops.dcn_onnxscript.dcnv4(input, offset, *attributes)


class PlainCore(CoreModule):
    """InternImage's pure-PyTorch DCNv3 core (DCNv3 only): positions normalised to ``grid_sample``'s
    align_corners=False units, one ``grid_sample`` of the N·G images (N·G, Cg, H, W) at every output position
    and point (N·G, Ho·Wo, P, 2), the samples weighed by the mask and summed over the points."""

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        c = self.core
        (kH, kW), (sh, sw), (ph, pw), (dh, dw) = c.kernel, c.stride, c.padding, c.dilation
        G, Cg, P = c.group, c.group_channels, c.points
        input = F.pad(input, [0, 0, pw, pw, ph, ph])  # channels last: pad W, then H
        N, H, W, _ = input.shape
        _, Ho, Wo, _ = offset.shape
        ch, cw = dh * (kH - 1) // 2, dw * (kW - 1) // 2
        points = [(ih, iw) for iw in range(kW) for ih in range(kH)]  # column-major, as the core orders them
        ky = torch.tensor([ih * dh - ch for ih, _ in points], dtype=input.dtype)
        kx = torch.tensor([iw * dw - cw for _, iw in points], dtype=input.dtype)
        rows = (torch.arange(Ho, dtype=input.dtype) * sh + ch).reshape(1, Ho, 1, 1, 1)
        cols = (torch.arange(Wo, dtype=input.dtype) * sw + cw).reshape(1, 1, Wo, 1, 1)
        delta = offset.reshape(N, Ho, Wo, G, P, 2)
        x = cols + (kx + delta[..., 0]) * c.offset_scale
        y = rows + (ky + delta[..., 1]) * c.offset_scale
        grid = torch.stack(((2 * x + 1) / W - 1, (2 * y + 1) / H - 1), -1)
        grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(N * G, Ho * Wo, P, 2)
        images = input.reshape(N, H * W, G * Cg).transpose(1, 2).reshape(N * G, Cg, H, W)
        sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        m = mask.reshape(N, Ho * Wo, G, P).transpose(1, 2).reshape(N * G, 1, Ho * Wo, P)
        output = (sampled * m).sum(-1).reshape(N, G * Cg, Ho * Wo)
        return output.transpose(1, 2).reshape(N, Ho, Wo, G * Cg)


def core_inputs(layer: CoreLayer, seed: int) -> tuple[torch.Tensor, ...]:
    """input (1, S, S, C), offsets of a few pixels and, for DCNv3, masks softmax-normalised over each group's
    points (DCNv3: offset (1, S, S, G·P·2), mask (1, S, S, G·P); DCNv4: offset_mask (1, S, S, G·P·3 padded to
    a multiple of 8), masks unnormalised)."""
    generator = torch.Generator().manual_seed(seed)
    core, s = core_of(layer), layer.size
    G, P = core.group, core.points
    x = torch.randn(1, s, s, core.channels, generator=generator)
    if core.version == 4:
        return x, torch.randn(1, s, s, -(-G * P * 3 // 8) * 8, generator=generator)
    offset = 2 * torch.randn(1, s, s, G * P * 2, generator=generator)
    mask = torch.softmax(torch.randn(1, s, s, G, P, generator=generator), -1).reshape(1, s, s, G * P)
    return x, offset, mask
