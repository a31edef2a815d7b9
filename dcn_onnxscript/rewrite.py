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
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnxruntime
from onnx_ir.passes.common import InlinePass
from onnxscript import OnnxFunction

from dcn_onnxscript.functions import DOMAIN, DOMAIN_VERSION
from dcn_onnxscript.lowerings import PORTABLE, Variants
from dcn_onnxscript.protos import function_protos
from dcn_onnxscript.validation import check_deform_conv2d_args, static_shape

#: The ONNX opset the portable functions are written against; the least default opset of a rewritten model.
FUNCTIONS_OPSET = 18
#: From this many nodes (all graphs and functions together), the command line reports progress on stderr.
LARGE_MODEL_NODES = 5000

Progress = Callable[[str], None]


class RewriteError(ValueError):
    """A model the rewriter cannot handle; the message is one line and names the node."""


#: ``--impl`` name -> the lowering's public functions by (bias, mask).
IMPLEMENTATIONS: dict[str, Variants] = PORTABLE


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


def _validate(node: ir.Node, call: DeformConvCall) -> None:
    """Raise :class:`RewriteError` unless the attributes (and the static shapes, where known) describe a
    deformable convolution the function can compute."""
    offset_shape, mask_shape = static_shape(call.offset), static_shape(call.mask)
    begin, end = call.pads[:2], call.pads[2:]
    if begin != end:  # the shared check derives Ho, Wo from symmetric pads; here they come from offset
        offset_shape = offset_shape and offset_shape[:2] + (None, None)
        mask_shape = mask_shape and mask_shape[:2] + (None, None)
    if any(p < 0 for p in end):
        raise RewriteError(f"{_describe(node)}: pads must be non-negative, got {list(call.pads)}")
    try:
        check_deform_conv2d_args(
            input_shape=static_shape(call.X), weight_shape=static_shape(call.W), offset_shape=offset_shape,
            mask_shape=mask_shape, bias_shape=static_shape(call.B), stride=call.strides, padding=begin,
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
    # The node's metadata (an exporter's stack trace, say) is not carried over: the inliner would copy it
    # onto each of the few hundred nodes of the function body.
    return ir.Node(DOMAIN, function.name, inputs, attributes, num_outputs=1, name=node.name)


def _source_nodes(graph: ir.Graph | ir.Function | ir.Model) -> list[ir.Node]:
    """The nodes to rewrite, subgraphs included (and, for a model, local functions)."""
    nodes = _all_nodes(graph) if isinstance(graph, ir.Model) else ir.traversal.RecursiveGraphIterator(graph)
    return [node for node in nodes if (node.domain, node.op_type) in SOURCE_OPS]


def _replace_deform_convs(nodes: list[ir.Node], implementation: Variants,
                          progress: Optional[Progress]) -> tuple[collections.Counter, set[OnnxFunction]]:
    """Replace each of ``nodes`` by a call of the implementation's function. Returns the count per kind and
    the public functions called. Nothing is changed when any node is refused."""
    calls = []
    for node in nodes:
        call = SOURCE_OPS[(node.domain, node.op_type)](node)
        _validate(node, call)
        calls.append((node, call))
    counts: collections.Counter = collections.Counter()
    used: set[OnnxFunction] = set()
    step = max(1, len(calls) // 10)
    for index, (node, call) in enumerate(calls, 1):
        function = implementation[call.B is not None, call.mask is not None]
        new = _portable_node(node, call, function)
        graph = node.graph
        ir.convenience.replace_nodes_and_values(graph, insertion_point=node, old_nodes=[node], new_nodes=[new],
                                                old_values=node.outputs, new_values=new.outputs)
        counts[_kind(node)] += 1
        used.add(function)
        if progress and (index % step == 0 or index == len(calls)):
            progress(f"replaced {index}/{len(calls)} deformable convolutions")
    return counts, used


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
    protos = {(p.domain, p.name): p for function in public for p in function_protos(function)}
    for proto in protos.values():
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


#: GridSample-20 renamed its interpolation modes; the functions are written with GridSample-16's names.
_GRID_SAMPLE_20_MODES = {"bilinear": "linear", "bicubic": "cubic"}


def _grid_sample_mode_for(node: ir.Node, version: int) -> None:
    """Give an inlined ``GridSample`` node the mode name of the model's opset ``version``."""
    mode = node.attributes.get("mode")
    if version >= 20 and mode is not None and mode.as_string() in _GRID_SAMPLE_20_MODES:
        node.attributes["mode"] = ir.AttrString("mode", _GRID_SAMPLE_20_MODES[mode.as_string()])


def _inline_portable_functions(model: ir.Model) -> None:
    """Inline every call of this package's functions, then remove the functions and the domain."""
    before = set(_all_nodes(model))
    InlinePass(criteria=lambda function: function.domain == DOMAIN)(model)
    for node in _all_nodes(model):
        if node in before:
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            _constant_to_value(node)
        if node.op_type == "GridSample" and node.domain in ("", "ai.onnx"):
            _grid_sample_mode_for(node, _onnx_opset(model))
        for value in node.outputs:
            if value.shape is None:  # a type without a shape is no valid value_info; inference redoes it
                value.type = None
    for key in [key for key in model.functions if key[0] == DOMAIN]:
        del model.functions[key]


def _onnx_opset(model: ir.Model) -> int:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise RewriteError("the model imports no ONNX opset")
    return version


def _convert_opset(model: ir.Model, version: int) -> ir.Model:
    """The model converted to ONNX opset ``version`` by ONNX's version converter (which leaves
    custom-domain nodes such as mmcv's alone)."""
    current = _onnx_opset(model)
    if version == current:
        return model
    ir.external_data.load_to_model(model)  # the proto handed to the converter must hold the data
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), version)
    except Exception as error:  # noqa: BLE001  (the converter raises assorted types)
        reason = _one_line(error).split("failed: ")[-1]  # drop the C++ assertion's file and line
        raise RewriteError(f"cannot convert the model from opset {current} to {version}: {reason}") from None
    return ir.from_proto(converted)


