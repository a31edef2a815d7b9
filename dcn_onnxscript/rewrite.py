"""``python -m dcn_onnxscript rewrite IN.onnx OUT.onnx``: make an existing ONNX model's deformable
convolutions portable.

Every deformable-convolution node is replaced by a call of the matching portable ONNX function of this
package (see :mod:`dcn_onnxscript.functions`), and those calls, only those, are then inlined, so the result
holds nothing but standard ONNX ops and runs wherever they do (onnxruntime, OpenVINO, tract, ...). The rest
of the model (node and value names, initializers, metadata, other local functions) is left as it was.

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

The functions are written against ONNX opset 18; the rewritten model keeps its own default opset, which
must be 18 or later (``DeformConv`` itself needs 19), unless ``--opset`` asks for a conversion.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import pathlib
import sys
import tempfile
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnxscript.version_converter
from onnx_ir.passes.common import InlinePass
from onnxscript import OnnxFunction

from dcn_onnxscript.functions import (
    DOMAIN,
    DOMAIN_VERSION,
    deform_conv2d,
    deform_conv2d_no_bias,
    deform_conv2d_no_bias_no_mask,
    deform_conv2d_no_mask,
)
from dcn_onnxscript.validation import check_deform_conv2d_args

#: The ONNX opset the portable functions are written against; the least default opset of a rewritten model.
FUNCTIONS_OPSET = 18
#: Above this many nodes in the main graph, the command line reports progress on stderr.
LARGE_MODEL_NODES = 5000

Progress = Callable[[str], None]


class RewriteError(ValueError):
    """A model the rewriter cannot handle; the message is one line and names the node."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One lowering of deformable convolution: a public ONNX function for each combination of the optional
    inputs, all with the inputs ``(X, W, offset[, B][, mask])`` and the attributes of ``DeformConv``-19
    (``strides``, ``pads``, ``dilations``, ``group``, ``offset_group``)."""

    bias_and_mask: OnnxFunction
    mask_only: OnnxFunction
    bias_only: OnnxFunction
    neither: OnnxFunction

    def pick(self, has_bias: bool, has_mask: bool) -> OnnxFunction:
        """The function taking exactly the optional inputs present."""
        if has_mask:
            return self.bias_and_mask if has_bias else self.mask_only
        return self.bias_only if has_bias else self.neither


#: ``--impl`` name -> lowering. Another lowering (e.g. one built on ``GridSample``) is added here.
IMPLEMENTATIONS: dict[str, Implementation] = {
    "gather": Implementation(deform_conv2d, deform_conv2d_no_bias, deform_conv2d_no_mask,
                             deform_conv2d_no_bias_no_mask),
}


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
    """The rewritten model and how many nodes of each kind (``domain::op_type``) were replaced."""

    model: ir.Model
    counts: collections.Counter

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
    kernel_shape = _ints(node, "kernel_shape", (), (2,)) if "kernel_shape" in node.attributes else None
    call = DeformConvCall(
        X=node.inputs[0], W=node.inputs[1], offset=node.inputs[2], B=_input(node, 3), mask=_input(node, 4),
        strides=_ints(node, "strides", (1, 1), (2,)),
        pads=_ints(node, "pads", (0, 0, 0, 0), (4,)),
        dilations=_ints(node, "dilations", (1, 1), (2,)),
        group=_int(node, "group", 1),
        offset_group=_int(node, "offset_group", 1),
    )
    weight_kernel = _static_shape(call.W)
    if kernel_shape is not None and weight_kernel is not None and len(weight_kernel) == 4 and None not in \
            weight_kernel[2:] and tuple(weight_kernel[2:]) != kernel_shape:
        raise RewriteError(f"{_describe(node)}: kernel_shape {list(kernel_shape)} differs from the weight's "
                           f"kernel {list(weight_kernel[2:])}")
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
    ("mmcv", "MMCVModulatedDeformConv2d"): _read_mmcv_modulated,
    ("mmdeploy", "MMCVModulatedDeformConv2d"): _read_mmcv_modulated,
    ("mmcv", "MMCVDeformConv2d"): _read_mmcv_deform,
    ("mmdeploy", "MMCVDeformConv2d"): _read_mmcv_deform,
}


def _kind(node: ir.Node) -> str:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _describe(node: ir.Node) -> str:
    return f"{_kind(node)} node {node.name!r}"


def _static_shape(value: Optional[ir.Value]) -> Optional[tuple[Optional[int], ...]]:
    """The value's shape with unknown dimensions as ``None``; ``None`` when even the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _validate(node: ir.Node, call: DeformConvCall) -> None:
    """Raise :class:`RewriteError` unless the attributes (and the static shapes, where known) describe a
    deformable convolution the function can compute."""
    offset_shape, mask_shape = _static_shape(call.offset), _static_shape(call.mask)
    begin, end = call.pads[:2], call.pads[2:]
    if begin != end:  # the shared check derives Ho, Wo from symmetric pads; here they come from offset
        offset_shape = offset_shape and offset_shape[:2] + (None, None)
        mask_shape = mask_shape and mask_shape[:2] + (None, None)
    if any(p < 0 for p in end):
        raise RewriteError(f"{_describe(node)}: pads must be non-negative, got {list(call.pads)}")
    try:
        check_deform_conv2d_args(
            input_shape=_static_shape(call.X), weight_shape=_static_shape(call.W), offset_shape=offset_shape,
            mask_shape=mask_shape, bias_shape=_static_shape(call.B), stride=call.strides, padding=begin,
            dilation=call.dilations, groups=call.group, offset_groups=call.offset_group,
        )
    except ValueError as error:
        raise RewriteError(f"{_describe(node)}: {error}") from None


