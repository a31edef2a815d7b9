"""``python -m dcn_onnxscript rewrite IN.onnx OUT.onnx``: make an existing ONNX model's deformable
convolutions portable.

Every deformable-convolution node is replaced by the nodes of a lowering (:mod:`dcn_onnxscript.lowering`,
the same ones the exporters write; "auto" by default: grid_sample from opset 16, gather below and for
float64), written through an ``onnx_ir`` tape at the opset of the node's graph, its weights folded into
initializers. A node whose weight shape is unknown gets a call of the standalone script function
instead, inlined afterwards. The result holds nothing but standard ONNX ops and runs wherever they do
(onnxruntime, OpenVINO, tract, MNN, ...). The rest of the model (node and value names, initializers,
metadata, other local functions) is left as it was.

Nodes recognised, wherever they are: the main graph, ``If``/``Loop``/``Scan`` bodies, model-local functions.

``DeformConv`` (ONNX, opset 19 and 22)
    inputs ``X`` (N, C, H, W), ``W`` (O, C/group, kH, kW), ``offset`` (N, 2·offset_group·kH·kW, Ho, Wo),
    optional ``B`` (O) and ``mask`` (N, offset_group·kH·kW, Ho, Wo), either left out or named ``""``;
    attributes ``strides``, ``pads`` (begin h, begin w, end h, end w), ``dilations``, ``group``,
    ``offset_group``, ``kernel_shape``. The end pads only fix the output size, which the portable function
    reads from ``offset``'s shape, so asymmetric pads are carried over as they are.

``MMCVModulatedDeformConv2d`` (domain ``mmcv``, or ``mmdeploy`` as mmdeploy's own rewriter names it)
    inputs ``input``, ``offset``, ``mask``, ``weight``, optional ``bias``: note the weight comes *after*
    offset and mask; attributes ``stride``, ``padding`` (pad_h, pad_w, both sides), ``dilation``, ``groups``,
    ``deform_groups``. Read from ``ModulatedDeformConv2dFunction.symbolic`` in mmcv
    ``mmcv/ops/modulated_deform_conv.py`` and ``modulated_deform_conv_default`` in mmdeploy
    ``mmdeploy/mmcv/ops/modulated_deform_conv.py``; the attribute names and index use (``stride[0]`` = h,
    ``padding[0]`` = pad_h, ``padding[1]`` = pad_w) from mmdeploy's onnxruntime kernel
    ``csrc/mmdeploy/backend_ops/onnxruntime/modulated_deform_conv/modulated_deform_conv.cpp``, whose im2col
    reads offset channel ``g·2·K + 2·k`` as Δy and ``+ 1`` as Δx of tap k = kh·kW + kw in offset group g and
    mask channel ``g·K + k``: the layout of ``DeformConv`` and torchvision, so offset and mask pass unchanged.

``MMCVDeformConv2d`` (domain ``mmcv`` or ``mmdeploy``)
    inputs ``input``, ``offset``, ``weight`` (no mask, no bias); attributes ``stride``, ``padding``,
    ``dilation``, ``groups``, ``deform_groups``, and from mmcv's exporter also ``bias`` (mmcv asserts it is
    0) and ``im2col_step`` (a CUDA batching knob, ignored). Read from ``DeformConv2dFunction.symbolic`` in
    mmcv ``mmcv/ops/deform_conv.py`` (``padding`` = (pad_h, pad_w)) and ``deform_conv__default`` in
    mmdeploy ``mmdeploy/mmcv/ops/deform_conv.py``, which writes four values ``[pad_h, pad_h, pad_w, pad_w]``
    while mmdeploy's kernels (``csrc/mmdeploy/backend_ops/onnxruntime/deform_conv/cpu/deform_conv.cpp``,
    ``.../tensorrt/deform_conv/trt_deform_conv.cpp``) read ``padding[0]`` as pad_h and ``padding[1]`` as
    pad_w. A four-value ``padding`` is therefore taken only where both readings agree (``padding[1] ==
    padding[2]``); otherwise the node is refused as ambiguous. Offset layout as above.

``TRTDCNv3`` (domain ``mmdeploy``): InternImage's DCNv3 core
    inputs ``input`` (N, H, W, C), ``offset``, ``mask`` in DCNv3's layout (:mod:`dcn_onnxscript.lowering.dcnv3`);
    attributes ``kernel_h``, ``kernel_w``, ``stride_h``, ``stride_w``, ``pad_h``, ``pad_w``, ``dilation_h``,
    ``dilation_w``, ``group``, ``group_channels``, ``offset_scale``, ``im2col_step`` (a CUDA batching knob,
    ignored) and ``remove_center``, as ``DCNv3Function.symbolic`` in InternImage's
    ``ops_dcnv3/functions/dcnv3_func.py`` writes them. The core is lowered as the exporters lower it
    (:func:`dcn_onnxscript.lowering.dcnv3.lower`); with ``impl="native"``, its layout steps around a
    ``DeformConv``.

deform_conv2d_onnx_exporter's layers (1.x and its fork: some 60 to 120 primitive nodes around four samplers)
    found, their attributes inferred and proven, each replaced by one ``DeformConv`` first
    (:mod:`dcn_onnxscript.rewrite.seed`; main graph only). A layer that does not prove equal is left as it
    was, with one line in :attr:`RewriteResult.notes`.

With ``impl="native"``, each node becomes ONNX ``DeformConv`` (opset 19 and later) instead of a lowering;
native ``DeformConv`` nodes stay as they are.

The rewritten model keeps its own default opset, which must be 12 or later (16 for grid_sample), unless
``--opset`` asks for a conversion (the nodes are then written in the target opset's form).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterator, Optional, Sequence

import onnx
import onnx.version_converter
import onnx_ir as ir

from dcn_onnxscript.lowering import dcnv3, table
from dcn_onnxscript.lowering.emitter import TapeEmitter
from dcn_onnxscript.lowering.layer import FLOAT_TYPES, Layer, OffsetOrder
from dcn_onnxscript.lowering.script.protos import SCRIPT_OPSET
from dcn_onnxscript.lowering.validation import check_core_args, check_deform_conv2d_args, checked_layer, static_shape
from dcn_onnxscript.rewrite import opsets, own, script_calls, seed

Progress = Callable[[str], None]
#: The domain of the placeholder ``DeformConv`` (DeformConv-19's inputs and attributes, plus the lowering's
#: name as attribute ``impl``) that the dynamo translation writes (:mod:`dcn_onnxscript.export.dynamo`) and
#: :func:`lower_pending` replaces once the model's final opset and weights are known.
PENDING_DOMAIN = "dcn_onnxscript.pending"
#: The placeholder's STRING attribute that gives the order of its offset pairs (an
#: :class:`~dcn_onnxscript.lowering.layer.OffsetOrder` value; "yx", deform_conv2d's, where absent): the
#: DCNv3/DCNv4 cores' layout steps keep their (Δx, Δy) pairs, which the lowerings read as given.
OFFSET_ORDER = "offset_order"


class RewriteError(ValueError):
    """A model the rewriter cannot handle; the message is one line and names the node."""


@dataclasses.dataclass(frozen=True)
class DeformConvCall:
    """A deformable convolution read off a node, in ``DeformConv``-19 terms; ``B``/``mask`` ``None`` when
    absent. ``pads`` = (begin h, begin w, end h, end w)."""

    X: ir.Value
    W: ir.Value
    offset: ir.Value
    B: Optional[ir.Value]
    mask: Optional[ir.Value]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    offset_group: int


@dataclasses.dataclass
class RewriteResult:
    """The rewritten model, how many nodes of each kind (``domain::op_type``) were replaced, and with which
    lowerings (``impl`` "auto" stands for one per node)."""

    model: ir.Model
    counts: collections.Counter
    lowerings: frozenset[str] = frozenset()
    #: One line per region recognised but left as it was (:mod:`.seed`).
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line, e.g. ``rewrote 3 nodes: DeformConv x2, mmcv::MMCVDeformConv2d x1``."""
        total = sum(self.counts.values())
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.counts.items()))
        return f"rewrote {total} node{'s' if total != 1 else ''}" + (f": {kinds}" if kinds else "")


