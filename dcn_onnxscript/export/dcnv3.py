"""The DCNv3 and DCNv4 cores (``dcn_onnxscript::dcnv3`` / ``::dcnv4``, :mod:`dcn_onnxscript.ops`) in both
``torch.onnx`` exporters.

Each exporter writes a core through :func:`dcn_onnxscript.lowering.dcnv3.lower` ("grid_sample" straight from
the cores' layouts, "gather" as the deform_conv2d layer the core equals), the way it writes
``torchvision::deform_conv2d``:

- dynamo: the translation checks the call and writes one placeholder node (the core's inputs and attributes,
  :data:`dcn_onnxscript.rewrite.rewriter.CORE_OPS`); the conversion step lowers it at the final opset, as it
  lowers deform_conv2d's placeholders;
- TorchScript: the symbolic writes the whole core through ``g.op`` ("auto" lowering at the export's opset).
"""

from __future__ import annotations

from typing import Callable

from onnx.defs import OpSchema
from onnxscript.values import Op, Opset, TracedOnnxFunction
from torch.onnx import symbolic_helper

from dcn_onnxscript.export import _internals
from dcn_onnxscript.lowering import dcnv3 as lowering
from dcn_onnxscript.lowering import table
from dcn_onnxscript.lowering.dcnv3 import core_of
from dcn_onnxscript.lowering.validation import check_core_args, static_shape
from dcn_onnxscript.rewrite import rewriter

#: The operators, by the version of their core.
QUALIFIED_NAMES = {3: "dcn_onnxscript::dcnv3", 4: "dcn_onnxscript::dcnv4"}
_DOMAIN = Opset("dcn_onnxscript", 1)


def _core_placeholder(version: int) -> Op:
    """The placeholder of a core of ``version`` (:data:`~dcn_onnxscript.rewrite.rewriter.CORE_OPS`): inputs
    ``input``, ``offset``, ``mask`` (DCNv4: ``input``, ``offset_mask``), InternImage's ``TRTDCNv3`` attributes and
    the lowering's name ``impl``, in :data:`~dcn_onnxscript.rewrite.rewriter.PENDING_DOMAIN`."""
    names = ["input", "offset", "mask"] if version == 3 else ["input", "offset_mask"]
    ints = [f"{name}_{axis}" for name in ("kernel", "stride", "pad", "dilation") for axis in "hw"]
    attributes = [*(OpSchema.Attribute(name, OpSchema.AttrType.INT, name) for name in
                    (*ints, "group", "group_channels", "remove_center")),
                  OpSchema.Attribute("offset_scale", OpSchema.AttrType.FLOAT, "offset_scale"),
                  OpSchema.Attribute("impl", OpSchema.AttrType.STRING, "the lowering's name")]
    schema = OpSchema(
        f"dcnv{version}", rewriter.PENDING_DOMAIN, 1, doc="a DCNv3/DCNv4 core, lowered at torch.onnx's conversion step",
        inputs=[OpSchema.FormalParameter(name, "T") for name in names],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)"],
                           "the core's dtype")],
        attributes=attributes)
    return Op(Opset(rewriter.PENDING_DOMAIN, 1), schema.name, schema)


_CORE_PLACEHOLDERS = {version: _core_placeholder(version) for version in (3, 4)}


def _dynamo_core(core: lowering.Core, inputs: list, impl: str):
    """One core call in the dynamo exporter: checked, then its placeholder (lowered through ``impl`` at the
    conversion step, at the final opset, by :func:`dcn_onnxscript.rewrite.rewriter.lower_pending`)."""
    input, offset = inputs[:2]
    check_core_args(core, input_shape=static_shape(input), offset_shape=static_shape(offset),
                    mask_shape=static_shape(inputs[2]) if core.version == 3 else None)
    lowering.layer(core, int(input.dtype), None, (None, None), (None, None))  # the dtype check
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = (
        core.kernel, core.stride, core.padding, core.dilation)
    return _CORE_PLACEHOLDERS[core.version](
        *inputs, kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w, pad_h=pad_h,
        pad_w=pad_w, dilation_h=dilation_h, dilation_w=dilation_w, group=core.group,
        group_channels=core.group_channels, offset_scale=core.offset_scale, remove_center=int(core.remove_center),
        impl=impl)