# --- rewriting ---------------------------------------------------------------------------------------


def _graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph and every model-local function (their subgraphs are reached by the iterator)."""
    yield model.graph
    yield from model.functions.values()


def _all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    for graph in _graphs(model):
        yield from ir.traversal.RecursiveGraphIterator(graph)


def _portable_node(node: ir.Node, call: DeformConvCall, function: OnnxFunction) -> ir.Node:
    inputs = [call.X, call.W, call.offset] + [v for v in (call.B, call.mask) if v is not None]
    attributes = [
        ir.AttrInt64s("strides", call.strides),
        ir.AttrInt64s("pads", call.pads),
        ir.AttrInt64s("dilations", call.dilations),
        ir.AttrInt64("group", call.group),
        ir.AttrInt64("offset_group", call.offset_group),
    ]
    return ir.Node(DOMAIN, function.name, inputs, attributes, num_outputs=1, name=node.name,
                   doc_string=node.doc_string, metadata_props=dict(node.metadata_props))


def _replace_deform_convs(model: ir.Model, implementation: Implementation,
                          progress: Optional[Progress]) -> tuple[collections.Counter, set[OnnxFunction]]:
    """Replace every recognised node by a call of the implementation's function. Returns the count per kind
    and the public functions called. Nothing is changed when any node is refused."""
    found = [(node, SOURCE_OPS[(node.domain, node.op_type)]) for node in _all_nodes(model)
             if (node.domain, node.op_type) in SOURCE_OPS]
    calls = []
    for node, read in found:
        call = read(node)
        _validate(node, call)
        calls.append((node, call))
    counts: collections.Counter = collections.Counter()
    used: set[OnnxFunction] = set()
    step = max(1, len(calls) // 10)
    for index, (node, call) in enumerate(calls, 1):
        function = implementation.pick(call.B is not None, call.mask is not None)
        new = _portable_node(node, call, function)
        graph = node.graph
        ir.convenience.replace_nodes_and_values(graph, insertion_point=node, old_nodes=[node], new_nodes=[new],
                                                old_values=node.outputs, new_values=new.outputs)
        counts[_kind(node)] += 1
        used.add(function)
        if progress and (index % step == 0 or index == len(calls)):
            progress(f"replaced {index}/{len(calls)} deformable convolutions")
    return counts, used


def _function_protos(public: set[OnnxFunction]) -> dict[tuple[str, str], onnx.FunctionProto]:
    """The public functions and every helper they call, by (domain, name)."""
    protos = {}
    for function in public:
        for f in (function, *function.function_ir.get_called_functions().values()):
            protos[(f.function_ir.domain, f.name)] = f.to_function_proto()
    return protos


def _check_opset_compatible(proto: onnx.FunctionProto, version: int) -> None:
    """Raise unless every ONNX op of the function means the same at ``version`` as at
    :data:`FUNCTIONS_OPSET`: same inputs and outputs, and no attribute taken away (the versions from 19 on
    only add types and attributes with defaults, e.g. Cast's ``saturate``, that leave these ops alone)."""
    for node in proto.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        old = onnx.defs.get_schema(node.op_type, FUNCTIONS_OPSET)
        new = onnx.defs.get_schema(node.op_type, version)
        same_io = [i.name for i in old.inputs] == [i.name for i in new.inputs] and \
            [o.name for o in old.outputs] == [o.name for o in new.outputs]
        if not same_io or set(old.attributes) - set(new.attributes):
            raise RewriteError(f"{node.op_type} changed between opset {FUNCTIONS_OPSET} and {version}; convert "
                               f"the model to an opset from {FUNCTIONS_OPSET} on with --opset")


def _add_functions(model: ir.Model, public: set[OnnxFunction], version: int) -> None:
    """Add the functions (and helpers) to the model, declared at the model's ONNX opset ``version``."""
    for key, proto in _function_protos(public).items():
        _check_opset_compatible(proto, version)
        for entry in proto.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function


def _constant_to_value(node: ir.Node) -> None:
    """``Constant(value_int=…)`` and friends as ``Constant(value=tensor)``, the one form every runtime reads
    (OpenVINO refuses the others)."""
    converters = {
        "value_int": lambda a: np.array(a.as_int(), dtype=np.int64),
        "value_ints": lambda a: np.array(a.as_ints(), dtype=np.int64),
        "value_float": lambda a: np.array(a.as_float(), dtype=np.float32),
        "value_floats": lambda a: np.array(a.as_floats(), dtype=np.float32),
    }
    for name, convert in converters.items():
        if name in node.attributes:
            array = convert(node.attributes.pop(name))
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))


