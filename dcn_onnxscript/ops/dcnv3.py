"""The torch ops ``dcn_onnxscript::dcnv3`` and ``dcn_onnxscript::dcnv4``: InternImage's DCNv3 core and
FlashInternImage's DCNv4 core as ``torch.library`` custom ops, with an eager implementation in torch ops (CPU
and CUDA, no compiled extension of their own) and fake kernels for ``torch.export``.

Their arguments are upstream's (``dcnv3_core_pytorch`` and ``DCNv4Function``, less ``im2col_step``, a CUDA
batching knob); the layouts and the sampling position are those of :mod:`dcn_onnxscript.lowering.dcnv3`. The
eager implementation is the same rewrite the ONNX lowering writes: torchvision's ``deform_conv2d`` with the
weight that passes each group's channels to themselves. Offsets that are not finite or put a sample more
than 2^24 pixels away are moved to 2^24 first: their samples contribute zero (torchvision's kernel would
index memory with a NaN position). Float16 and bfloat16 cores compute in float32.

The ops are defined when :mod:`dcn_onnxscript.ops` is imported, not by ``import dcn_onnxscript``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import deform_conv2d

from dcn_onnxscript.lowering import dcnv3 as lowering
from dcn_onnxscript.lowering.dcnv3 import core_of
from dcn_onnxscript.lowering.layer import OffsetOrder
from dcn_onnxscript.lowering.validation import check_core_args

__all__ = ["dcnv3", "dcnv4"]

#: Offsets (in pixels, after offset_scale) at or beyond this size, or not finite, are moved to it.
_FAR = 2.0**24


def _channels(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(values).to(device)


def _forward(core: lowering.Core, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, Ho, Wo, G·Cg) of the core ``core`` (``offset`` and ``mask``: DCNv4's offset_mask both)."""
    check_core_args(core, input_shape=tuple(input.shape), offset_shape=tuple(offset.shape),
                    mask_shape=tuple(mask.shape) if core.version == 3 else None)
    computed = torch.float64 if input.dtype == torch.float64 else torch.float32
    X = input.permute(0, 3, 1, 2).to(computed)
    # torchvision's deform_conv2d reads (Δy, Δx) pairs
    channels = lowering.offset_channels(core, OffsetOrder.YX)
    delta = offset.permute(0, 3, 1, 2).to(computed).index_select(1, _channels(channels, input.device))
    shift = _channels(lowering.offset_shift(core, OffsetOrder.YX), input.device).to(computed).reshape(1, -1, 1, 1)
    delta = delta * core.offset_scale + shift
    delta = torch.where(delta.abs() < _FAR, delta, _FAR)
    m = mask.permute(0, 3, 1, 2).to(computed).index_select(1, _channels(lowering.mask_channels(core), input.device))
    W = torch.from_numpy(lowering.identity_weight(core)).to(input.device, computed)
    Y = deform_conv2d(X, delta, W, mask=m, stride=core.stride, padding=core.padding, dilation=core.dilation)
    return Y.permute(0, 2, 3, 1).to(input.dtype).contiguous()


def _static(tensor: torch.Tensor) -> tuple:
    """``tensor``'s sizes, ``None`` for a symbolic one."""
    return tuple(d if isinstance(d, int) else None for d in tensor.shape)


def _fake(core: lowering.Core, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The core's checks (``ValueError`` as ``torch.export`` traces the model) and an empty (N, Ho, Wo, C): N and
    C of ``input``, Ho and Wo of ``offset``."""
    check_core_args(core, input_shape=_static(input), offset_shape=_static(offset),
                    mask_shape=_static(mask) if core.version == 3 else None)
    return input.new_empty((input.shape[0], offset.shape[1], offset.shape[2], input.shape[3]))


@torch.library.custom_op("dcn_onnxscript::dcnv3", mutates_args=())
def dcnv3(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel_h: int, kernel_w: int,
          stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
          group_channels: int, offset_scale: float, remove_center: bool) -> torch.Tensor:
    """InternImage's DCNv3 core.

    Args:
        input (Tensor[N, H, W, group * group_channels]): channels last.
        offset (Tensor[N, Ho, Wo, group * P * 2]): (Δx, Δy) of point p of group g at channels (g·P + p)·2 and
            + 1; points column-major over the kernel (p = kw·kernel_h + kh), P = kernel_h·kernel_w, less the
            centre with ``remove_center``.
        mask (Tensor[N, Ho, Wo, group * P]): the weight of point p of group g at channel g·P + p.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w (int): the geometry.
        group (int), group_channels (int): G groups of Cg channels.
        offset_scale (float): scales the kernel grid around its centre and the offsets.
        remove_center (bool): leave out the kernel's centre point.

    Returns:
        Tensor[N, Ho, Wo, group * group_channels]

    Examples::

        >>> import dcn_onnxscript.ops
        >>> y = torch.ops.dcn_onnxscript.dcnv3(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 4, 16, 1.0, False)
    """
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=3)
    return _forward(core, input, offset, mask)


@dcnv3.register_fake
def _dcnv3_fake(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                group, group_channels, offset_scale, remove_center):
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=3)
    return _fake(core, input, offset, mask)


@torch.library.custom_op("dcn_onnxscript::dcnv4", mutates_args=())
def dcnv4(input: torch.Tensor, offset_mask: torch.Tensor, kernel_h: int, kernel_w: int, stride_h: int,
          stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int,
          offset_scale: float, remove_center: bool) -> torch.Tensor:
    """FlashInternImage's DCNv4 core: DCNv3's sampling with offsets and masks in one tensor, masks not
    normalised.

    Args:
        input (Tensor[N, H, W, group * group_channels]): channels last.
        offset_mask (Tensor[N, Ho, Wo, D]): D ≥ group·P·3 (DCNv4's module pads it to a multiple of 8); group
            g's 3P channels start at g·3P: (Δx, Δy) of point p at 2p and 2p + 1, then the P masks at 2P + p.
            Points as in :func:`dcnv3`.
        kernel_h, ..., remove_center: as in :func:`dcnv3`.

    Returns:
        Tensor[N, Ho, Wo, group * group_channels]
    """
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=4)
    return _forward(core, input, offset_mask, offset_mask)


@dcnv4.register_fake
def _dcnv4_fake(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                group, group_channels, offset_scale, remove_center):
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=4)
    return _fake(core, input, offset_mask, offset_mask)