def _translations(impl: str) -> dict[int, TracedOnnxFunction]:
    """The dynamo translations of both cores through lowering ``impl``."""

    def dcnv3(input, offset, mask, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
              pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int, offset_scale: float,
              remove_center: bool):
        """dcn_onnxscript::dcnv3(Tensor input, Tensor offset, Tensor mask, SymInt kernel_h, SymInt kernel_w, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt group, SymInt group_channels, float offset_scale, bool remove_center) -> Tensor"""  # noqa: E501
        core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                       group_channels, offset_scale, remove_center, version=3)
        return _dynamo_core(core, [input, offset, mask], impl)

    def dcnv4(input, offset_mask, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
              pad_w: int, dilation_h: int, dilation_w: int, group: int, group_channels: int, offset_scale: float,
              remove_center: bool):
        """dcn_onnxscript::dcnv4(Tensor input, Tensor offset_mask, SymInt kernel_h, SymInt kernel_w, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt group, SymInt group_channels, float offset_scale, bool remove_center) -> Tensor"""  # noqa: E501
        core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                       group_channels, offset_scale, remove_center, version=4)
        return _dynamo_core(core, [input, offset_mask], impl)

    return {3: TracedOnnxFunction(_DOMAIN, dcnv3), 4: TracedOnnxFunction(_DOMAIN, dcnv4)}


_TRANSLATIONS = {impl: _translations(impl) for impl in table.NAMES}


def _torchscript_core(g, core: lowering.Core, input, offset, mask):
    """One core call in the TorchScript exporter: checked, then written whole through ``g.op``."""
    from dcn_onnxscript.export.torchscript import _ONNX_TYPES, GraphEmitter

    sizes = _internals.tensor_sizes
    input_shape, offset_shape = sizes(input), sizes(offset)
    check_core_args(core, input_shape=input_shape, offset_shape=offset_shape,
                    mask_shape=sizes(mask) if core.version == 3 else None)
    n, h, w, _ = input_shape if input_shape is not None else (None,) * 4
    out = tuple(offset_shape[1:3]) if offset_shape is not None else (None, None)
    layer = lowering.layer(core, _ONNX_TYPES[input.type().scalarType()], n, (h, w), out)
    return lowering.lower(GraphEmitter(g), core, layer, input, offset, mask)


_CORE_ARGS = ("i",) * 10 + ("f", "b")


@symbolic_helper.parse_args("v", "v", "v", *_CORE_ARGS)
def dcnv3_symbolic(g, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                   dilation_w, group, group_channels, offset_scale, remove_center):
    """The TorchScript symbolic of ``dcn_onnxscript::dcnv3`` (arguments as :func:`dcn_onnxscript.ops.dcnv3`)."""
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=3)
    return _torchscript_core(g, core, input, offset, mask)


@symbolic_helper.parse_args("v", "v", *_CORE_ARGS)
def dcnv4_symbolic(g, input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                   dilation_w, group, group_channels, offset_scale, remove_center):
    """The TorchScript symbolic of ``dcn_onnxscript::dcnv4`` (arguments as :func:`dcn_onnxscript.ops.dcnv4`)."""
    core = core_of(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                   group_channels, offset_scale, remove_center, version=4)
    return _torchscript_core(g, core, input, offset_mask, offset_mask)


_SYMBOLICS: dict[int, Callable] = {3: dcnv3_symbolic, 4: dcnv4_symbolic}


def register(impl: str = table.DEFAULT) -> None:
    """Make both exporters translate the cores (dynamo through ``impl``, TorchScript through "auto")."""
    if impl not in _TRANSLATIONS:
        raise ValueError(f"impl must be one of {list(_TRANSLATIONS)}, got {impl!r}")
    import torch

    for version, name in QUALIFIED_NAMES.items():
        _internals.set_translation(_TRANSLATIONS[impl][version], name)
        torch.onnx.register_custom_op_symbolic(name, _SYMBOLICS[version], table.MIN_OPSET)


def unregister() -> None:
    """Undo :func:`register` (idempotent)."""
    import torch

    for name in QUALIFIED_NAMES.values():
        _internals.restore_translation(name)
        torch.onnx.unregister_custom_op_symbolic(name, table.MIN_OPSET)


def translation_table(impl: str = table.DEFAULT) -> dict[Callable, Callable]:
    """``{torch.ops.dcn_onnxscript.dcnv3.default: translation, ...dcnv4...}`` for ``torch.onnx.export(...,
    custom_translation_table=...)``; installs the conversion step that lowers their placeholders, as
    :func:`dcn_onnxscript.export.registration.translation_table` does."""
    import torch

    from dcn_onnxscript.export import registration

    _internals.wrap_convert_version(registration._convert_version)
    return {getattr(torch.ops.dcn_onnxscript, name.split("::")[1]).default: _TRANSLATIONS[impl][version]
            for version, name in QUALIFIED_NAMES.items()}
