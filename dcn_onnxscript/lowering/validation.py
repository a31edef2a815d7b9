"""Export-time checks of deform_conv2d arguments, with messages that name the argument, the dimension and
the expected value. Shapes are tuples whose dynamic dimensions are ``None`` (those are not checked)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from dcn_onnxscript.lowering.layer import Layer

Shape = Optional[Sequence[Optional[int]]]


def static_shape(value) -> Optional[tuple[Optional[int], ...]]:
    """The shape of an ONNX IR value (``onnx_ir.Value``, as the exporter and the rewriter see them) with
    every unknown dimension as ``None``; ``None`` when the value is missing or even its rank is unknown."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def check_deform_conv2d_args(
    *,
    input_shape: Shape,
    weight_shape: Shape,
    offset_shape: Shape,
    mask_shape: Shape = None,
    bias_shape: Shape = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
) -> None:
    """Raise ``ValueError`` unless the arguments describe a valid deformable convolution.

    ``input_shape`` (N, C, H, W), ``weight_shape`` (O, C/groups, kH, kW), ``offset_shape``
    (N, 2·offset_groups·kH·kW, Ho, Wo), ``mask_shape`` (N, offset_groups·kH·kW, Ho, Wo) or ``None`` (no
    mask), ``bias_shape`` (O,) or ``None``; ``stride``, ``padding`` (begin pads; symmetric as in
    torchvision), ``dilation``: (h, w). A shape of ``None`` means unknown rank and is not checked.
    """
    _check_positive("stride", stride)
    _check_positive("dilation", dilation)
    for name, value in (("groups", groups), ("offset_groups", offset_groups)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if any(p < 0 for p in padding):
        raise ValueError(f"padding must be non-negative, got {tuple(padding)}")

    _check_rank("input", input_shape, 4, "(N, C, H, W)")
    _check_rank("weight", weight_shape, 4, "(O, C/groups, kH, kW)")
    _check_rank("offset", offset_shape, 4, "(N, 2*offset_groups*kH*kW, Ho, Wo)")
    _check_rank("mask", mask_shape, 4, "(N, offset_groups*kH*kW, Ho, Wo)")
    _check_rank("bias", bias_shape, 1, "(O,)")

    n, c, h, w = input_shape if input_shape is not None else (None,) * 4
    o, c_per_group, kh, kw = weight_shape if weight_shape is not None else (None,) * 4
    if c is not None:
        if c % groups:
            raise ValueError(f"input dimension 1 (channels) = {c} must be divisible by groups = {groups}")
        if c % offset_groups:
            raise ValueError(
                f"input dimension 1 (channels) = {c} must be divisible by offset_groups = {offset_groups}"
            )
        _check_dim("weight", weight_shape, 1, c // groups, "input channels / groups")
    if o is not None and o % groups:
        raise ValueError(f"weight dimension 0 (out channels) = {o} must be divisible by groups = {groups}")
    for axis in (2, 3):
        size = (weight_shape or (None,) * 4)[axis]
        if size is not None and size < 1:
            raise ValueError(f"weight dimension {axis} (kernel size) must be positive, got {size}")

    taps = kh * kw if kh is not None and kw is not None else None
    out_h = _output_size(h, kh, stride[0], padding[0], dilation[0])
    out_w = _output_size(w, kw, stride[1], padding[1], dilation[1])
    if out_h is not None and out_h < 1 or out_w is not None and out_w < 1:
        raise ValueError(
            f"the output would be empty: input {h}x{w}, kernel {kh}x{kw}, stride {tuple(stride)}, "
            f"padding {tuple(padding)}, dilation {tuple(dilation)}"
        )
    for name, shape, per_tap in (("offset", offset_shape, 2), ("mask", mask_shape, 1)):
        _check_dim(name, shape, 0, n, "the input's batch size")
        expected = per_tap * offset_groups * taps if taps is not None else None
        _check_dim(name, shape, 1, expected, f"{'2*' if per_tap == 2 else ''}offset_groups*kH*kW")
        _check_dim(name, shape, 2, out_h, "the output height")
        _check_dim(name, shape, 3, out_w, "the output width")
    _check_dim("bias", bias_shape, 0, o, "the weight's out channels")


def _output_size(size, kernel, stride: int, pad: int, dilation: int) -> Optional[int]:
    """Convolution output size along one axis, or ``None`` when the input or kernel size is unknown."""
    if size is None or kernel is None:
        return None
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _check_positive(name: str, values: Sequence[int]) -> None:
    if len(values) != 2 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be two positive integers (h, w), got {tuple(values)}")


def _check_rank(name: str, shape: Shape, rank: int, layout: str) -> None:
    if shape is not None and len(shape) != rank:
        raise ValueError(f"{name} must have rank {rank}, {layout}; got shape {tuple(shape)}")


def _check_dim(name: str, shape: Shape, axis: int, expected: Optional[int], meaning: str) -> None:
    if shape is None or expected is None or shape[axis] is None:
        return
    if shape[axis] != expected:
        raise ValueError(
            f"{name} dimension {axis} must be {expected} ({meaning}), got {shape[axis]} "
            f"(shape {tuple(shape)})"
        )


def checked_layer(*, input_shape: Shape, weight_shape: Shape, offset_shape: Shape, mask_shape: Shape,
                  bias_shape: Shape, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                  groups: int, offset_groups: int, dtype: int, bias: bool, mask: bool) -> Layer:
    """The :class:`~dcn_onnxscript.lowering.layer.Layer` of a deform_conv2d call, after
    :func:`check_deform_conv2d_args` (``mask_shape`` is only read when ``mask``), with the static sizes of
    ``input_shape`` (N, H, W) and ``offset_shape`` (Ho, Wo); the weight's shape must be static, since it sets
    the kernel and the channels. Raises ``ValueError``."""
    from dcn_onnxscript.lowering.layer import Layer

    check_deform_conv2d_args(
        input_shape=input_shape, weight_shape=weight_shape, offset_shape=offset_shape,
        mask_shape=mask_shape if mask else None, bias_shape=bias_shape, stride=stride, padding=padding,
        dilation=dilation, groups=groups, offset_groups=offset_groups,
    )
    if weight_shape is None or None in weight_shape:
        raise ValueError(f"weight must have a static shape (O, C/groups, kH, kW), got {weight_shape}")
    out_channels, per_group, kh, kw = weight_shape
    n, _, h, w = input_shape if input_shape is not None else (None,) * 4
    ho, wo = offset_shape[2:] if offset_shape is not None else (None, None)
    return Layer(kernel=(kh, kw), stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                 groups=groups, offset_groups=offset_groups, in_channels=per_group * groups,
                 out_channels=out_channels, dtype=dtype, bias=bias, mask=mask, batch=n, input_size=(h, w),
                 output_size=(ho, wo))


def check_core_args(core, *, input_shape: Shape, offset_shape: Shape, mask_shape: Shape = None) -> None:
    """Raise ``ValueError`` unless the arguments describe a valid DCNv3 or DCNv4 core call
    (:class:`~dcn_onnxscript.lowering.dcnv3.Core`): ``input_shape`` (N, H, W, group·group_channels); DCNv3:
    ``offset_shape`` (N, Ho, Wo, group·P·2) and ``mask_shape`` (N, Ho, Wo, group·P); DCNv4: ``offset_shape`` the
    offset_mask's (N, Ho, Wo, at least group·P·3), ``mask_shape`` ``None``. P = kernel_h·kernel_w, less one with
    remove_center."""
    for name, values in (("kernel", core.kernel), ("stride", core.stride), ("dilation", core.dilation)):
        _check_positive(name, values)
    if len(core.padding) != 2 or any(p < 0 for p in core.padding):
        raise ValueError(f"pad must be two non-negative integers (h, w), got {tuple(core.padding)}")
    for name, value in (("group", core.group), ("group_channels", core.group_channels)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not math.isfinite(core.offset_scale):
        raise ValueError(f"offset_scale must be finite, got {core.offset_scale}")
    if core.points < 1:
        raise ValueError(f"remove_center leaves no point of a {core.kernel[0]}x{core.kernel[1]} kernel")
    if core.version not in (3, 4):
        raise ValueError(f"version must be 3 or 4, got {core.version}")
    offset_name = "offset" if core.version == 3 else "offset_mask"
    _check_rank("input", input_shape, 4, "(N, H, W, group*group_channels)")
    _check_rank(offset_name, offset_shape, 4, "(N, Ho, Wo, channels)")
    _check_rank("mask", mask_shape, 4, "(N, Ho, Wo, group*P)")
    n, h, w, _ = input_shape if input_shape is not None else (None,) * 4
    _check_dim("input", input_shape, 3, core.channels, "group*group_channels")
    out_h, out_w = core.output_size((h, w))
    if out_h is not None and out_h < 1 or out_w is not None and out_w < 1:
        raise ValueError(f"the output would be empty: input {h}x{w}, kernel {core.kernel}, stride {core.stride}, "
                         f"pad {core.padding}, dilation {core.dilation}")
    P = core.points
    for name, shape in ((offset_name, offset_shape), ("mask", mask_shape)):
        _check_dim(name, shape, 0, n, "the input's batch size")
        _check_dim(name, shape, 1, out_h, "the output height")
        _check_dim(name, shape, 2, out_w, "the output width")
    _check_dim("mask", mask_shape, 3, core.group * P, "group*P")
    if core.version == 3:
        _check_dim("offset", offset_shape, 3, core.group * P * 2, "group*P*2")
    elif offset_shape is not None and offset_shape[3] is not None and offset_shape[3] < core.group * P * 3:
        raise ValueError(f"offset_mask dimension 3 must be at least {core.group * P * 3} (group*P*3), got "
                         f"{offset_shape[3]} (shape {tuple(offset_shape)})")