# --- reading the source nodes -------------------------------------------------------------------------


def _attr(node: ir.Node, name: str) -> Optional[ir.Attr]:
    attr = node.attributes.get(name)
    if attr is not None and attr.is_ref():
        raise RewriteError(f"{_describe(node)}: attribute {name!r} refers to the enclosing function's "
                           f"attribute {attr.ref_attr_name!r}; only literal values can be rewritten")
    return attr


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = _attr(node, name)
    return default if attr is None else attr.as_int()


def _ints(node: ir.Node, name: str, default: Sequence[int], lengths: Sequence[int]) -> tuple[int, ...]:
    """An INTS attribute (or an INT, which mmcv's exporter writes for a scalar ``stride`` etc., repeated
    to the first allowed length) of one of the allowed lengths."""
    attr = _attr(node, name)
    if attr is None:
        return tuple(default)
    values = (attr.as_int(),) * lengths[0] if attr.type == ir.AttributeType.INT else tuple(attr.as_ints())
    if len(values) not in lengths:
        raise RewriteError(f"{_describe(node)}: attribute {name!r} = {list(values)} has {len(values)} values; "
                           f"only 2-D deformable convolution (attribute length {' or '.join(map(str, lengths))}) "
                           "can be rewritten")
    return values


def _input(node: ir.Node, index: int) -> Optional[ir.Value]:
    """The ``index``-th input, ``None`` where left out or named ``""``."""
    return node.inputs[index] if index < len(node.inputs) else None