def _check_function_opsets(model: ir.Model, version: int) -> None:
    """Raise unless each local function holding a node to rewrite imports the model's ONNX opset, the one
    the inlined function bodies are declared at."""
    for function in model.functions.values():
        own = function.opset_imports.get("", function.opset_imports.get("ai.onnx", version))
        if own != version and _source_nodes(function):
            raise RewriteError(f"local function {function.name!r} imports ONNX opset {own}, the model {version}; "
                               "only functions at the model's opset can be rewritten")


def _drop_unused_domains(model: ir.Model, domains: set[str]) -> None:
    """Remove the opset imports of ``domains`` (ours, mmcv's) that no node uses any more."""
    used = {node.domain for node in _all_nodes(model)}
    for graph in (model, *model.functions.values()):
        for domain in domains - used:
            graph.opset_imports.pop(domain, None)


def rewrite(model: ir.Model, impl: str = "gather", opset: Optional[int] = None,
            progress: Optional[Progress] = None) -> RewriteResult:
    """Rewrite ``model`` in place (see the module docstring) and return it with the counts per node kind.

    ``impl``: a key of :data:`IMPLEMENTATIONS`; ``opset``: the ONNX opset of the result (default: the
    model's own). Raises :class:`RewriteError` for a node it cannot rewrite; ``model`` is then left as it
    was unless an upward ``opset`` conversion had already been applied.
    """
    if impl not in IMPLEMENTATIONS:
        raise RewriteError(f"unknown implementation {impl!r}; choose from {', '.join(sorted(IMPLEMENTATIONS))}")
    if opset is not None and opset > _onnx_opset(model):
        model = _convert_opset(model, opset)
    version = _onnx_opset(model)
    nodes = _source_nodes(model)
    if nodes and version < FUNCTIONS_OPSET:
        raise RewriteError(f"the model's opset {version} is older than the {FUNCTIONS_OPSET} the portable "
                           f"functions need; add --opset {FUNCTIONS_OPSET} (or later) to convert it")
    _check_function_opsets(model, version)
    counts, used = _replace_deform_convs(nodes, IMPLEMENTATIONS[impl], progress)
    if counts:
        model.opset_imports[DOMAIN] = DOMAIN_VERSION
        for function in model.functions.values():
            function.opset_imports[DOMAIN] = DOMAIN_VERSION
        _add_functions(model, used, version)
        if progress:
            progress("inlining the portable functions")
        _inline_portable_functions(model)
        _drop_unused_domains(model, {DOMAIN} | {kind.split("::")[0] for kind in counts if "::" in kind})
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
        progress = _print_progress if _count_nodes(model) >= LARGE_MODEL_NODES else None
        external = _needs_external_data(model)  # before an opset conversion loads the data into memory
        result = rewrite(model, impl=args.impl, opset=args.opset, progress=progress)
        with _staged(output, result.model, external, progress) as staged:
            if args.check:
                if progress:
                    progress("checking")
                for line in _check(args.input, staged, args.tolerance, args.seed):
                    print(line)
    except (ValueError, OSError) as error:  # RewriteError is a ValueError
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"{result.summary()} (impl {args.impl}, opset {_onnx_opset(result.model)}) -> {output}")
    return 0


