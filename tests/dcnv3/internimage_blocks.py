"""DCNv3 and DCNv4 blocks as the papers' modules define them (InternImage's ``DCNv3``, FlashInternImage's
``DCNv4``), written for the tests: input_proj, depthwise conv → LayerNorm → GELU, offset and mask linears
(softmax over each group's points for DCNv3), the core, output_proj. Their core calls go through this
module's names, as upstream's do; those names stand for the CUDA extensions here, which are absent."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn


class _MissingExtension:
    """Stands for a compiled CUDA extension that is not installed."""

    @staticmethod
    def apply(*args):
        raise RuntimeError("the CUDA extension is not available")


DCNv3Function = DCNv4Function = _MissingExtension


def dcnv3_core_pytorch(*args):
    raise RuntimeError("InternImage's pure-PyTorch core is not copied into these tests")


class DCNv3(nn.Module):
    """InternImage's DCNv3 module: (N, H, W, C) -> (N, H, W, C). ``pytorch_core``: call ``dcnv3_core_pytorch``
    (InternImage's ``DCNv3_pytorch``) instead of ``DCNv3Function``."""

    def __init__(self, channels=16, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 remove_center=False, pytorch_core=False):
        super().__init__()
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.pad, self.dilation = pad, dilation
        self.group, self.group_channels, self.offset_scale = group, channels // group, offset_scale
        self.remove_center, self.pytorch_core = int(remove_center), pytorch_core
        points = kernel_size * kernel_size - self.remove_center
        self.dw_conv = nn.Sequential(nn.Conv2d(channels, channels, kernel_size, 1, (kernel_size - 1) // 2,
                                               groups=channels), _ChannelsLast(), nn.LayerNorm(channels), nn.GELU())
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)

    def core_inputs(self, input):
        """x, offset, mask: what the core is called with."""
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        mask = F.softmax(self.mask(x1).reshape(N, H, W, self.group, -1), -1).reshape(N, H, W, -1)
        return x, self.offset(x1), mask

    def forward(self, input):
        x, offset, mask = self.core_inputs(input)
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        if self.pytorch_core:
            x = dcnv3_core_pytorch(x, offset, mask, k, k, s, s, p, p, d, d, self.group, self.group_channels,
                                   self.offset_scale, self.remove_center)
        else:
            x = DCNv3Function.apply(x, offset, mask, k, k, s, s, p, p, d, d, self.group, self.group_channels,
                                    self.offset_scale, 256, self.remove_center)
        return self.output_proj(x)


class DCNv4(nn.Module):
    """FlashInternImage's DCNv4 module: (N, H·W, C) -> (N, H·W, C); offsets and masks from one linear padded to a
    multiple of 8 channels."""

    def __init__(self, channels=32, kernel_size=3, stride=1, pad=1, dilation=1, group=2, offset_scale=1.0,
                 dw_kernel_size=3, remove_center=False):
        super().__init__()
        self.channels, self.kernel_size, self.stride = channels, kernel_size, stride
        self.pad, self.dilation = pad, dilation
        self.group, self.group_channels, self.offset_scale = group, channels // group, offset_scale
        self.remove_center = int(remove_center)
        points = group * (kernel_size * kernel_size - self.remove_center)
        self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size, 1, (dw_kernel_size - 1) // 2,
                                        groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil(points * 3 / 8) * 8))
        self.value_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)

    def core_inputs(self, input, shape):
        """x, offset_mask: what the core is called with."""
        N, L, C = input.shape
        H, W = shape
        x = self.value_proj(input).reshape(N, H, W, -1)
        dw = self.offset_mask_dw(input.view(N, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(N, L, C)
        return x, self.offset_mask(dw).reshape(N, H, W, -1)

    def forward(self, input, shape):
        N, L, _ = input.shape
        x, offset_mask = self.core_inputs(input, shape)
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        x = DCNv4Function.apply(x, offset_mask, k, k, s, s, p, p, d, d, self.group, self.group_channels,
                                self.offset_scale, 256, self.remove_center)
        return self.output_proj(x.view(N, L, -1))


class _ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)