def _check_input_count(node: ir.Node, least: int, most: int) -> None:
    if not least <= len(node.inputs) <= most or len(node.outputs) != 1:
        raise RewriteError(f"{_describe(node)}: expected {least} to {most} inputs and 1 output, got "
                           f"{len(node.inputs)} and {len(node.outputs)}; unknown variant of this op")


def _read_deform_conv(node: ir.Node) -> DeformConvCall:
    """``DeformConv(X, W, offset[, B][, mask])`` with ONNX's attributes."""
    _check_input_count(node, 3, 5)
    call = DeformConvCall(
        X=node.inputs[0], W=node.inputs[1], offset=node.inputs[2], B=_input(node, 3), mask=_input(node, 4),
        strides=_ints(node, "strides", (1, 1), (2,)),
        pads=_ints(node, "pads", (0, 0, 0, 0), (4,)),
        dilations=_ints(node, "dilations", (1, 1), (2,)),
        group=_int(node, "group", 1),
        offset_group=_int(node, "offset_group", 1),
    )
    kernel_shape = _ints(node, "kernel_shape", (None, None), (2,))
    weight_kernel = (static_shape(call.W) or (None,) * 4)[2:]
    if any(k is not None and w is not None and k != w for k, w in zip(kernel_shape, weight_kernel)):
        raise RewriteError(f"{_describe(node)}: kernel_shape {list(kernel_shape)} differs from the weight's "
                           f"kernel {list(weight_kernel)}")
    return call


def _mmcv_padding(node: ir.Node) -> tuple[int, int, int, int]:
    """``padding`` as DeformConv ``pads``: (pad_h, pad_w) from mmcv, or mmdeploy's four values (see the
    module docstring) where its two readings agree."""
    padding = _ints(node, "padding", (0, 0), (2, 4))
    if len(padding) == 4:
        if padding[1] != padding[2]:
            raise RewriteError(f"{_describe(node)}: padding {list(padding)} is ambiguous (mmdeploy writes "
                               "[pad_h, pad_h, pad_w, pad_w], its kernels read [pad_h, pad_w, ...])")
        padding = padding[:2]
    return (*padding, *padding)


def _mmcv_attributes(node: ir.Node) -> dict:
    return dict(
        strides=_ints(node, "stride", (1, 1), (2,)),
        pads=_mmcv_padding(node),
        dilations=_ints(node, "dilation", (1, 1), (2,)),
        group=_int(node, "groups", 1),
        offset_group=_int(node, "deform_groups", 1),
    )


def _read_mmcv_modulated(node: ir.Node) -> DeformConvCall:
    """``MMCVModulatedDeformConv2d(input, offset, mask, weight[, bias])``."""
    _check_input_count(node, 4, 5)
    if node.inputs[2] is None:
        raise RewriteError(f"{_describe(node)}: the mask (input 2) is missing")
    X, offset, mask, W = node.inputs[:4]
    return DeformConvCall(X=X, W=W, offset=offset, B=_input(node, 4), mask=mask, **_mmcv_attributes(node))


def _read_mmcv_deform(node: ir.Node) -> DeformConvCall:
    """``MMCVDeformConv2d(input, offset, weight)``."""
    _check_input_count(node, 3, 3)
    if _int(node, "bias", 0):
        raise RewriteError(f"{_describe(node)}: bias=1 is not supported by MMCVDeformConv2d (mmcv asserts "
                           "bias=False) and the node has no bias input")
    X, offset, W = node.inputs
    return DeformConvCall(X=X, W=W, offset=offset, B=None, mask=None, **_mmcv_attributes(node))


#: (domain, op_type) -> reader of the node's deformable convolution.
SOURCE_OPS: dict[tuple[str, str], Callable[[ir.Node], DeformConvCall]] = {
    ("", "DeformConv"): _read_deform_conv,
    (PENDING_DOMAIN, "DeformConv"): _read_deform_conv,
    ("mmcv", "MMCVModulatedDeformConv2d"): _read_mmcv_modulated,
    ("mmdeploy", "MMCVModulatedDeformConv2d"): _read_mmcv_modulated,
    ("mmcv", "MMCVDeformConv2d"): _read_mmcv_deform,
    ("mmdeploy", "MMCVDeformConv2d"): _read_mmcv_deform,
    (seed.SEED_DOMAIN, "DeformConv"): _read_deform_conv,
    (own.OWN_DOMAIN, "DeformConv"): _read_deform_conv,
}