def _output_path(args: argparse.Namespace) -> pathlib.Path:
    """Where to write: OUT, or the input itself with --in-place; never the input otherwise."""
    if args.in_place:
        if args.output is not None and not _same_file(args.output, args.input):
            raise RewriteError("--in-place overwrites the input; leave OUT out")
        return args.input
    if args.output is None:
        raise RewriteError("give OUT.onnx, or --in-place to overwrite the input")
    if _same_file(args.output, args.input):
        raise RewriteError(f"{args.output} is the input; pass --in-place to overwrite it")
    return args.output


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _load(path: pathlib.Path) -> ir.Model:
    """The model at ``path``, external data left on disk until needed."""
    try:
        model = ir.load(path)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise RewriteError(f"{path}: not an ONNX model ({_one_line(error)})") from None
    if not model.ir_version or not model.opset_imports:
        raise RewriteError(f"{path}: not an ONNX model (no IR version or opset)")
    return model


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in _all_nodes(model))


def _print_progress(message: str) -> None:
    print(f"rewrite: {message}", file=sys.stderr, flush=True)


def _needs_external_data(model: ir.Model) -> bool:
    """Whether to write the tensors to a data file: the input did, or they would not fit a protobuf file."""
    tensors = [value.const_value for graph in model.graphs() for value in graph.initializers.values()
               if value.const_value is not None]
    return any(isinstance(t, ir.ExternalTensor) for t in tensors) or sum(t.nbytes for t in tensors) > _PROTOBUF_LIMIT


#: Tensors above this many bytes in all go to external data (a protobuf file cannot exceed 2 GiB).
_PROTOBUF_LIMIT = 2**31 - 2**26


@contextlib.contextmanager
def _staged(output: pathlib.Path, model: ir.Model, external_data: bool,
            progress: Optional[Progress]) -> Iterator[pathlib.Path]:
    """Write ``model`` (with its tensors in ``OUT.data`` when ``external_data``) into a temporary folder
    beside ``output``, yield the staged path, and move it into place only if the body succeeds."""
    output = output.absolute()
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as folder:
        staged = pathlib.Path(folder) / output.name
        data = f"{output.name}.data" if external_data else None
        if progress:
            progress(f"writing {output}" + (f" and {data}" if data else ""))
        ir.save(model, staged, external_data=data)
        yield staged
        if data:
            os.replace(staged.parent / data, output.parent / data)
        os.replace(staged, output)


def _check(original: pathlib.Path, rewritten: pathlib.Path, tolerance: float, seed: int) -> list[str]:
    """Run onnx.checker (full check) on ``rewritten`` and compare both models on onnxruntime with random
    inputs; raise :class:`RewriteError` on a failure. Returns the report, one line per check."""
    try:
        onnx.checker.check_model(str(rewritten), full_check=True)
    except Exception as error:  # noqa: BLE001  (checker and shape inference raise different types)
        raise RewriteError(f"onnx.checker: {_one_line(error)}") from None
    report = ["check: onnx.checker (full_check) passed"]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        before = onnxruntime.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001
        return report + [f"check: the original does not run on onnxruntime ({_one_line(error)[:200]}); "
                         "outputs not compared"]
    after = onnxruntime.InferenceSession(str(rewritten), options, providers=["CPUExecutionProvider"])
    feeds = _random_feeds(before.get_inputs(), np.random.default_rng(seed))
    try:
        expected = before.run(None, feeds)
    except Exception as error:  # noqa: BLE001
        return report + [f"check: the original fails on random inputs ({_one_line(error)[:200]}); "
                         "outputs not compared"]
    actual = after.run(None, feeds)
    worst = max((_relative_error(a, e) for a, e in zip(actual, expected)), default=0.0)
    shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in feeds.items())
    line = (f"check: onnxruntime, original vs rewritten on random inputs ({shapes}): max |difference| "
            f"{worst:.3g} relative to max(1, max |original|), tolerance {tolerance:g}")
    if not worst <= tolerance:
        raise RewriteError(line.removeprefix("check: ") + ": outputs differ")
    return report + [line]


#: onnxruntime's type string -> numpy dtype, for the random inputs of --check.
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _random_feeds(inputs: Sequence, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs: standard-normal floats, zeros otherwise; a named dynamic dimension is 1 on axis 0 and
    16 elsewhere, the same wherever its name recurs."""
    sizes: dict[str, int] = {}
    feeds = {}
    for value in inputs:
        if value.type not in _ORT_TYPES:
            raise RewriteError(f"--check cannot make random values for input {value.name!r} of {value.type}")
        shape = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                shape.append(dim)
            else:
                shape.append(sizes.setdefault(dim, 1 if axis == 0 else 16) if dim else (1 if axis == 0 else 16))
        dtype = _ORT_TYPES[value.type]
        floating = np.issubdtype(dtype, np.floating)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype) if floating else np.zeros(shape, dtype)
    return feeds


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = max(1.0, float(np.nanmax(np.abs(expected.astype(np.float64)))))
    return float(np.nanmax(difference)) / scale


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