def _inline_portable_functions(model: ir.Model) -> None:
    """Inline every call of this package's functions, then remove the functions and the domain."""
    before = set(_all_nodes(model))
    InlinePass(criteria=lambda function: function.domain == DOMAIN)(model)
    for node in _all_nodes(model):
        if node not in before and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            _constant_to_value(node)
    for key in [key for key in model.functions if key[0] == DOMAIN]:
        del model.functions[key]
    for graph in (model, *model.functions.values()):
        graph.opset_imports.pop(DOMAIN, None)


def _onnx_opset(model: ir.Model) -> int:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise RewriteError("the model imports no ONNX opset")
    return version


def _convert_opset(model: ir.Model, version: int) -> ir.Model:
    """The model at ONNX opset ``version``: upwards with onnxscript's converter (it leaves custom-domain
    nodes such as mmcv's alone), downwards with ONNX's."""
    current = _onnx_opset(model)
    if version == current:
        return model
    try:
        if version > current:
            onnxscript.version_converter.convert_version(model, version)
            return model
        return ir.from_proto(onnx.version_converter.convert_version(ir.to_proto(model), version))
    except Exception as error:  # noqa: BLE001  (the converters raise assorted types)
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RewriteError(f"cannot convert the model from opset {current} to {version}: {message}") from None


def rewrite(model: ir.Model, impl: str = "gather", opset: Optional[int] = None,
            progress: Optional[Progress] = None) -> RewriteResult:
    """Rewrite ``model`` in place (see the module docstring) and return it with the counts per node kind.

    ``impl``: a key of :data:`IMPLEMENTATIONS`; ``opset``: the ONNX opset of the result (default: the
    model's own). Raises :class:`RewriteError` (and changes nothing) for a node it cannot rewrite.
    """
    if impl not in IMPLEMENTATIONS:
        raise RewriteError(f"unknown implementation {impl!r}; choose from {', '.join(sorted(IMPLEMENTATIONS))}")
    if opset is not None and opset > _onnx_opset(model):
        model = _convert_opset(model, opset)
    version = _onnx_opset(model)
    counts, used = _replace_deform_convs(model, IMPLEMENTATIONS[impl], progress)
    if counts:
        if version < FUNCTIONS_OPSET:
            raise RewriteError(f"the model's opset {version} is older than the {FUNCTIONS_OPSET} the portable "
                               f"functions need; add --opset {FUNCTIONS_OPSET} (or later) to convert it")
        model.opset_imports[DOMAIN] = DOMAIN_VERSION
        for function in model.functions.values():
            function.opset_imports[DOMAIN] = DOMAIN_VERSION
        _add_functions(model, used, version)
        if progress:
            progress("inlining the portable functions")
        _inline_portable_functions(model)
    if opset is not None and opset < version:
        model = _convert_opset(model, opset)
    return RewriteResult(model, counts)


def rewrite_model(model: onnx.ModelProto, impl: str = "gather", opset: Optional[int] = None) -> onnx.ModelProto:
    """A copy of ``model`` whose deformable convolutions (``DeformConv``, mmcv's ``MMCVDeformConv2d`` and
    ``MMCVModulatedDeformConv2d``) are replaced by the inlined portable functions of lowering ``impl``.

    ``opset``: the ONNX opset of the result (default: the model's own, which must be 18 or later when
    there is anything to rewrite). Raises :class:`RewriteError` for a node it cannot rewrite.
    """
    return ir.to_proto(rewrite(ir.from_proto(model), impl=impl, opset=opset).model)


# --- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=pathlib.Path, help="the ONNX model to rewrite")
    parser.add_argument("output", type=pathlib.Path, nargs="?", default=None,
                        help="where to write the rewritten model (leave out with --in-place)")
    parser.add_argument("--impl", default="gather", help=f"lowering: {', '.join(sorted(IMPLEMENTATIONS))} "
                        "(default: gather)")
    parser.add_argument("--opset", type=int, default=None,
                        help="convert the result to this ONNX opset (default: keep the model's)")
    parser.add_argument("--check", action="store_true",
                        help="run onnx.checker (full check) on the result and, where the original runs on "
                             "onnxruntime, compare both on random inputs")
    parser.add_argument("--in-place", action="store_true", help="overwrite the input")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="--check: largest |difference| allowed, relative to max(1, max |original|) "
                             "(default: 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="--check: seed of the random inputs")


def run(args: argparse.Namespace) -> int:
    try:
        output = _output_path(args)
        model = _load(args.input)
        large = _count_nodes(model) >= LARGE_MODEL_NODES
        progress = _print_progress if large else None
        result = rewrite(model, impl=args.impl, opset=args.opset, progress=progress)
        external = _uses_external_data(model)
        with _staged(output, result.model, external, progress) as staged:
            if args.check:
                for line in _check(args.input, staged, args.tolerance, args.seed):
                    print(line)
    except (RewriteError, OSError, onnx.checker.ValidationError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"{result.summary()} (impl {args.impl}, opset {_onnx_opset(result.model)}) -> {output}")
    return 0