#: InternImage's DCNv3 node, as its autograd function's symbolic writes it.
TRT_DCNV3 = ("mmdeploy", "TRTDCNv3")
#: (domain, op_type) -> core version of the DCNv3/DCNv4 core nodes: InternImage's, and the placeholders the dynamo
#: translation of the cores writes (:mod:`dcn_onnxscript.export.dcnv3`): inputs ``input``, ``offset``, ``mask``
#: (DCNv4: ``input``, ``offset_mask``), ``TRTDCNv3``'s attributes, and the lowering's name as ``impl``.
CORE_OPS: dict[tuple[str, str], int] = {TRT_DCNV3: 3, (PENDING_DOMAIN, "dcnv3"): 3, (PENDING_DOMAIN, "dcnv4"): 4}


@dataclasses.dataclass(frozen=True)
class CoreCall:
    """A DCNv3 or DCNv4 core read off a node: its attributes and inputs (DCNv4: ``mask`` is the offset_mask
    again)."""

    core: dcnv3.Core
    input: ir.Value
    offset: ir.Value
    mask: ir.Value


def _read_core(node: ir.Node) -> CoreCall:
    """The :class:`CoreCall` of a node of :data:`CORE_OPS`."""
    version = CORE_OPS[(node.domain, node.op_type)]
    _check_input_count(node, 6 - version, 6 - version)  # DCNv3: input, offset, mask; DCNv4: input, offset_mask

    def pair(name: str, default: int = 1) -> tuple[int, int]:
        return _int(node, f"{name}_h", default), _int(node, f"{name}_w", default)

    scale = _attr(node, "offset_scale")
    core = dcnv3.Core(kernel=pair("kernel"), stride=pair("stride"), padding=pair("pad", 0),
                      dilation=pair("dilation"), group=_int(node, "group", 1),
                      group_channels=_int(node, "group_channels", 1),
                      offset_scale=1.0 if scale is None else scale.as_float(),
                      remove_center=bool(_int(node, "remove_center", 0)), version=version)
    input, offset, *mask = node.inputs
    return CoreCall(core, input, offset, mask[0] if mask else offset)


def _checked_core(node: ir.Node, call: CoreCall) -> Layer:
    """The deform_conv2d :class:`Layer` of ``call`` (:func:`dcn_onnxscript.lowering.dcnv3.layer`, its static
    sizes those of the core's inputs) after the core's checks; :class:`RewriteError` naming the node unless
    the lowerings can compute it."""
    core = call.core
    input_shape, offset_shape = static_shape(call.input), static_shape(call.offset)
    try:
        check_core_args(core, input_shape=input_shape, offset_shape=offset_shape,
                        mask_shape=static_shape(call.mask) if core.version == 3 else None)
        if call.input.dtype is None:
            raise ValueError("the input's data type is unknown")
        N, H, W, _ = input_shape or (None,) * 4
        Ho, Wo = offset_shape[1:3] if offset_shape is not None else (None, None)
        return dcnv3.layer(core, call.input.dtype.value, N, (H, W), (Ho, Wo))
    except ValueError as error:
        raise RewriteError(f"{_describe(node)}: {error}") from None


def _expand_cores(model: ir.Model) -> int:
    """Replace each ``TRTDCNv3`` node by its layout steps around ONNX ``DeformConv`` (impl "native": G groups
    and offset groups, the constant weight that passes each channel to itself), written at its graph's opset;
    returns how many. Nothing is changed when one is refused."""
    nodes = [node for node in _all_nodes(model) if (node.domain, node.op_type) == TRT_DCNV3]
    node_opsets = _node_opsets(model)
    checked = [(node, _read_core(node)) for node in nodes]
    for node, call in checked:
        _checked_core(node, call)
    for index, (node, call) in enumerate(checked, 1):
        core, input = call.core, call.input
        prefix = f"{node.name or 'dcnv3'}_{index}"
        op = TapeEmitter(node_opsets[node], prefix=prefix, initializers=node.graph is model.graph)
        order = OffsetOrder.YX  # DeformConv reads (Δy, Δx)
        X, delta, m = (dcnv3.channels_first(op, input),
                       dcnv3.deform_conv2d_offset(op, core, input.dtype.value, call.offset, order),
                       dcnv3.deform_conv2d_mask(op, core, call.mask))
        dcnv3.typed(core, input, call.offset, X, delta, m)
        W = op.constant(dcnv3.identity_weight(core, FLOAT_TYPES[input.dtype.value]))
        attributes = {"strides": list(core.stride), "pads": [*core.padding, *core.padding],
                      "dilations": list(core.dilation), "group": core.group, "offset_group": core.group,
                      "impl": table.NATIVE, OFFSET_ORDER: order.value}
        Y = op.tape.op("DeformConv", [X, W, delta, None, m], attributes, domain=PENDING_DOMAIN)
        Y = dcnv3.channels_last(op, Y)
        for constant in op.tape.initializers:
            node.graph.register_initializer(constant)
        _name_nodes(op.tape.nodes, prefix)
        ir.convenience.replace_nodes_and_values(node.graph, insertion_point=node, old_nodes=[node],
                                                new_nodes=op.tape.nodes, old_values=node.outputs, new_values=[Y])
    return len(checked)


def _name_nodes(nodes: Sequence[ir.Node], prefix: str) -> None:
    """Name ``nodes`` and their outputs after ``prefix`` and their place: unique in the whole model, subgraphs
    included (SSA)."""
    for number, new in enumerate(nodes):
        new.name = f"{prefix}/{new.op_type}_{number}"
        for output in new.outputs:
            output.name = f"{prefix}/{number}_{output.index()}"


def _kind(node: ir.Node) -> str:
    if node.domain == seed.SEED_DOMAIN:
        return seed.SEED_KIND
    if node.domain == own.OWN_DOMAIN:
        return own.OWN_KIND
    domain = "" if node.domain == "ai.onnx" else node.domain
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _describe(node: ir.Node) -> str:
    if (node.domain, node.op_type) in CORE_OPS and node.domain == PENDING_DOMAIN:
        return f"dcn_onnxscript::{node.op_type} (exported node {node.name!r})"
    if node.domain == PENDING_DOMAIN:
        return f"torchvision::deform_conv2d (exported node {node.name!r})"
    if node.domain == seed.SEED_DOMAIN:
        return f"{seed.SEED_KIND}'s layer ending in Conv {node.name.removesuffix(seed.NODE_SUFFIX)!r}"
    if node.domain == own.OWN_DOMAIN:
        return f"{own.OWN_KIND}'s layer {node.name.removesuffix(seed.NODE_SUFFIX)!r}"
    return f"{_kind(node)} node {node.name!r}"


# --- rewriting ---------------------------------------------------------------------------------------


def _graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph and every model-local function (their subgraphs are reached by the iterator)."""
    yield model.graph
    yield from model.functions.values()


def _all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    for graph in _graphs(model):
        yield from ir.traversal.RecursiveGraphIterator(graph)


def _checked_layer(node: ir.Node, call: DeformConvCall) -> Optional[Layer]:
    """The :class:`Layer` of ``call`` after the checks of its attributes (and of the static shapes, where
    known), or ``None`` when the weight's shape (kernel and channels) is unknown; :class:`RewriteError`
    unless it describes a deformable convolution the lowerings can compute."""
    offset_shape, mask_shape = static_shape(call.offset), static_shape(call.mask)
    begin, end = call.pads[:2], call.pads[2:]
    if begin != end:  # the shared check derives Ho, Wo from symmetric pads; here they come from offset
        offset_shape = offset_shape and offset_shape[:2] + (None, None)
        mask_shape = mask_shape and mask_shape[:2] + (None, None)
    if any(p < 0 for p in end):
        raise RewriteError(f"{_describe(node)}: pads must be non-negative, got {list(call.pads)}")
    weight_shape = static_shape(call.W)
    dtype = call.X.dtype or call.W.dtype
    try:
        if weight_shape is None or None in weight_shape:
            check_deform_conv2d_args(
                input_shape=static_shape(call.X), weight_shape=weight_shape, offset_shape=offset_shape,
                mask_shape=mask_shape, bias_shape=static_shape(call.B), stride=call.strides, padding=begin,
                dilation=call.dilations, groups=call.group, offset_groups=call.offset_group)
            return None
        if dtype is None:
            raise ValueError("the input's data type is unknown")
        return checked_layer(
            input_shape=static_shape(call.X), weight_shape=weight_shape, offset_shape=offset_shape,
            mask_shape=mask_shape, bias_shape=static_shape(call.B), stride=call.strides, padding=begin,
            dilation=call.dilations, groups=call.group, offset_groups=call.offset_group, dtype=int(dtype),
            bias=call.B is not None, mask=call.mask is not None)
    except ValueError as error:
        raise RewriteError(f"{_describe(node)}: {error}") from None


def _source_nodes(graph: ir.Graph | ir.Function | ir.Model) -> list[ir.Node]:
    """The nodes to rewrite, subgraphs included (and, for a model, local functions)."""
    nodes = _all_nodes(graph) if isinstance(graph, ir.Model) else ir.traversal.RecursiveGraphIterator(graph)
    return [node for node in nodes if (node.domain, node.op_type) in SOURCE_OPS.keys() | CORE_OPS.keys()]


def _node_opsets(model: ir.Model) -> dict[ir.Node, int]:
    """The ONNX opset of the graph or function each node lies in (subgraphs count as their owner's)."""
    opsets_of: dict[ir.Node, int] = {}
    default = _onnx_opset(model)
    for owner in _graphs(model):
        imports = owner.opset_imports
        version = imports.get("", imports.get("ai.onnx", default))
        for node in ir.traversal.RecursiveGraphIterator(owner):
            opsets_of[node] = version
    return opsets_of


def _check_impl(what: str, impl: str, opset: int) -> None:
    """:class:`RewriteError` naming ``what`` unless ``impl`` can be written at ``opset``."""
    try:
        if impl != table.NATIVE:
            table.lowering(impl, opset)
        elif opset < table.NATIVE_MIN_OPSET:
            raise ValueError(f"impl='native' writes ONNX DeformConv, which needs opset >= {table.NATIVE_MIN_OPSET}, "
                             f"got opset {opset}; add --opset {table.NATIVE_MIN_OPSET}")
    except ValueError as error:
        raise RewriteError(f"{what}: {error}") from None


def _read_calls(model: ir.Model, nodes: list[ir.Node], impl: str, emit_opset: Optional[int]) -> list[tuple]:
    """(node, call, layer, opset, impl) of each of ``nodes``, checked; :class:`RewriteError` for the first one
    that cannot be rewritten. Changes nothing."""
    calls = []
    node_opsets = _node_opsets(model)
    for node in nodes:
        opset = emit_opset or node_opsets[node]
        node_impl = node.attributes.get_string("impl", impl) if node.domain == PENDING_DOMAIN else impl
        _check_impl(_describe(node), node_impl, opset)
        if (node.domain, node.op_type) in CORE_OPS:
            call = _read_core(node)
            calls.append((node, call, _checked_core(node, call), opset, node_impl))
            continue
        call = SOURCE_OPS[(node.domain, node.op_type)](node)
        layer = _checked_layer(node, call)
        if layer is None and opset < SCRIPT_OPSET and node_impl != table.NATIVE:
            raise RewriteError(f"{_describe(node)}: the weight's shape (O, C/group, kH, kW) is unknown; give it a "
                               f"static shape or rewrite at opset >= {SCRIPT_OPSET}")
        order = _offset_order(node)
        if order is not OffsetOrder.YX and (layer is None or node_impl == table.NATIVE):
            raise RewriteError(f"{_describe(node)}: {OFFSET_ORDER}={order.value!r} needs a lowering and a static "
                               f"weight shape (DeformConv and the standalone functions read 'yx')")
        layer = layer and dataclasses.replace(layer, offset_order=order)
        calls.append((node, call, layer, opset, node_impl))
    return calls


def _offset_order(node: ir.Node) -> OffsetOrder:
    """The order of a placeholder's offset pairs (:data:`OFFSET_ORDER`), deform_conv2d's for every other node."""
    if node.domain != PENDING_DOMAIN:
        return OffsetOrder.YX
    return OffsetOrder(node.attributes.get_string(OFFSET_ORDER, OffsetOrder.YX.value))


def _replace_deform_convs(model: ir.Model, nodes: list[ir.Node], impl: str, emit_opset: Optional[int],
                          hidden: bool, progress: Optional[Progress]) -> tuple[collections.Counter, set[str]]:
    """Replace each of ``nodes`` by the nodes of lowering ``impl`` (a placeholder's own ``impl`` attribute
    wins), written for ``emit_opset`` (default: the opset of its graph); with ``hidden``, in
    :data:`opsets.HIDDEN_DOMAIN` for a conversion to come. A node
    whose weight shape is unknown (a local function's input, say) becomes a call of the standalone script
    function instead, inlined at the end. Returns the count per kind and the names of the lowerings
    written. Nothing is changed when any node is refused."""
    calls = _read_calls(model, nodes, impl, emit_opset)
    counts: collections.Counter = collections.Counter()
    lowerings: set[str] = set()
    step = max(1, len(calls) // 10)
    scripted = False
    for index, (node, call, layer, opset, node_impl) in enumerate(calls, 1):
        dtype = layer.dtype if layer is not None else (call.X.dtype.value if call.X.dtype is not None else None)
        name = table.resolve(node_impl, opset, dtype)
        lowerings.add(name)
        if name == table.NATIVE:
            new_nodes = [_native_node(node, call, opsets.HIDDEN_DOMAIN if hidden else "")]
            Y = new_nodes[0].outputs[0]
        elif layer is None:
            new_nodes = [script_calls.call_node(node, call, name)]
            Y = new_nodes[0].outputs[0]
            scripted = True
        else:
            prefix = f"{node.name or 'deform_conv'}_{index}"
            # Constants as initializers in the main graph; as Constant nodes in subgraphs and functions.
            op = TapeEmitter(opset, prefix=prefix, initializers=node.graph is model.graph)
            if isinstance(call, CoreCall):
                Y = dcnv3.lower(op, call.core, layer, call.input, call.offset, call.mask, name)
            else:
                Y = table.build(name, op, layer, call.X, call.W, call.offset, call.B, call.mask)
            new_nodes = op.tape.nodes
            for constant in op.tape.initializers:
                node.graph.register_initializer(constant)
            _name_nodes(new_nodes, prefix)
            for new in new_nodes if hidden else ():
                new.domain = opsets.HIDDEN_DOMAIN
        ir.convenience.replace_nodes_and_values(node.graph, insertion_point=node, old_nodes=[node],
                                                new_nodes=new_nodes, old_values=node.outputs, new_values=[Y])
        if isinstance(call, DeformConvCall):
            _drop_folded_weights(model, [call.W, call.B])
        counts[_kind(node)] += 1
        if progress and (index % step == 0 or index == len(calls)):
            progress(f"replaced {index}/{len(calls)} deformable convolutions")
    if scripted:
        if progress:
            progress("inlining the standalone functions")
        script_calls.inline(model)
    return counts, lowerings


def _native_node(node: ir.Node, call: DeformConvCall, domain: str) -> ir.Node:
    """ONNX ``DeformConv`` (opset 19's form) of ``call``, in ``domain`` ("" or :data:`opsets.HIDDEN_DOMAIN`)."""
    inputs = [call.X, call.W, call.offset, call.B, call.mask]
    while inputs[-1] is None:
        inputs.pop()
    weight_shape = static_shape(call.W)
    kernel = dict(kernel_shape=list(weight_shape[2:])) if weight_shape and None not in weight_shape else {}
    return ir.node("DeformConv", inputs, domain=domain, name=node.name, attributes=dict(
        **kernel, strides=list(call.strides), pads=list(call.pads), dilations=list(call.dilations),
        group=call.group, offset_group=call.offset_group))


def _drop_folded_weights(model: ir.Model, values: Sequence[Optional[ir.Value]]) -> None:
    """Remove the main graph's initializers among ``values`` (a replaced node's W and B) that nothing reads
    any more, the lowering having folded them into its own; one that is also a graph input stays."""
    graph = model.graph
    for value in values:
        if (value is not None and value.name in graph.initializers and graph.initializers[value.name] is value
                and not value.uses() and value not in graph.inputs and value not in graph.outputs):
            del graph.initializers[value.name]


def _onnx_opset(model: ir.Model) -> int:
    try:
        return opsets.default_opset(model)
    except ValueError as error:
        raise RewriteError(str(error)) from None


def _onnx_converter(model: ir.Model, target: int) -> ir.Model:
    """ONNX's version converter (C++; it leaves custom-domain nodes such as mmcv's alone)."""
    ir.external_data.load_to_model(model)  # the proto handed to the converter must hold the data
    try:
        return ir.from_proto(onnx.version_converter.convert_version(ir.to_proto(model), target))
    except Exception as error:  # noqa: BLE001  (the converter raises assorted types)
        reason = one_line(error).split("failed: ")[-1]  # drop the C++ assertion's file and line
        raise RewriteError(f"ONNX's version converter failed: {reason}") from None


def _drop_unused_domains(model: ir.Model, domains: set[str]) -> None:
    """Remove the opset imports of ``domains`` (ours, mmcv's) that no node uses any more."""
    used = {node.domain for node in _all_nodes(model)}
    for graph in (model, *model.functions.values()):
        for domain in domains - used:
            graph.opset_imports.pop(domain, None)


def rewrite(model: ir.Model, impl: str = table.DEFAULT, opset: Optional[int] = None,
            progress: Optional[Progress] = None) -> RewriteResult:
    """Rewrite ``model`` in place (see the module docstring) and return it with the counts per node kind.

    ``impl``: one of :data:`dcn_onnxscript.lowering.table.IMPLS`; ``opset``: the ONNX opset of the
    result (default: the model's own). Raises :class:`RewriteError` for a node it cannot rewrite or an opset
    it cannot reach; ``model`` is then left as it was (unless the opset conversion itself fails).
    """
    if impl not in table.IMPLS:
        raise RewriteError(f"unknown implementation {impl!r}; choose from {', '.join(table.IMPLS)}")
    emit_opset = _emit_opset(model, opset)
    # every node and region is checked before anything changes: a refusal leaves the model as it was
    _read_calls(model, _source_nodes(model), impl, emit_opset)
    proven, notes = seed.prove_regions(model, progress)
    if impl == table.NATIVE:  # this package's own layers, written as ONNX DeformConv
        own_proven, own_notes = own.prove_regions(model, progress)
        proven, notes = [*proven, *own_proven], [*notes, *own_notes]
    if proven:
        _check_impl(proven[0][0].describe(), impl, emit_opset or _onnx_opset(model))
    cores = _expand_cores(model) if impl == table.NATIVE else 0
    seed.replace_regions(model, [p for p in proven if p[0].domain == seed.SEED_DOMAIN])
    own.replace_regions(model, [p for p in proven if p[0].domain == own.OWN_DOMAIN])
    nodes = _source_nodes(model)
    if impl == table.NATIVE:  # ONNX's own DeformConv is already what "native" writes
        nodes = [node for node in nodes if _kind(node) != "DeformConv"]
    result = _rewrite(model, nodes, impl, opset, _onnx_converter, progress)
    result.notes = tuple(notes)
    if cores:  # the native cores' DeformConv placeholders count as the nodes they replaced
        pending = f"{PENDING_DOMAIN}::DeformConv"
        result.counts[pending] -= cores
        result.counts["::".join(TRT_DCNV3)] += cores
        result.counts += collections.Counter()  # drops the zero count
        _drop_unused_domains(model, {TRT_DCNV3[0]})
    return result


def pending_nodes(model: ir.Model) -> list[ir.Node]:
    """The placeholders of :data:`PENDING_DOMAIN` in ``model`` (subgraphs and local functions included)."""
    return [node for node in _all_nodes(model) if node.domain == PENDING_DOMAIN]


def lower_pending(model: ir.Model, opset: int, convert: opsets.Convert) -> ir.Model:
    """The dynamo exporter's conversion step: ``model`` at ``opset``, each placeholder of
    :data:`PENDING_DOMAIN` replaced by its lowering, chosen and written now that the final opset and the
    weights are known; ``convert`` (torch's own step) converts the other nodes where this package's schema
    rules (:mod:`dcn_onnxscript.rewrite.opsets`) do not."""
    return _rewrite(model, pending_nodes(model), table.DEFAULT, opset, convert, None).model


def _emit_opset(model: ir.Model, opset: Optional[int]) -> Optional[int]:
    """The opset to write the lowerings at when ``opset`` asks for a conversion, ``None`` otherwise (each node
    at its graph's); :class:`RewriteError` below the lowest the lowerings write."""
    if opset is None or opset == _onnx_opset(model):
        return None
    if opset < opsets.MIN_OPSET:
        raise RewriteError(f"opset must be >= {opsets.MIN_OPSET} for deformable convolutions, got {opset}")
    return opset


def _rewrite(model: ir.Model, nodes: list[ir.Node], impl: str, opset: Optional[int], convert: opsets.Convert,
             progress: Optional[Progress]) -> RewriteResult:
    """Replace ``nodes`` with their lowerings written at ``opset`` (default: their graphs'), then convert the
    model to ``opset`` with the lowerings' nodes kept out of the conversion."""
    emit_opset = _emit_opset(model, opset)
    change = emit_opset is not None
    counts, lowerings = _replace_deform_convs(model, nodes, impl, emit_opset, hidden=change, progress=progress)
    if counts:
        placeholders = {seed.SEED_DOMAIN, own.OWN_DOMAIN}
        _drop_unused_domains(model, {kind.split("::")[0] for kind in counts if "::" in kind} | placeholders)
    if change:
        try:
            model = opsets.convert_version(model, opset, convert)
        except ValueError as error:
            raise RewriteError(str(error)) from None
    return RewriteResult(model, counts, frozenset(lowerings))


def rewrite_model(model: onnx.ModelProto, impl: str = table.DEFAULT, opset: Optional[int] = None) -> onnx.ModelProto:
    """A copy of ``model`` whose deformable convolutions (``DeformConv``, mmcv's ``MMCVDeformConv2d`` and
    ``MMCVModulatedDeformConv2d``) are replaced by the inlined portable functions of lowering ``impl``.

    ``opset``: the ONNX opset of the result (default: the model's own, which must be 18 or later when
    there is anything to rewrite). Raises :class:`RewriteError` for a node it cannot rewrite.
    """
    return ir.to_proto(rewrite(ir.from_proto(model), impl=impl, opset=opset).model)


def one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__
