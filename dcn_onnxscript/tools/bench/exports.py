"""Every export path of :data:`.catalog.PATHS`, through public APIs only, and what each file holds: nodes
(per deformable layer and in all), opset, the ops that sample.

Nodes are graph nodes other than ``Constant`` (the TorchScript exporter writes constants as nodes, the
dynamo exporter as initializers); a call of a model-local function counts as the nodes of its body. Per
layer, for a network: (nodes - nodes of the same network from the same exporter, opset and shapes with one
node per deformable layer + L) / L, L the number of those nodes: native ``DeformConv`` for the dynamo
exporter, a stub node for the TorchScript one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Optional

import onnx
import onnx.version_converter
import onnx_ir as ir
import torch
from onnx import helper
from torch.onnx import symbolic_helper

import dcn_onnxscript
from dcn_onnxscript.export import _internals
from dcn_onnxscript.lowering import table as lowering_table
from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.tools.bench import birefnet, peers, progress
from dcn_onnxscript.tools.bench.cases import Case
from dcn_onnxscript.tools.bench.catalog import (
    BIREFNET,
    CORES,
    DCOE,
    DCOE_PATCHED,
    DYNAMO,
    FORK,
    FUNCTION,
    LAYERS,
    NATIVE,
    NATIVE_OPSET,
    NATIVE_TORCHSCRIPT,
    PLAIN,
    REWRITE,
    STATIC_EXPORTERS,
    TORCHSCRIPT,
    ExportPath,
    Unavailable,
)

NAN = float("nan")
_QUALIFIED_NAME = _internals.QUALIFIED_NAME
#: The stub's domain: one node per deformable layer, for the node counts' baselines.
_STUB_DOMAIN = "bench"
#: The ops that show how a file samples, in the order they are named; else a flat-index ``Gather``.
SAMPLING_OPS = ("DeformConv", "GridSample", "GatherND", "GatherElements")
_FLAT_GATHER = "Gather"
#: Terminal colour codes, which torch.onnx puts in its error messages.
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")
#: The standalone function per (bias, mask): the public names of :mod:`dcn_onnxscript`.
_FUNCTIONS = {(True, True): "deform_conv2d", (False, True): "deform_conv2d_no_bias",
              (True, False): "deform_conv2d_no_mask", (False, False): "deform_conv2d_no_bias_no_mask"}
#: DeformConv's attributes the functions take, with DeformConv's defaults for a 2-D kernel.
_FUNCTION_ATTRIBUTES = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
                        "offset_group": 1}


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """Progress lines before and after a step, torch.onnx's own phase lines in between; what native code
    writes to the standard output meanwhile is discarded (torch's TorchScript exporter dumps the whole graph
    there when it fails, whatever its verbosity), so that it stays the tables'."""
    with progress.step(what), warnings.catch_warnings(), contextlib.redirect_stdout(progress), _native_stdout():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _native_stdout() -> Iterator[None]:
    """File descriptor 1 on the null device while the block runs."""
    sys.__stdout__.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_case(case: Case, workdir: pathlib.Path, args: argparse.Namespace) -> None:
    """Export every path of ``case`` not in ``args.skip`` to ``workdir/{case}_{path}.onnx``: fills the
    case's files, export seconds, node counts, opsets and sampling ops, or its failures. The counts come
    after every export, so that a network's rows count against the native row's file where they can."""
    for name, path in case.paths.items():
        if name in args.skip:
            continue
        file = workdir / f"{case.name}_{name}.onnx"
        with phase(f"{case.name}: exporting {name} ({path.exporter}, opset {path.opset or 'default'})"):
            if _try(case, name, lambda: export(path, case, file, args)):
                case.onnx_paths[name] = file
    for name, file in case.onnx_paths.items():
        model = onnx.load(str(file), load_external_data=False)
        case.opsets[name] = default_opset(model)
        case.sampling_ops[name] = sampling_ops(model)
        total = count_nodes(model)
        single = case.name in LAYERS or case.name in CORES
        per_layer = total if single else _per_layer(case, case.paths[name], workdir, total)
        case.nodes[name] = (per_layer, total)


def export(path: ExportPath, case: Case, file: pathlib.Path, args: argparse.Namespace) -> float:
    """Export ``case.module`` to ``file`` along ``path`` (a :data:`REWRITE` path: rewrite its source's file);
    returns the seconds it took."""
    if path.exporter == REWRITE:
        return _rewritten(case, path, file)
    dynamic = _is_dynamic(case, path)
    if path.exporter == DYNAMO:
        return _dynamo(case, file, path.opset, _translation_table(case, path.impl), dynamic)
    if path.exporter == PLAIN:
        from dcn_onnxscript.tools.bench.internimage import PlainCore, core_of

        plain = Case(case.name, PlainCore(core_of(CORES[case.name])), case.inputs)
        return _torchscript(plain, file, path.opset, dynamic)
    if path.exporter == NATIVE:
        return _dynamo(case, file, path.opset, dcn_onnxscript.translation_table(NATIVE), dynamic)
    if path.exporter == FUNCTION:
        return _function(case, file, dynamic)
    if path.exporter == TORCHSCRIPT:
        if not dcn_onnxscript.is_registered():
            dcn_onnxscript.register()
        return _torchscript(case, file, path.opset, dynamic)
    if path.exporter == NATIVE_TORCHSCRIPT:
        return _torchscript(case, file, path.opset, dynamic, _native_symbolic)
    if path.exporter == DCOE:
        return _torchscript(case, file, path.opset, dynamic, peers.import_dcoe().deform_conv2d_func(True, False))
    if path.exporter == DCOE_PATCHED and case.name == BIREFNET:
        return _timed(lambda: birefnet.tutorial_export(case.module, case.inputs[0], file))
    if path.exporter == DCOE_PATCHED:
        dcoe = peers.import_dcoe()
        with peers.tutorial_patch(dcoe):
            return _torchscript(case, file, path.opset, dynamic, dcoe.deform_conv2d_func(True, False))
    if path.exporter == FORK:
        translation = peers.load_fork(args.fork).create_deform_conv2d_custom_op()
        return _dynamo(case, file, path.opset, {torch.ops.torchvision.deform_conv2d.default: translation}, dynamic)
    raise ValueError(f"unknown exporter {path.exporter!r}")


def _translation_table(case: Case, impl: Optional[str]) -> Optional[dict]:
    """The custom translation table of lowering ``impl`` for ``case``'s operator (None: the registered one)."""
    if impl is None:
        return None
    if case.name in CORES:
        from dcn_onnxscript.export import dcnv3

        return dcnv3.translation_table(impl)
    return dcn_onnxscript.translation_table(impl)
def _is_dynamic(case: Case, path: ExportPath) -> bool:
    """Whether ``path``'s file of ``case`` has a dynamic batch, height and width (a rewrite: as its source)."""
    if path.exporter == REWRITE:
        path = case.paths[path.source]
    return case.dynamic and path.exporter not in STATIC_EXPORTERS


def _rewritten(case: Case, path: ExportPath, file: pathlib.Path) -> float:
    """Row ``path.source``'s file rewritten (``rewrite``'s proof included) to ``file``; the seconds it took."""
    if path.source not in case.onnx_paths:
        raise Unavailable(f"skipped: no {path.source} file")
    model = ir.load(case.onnx_paths[path.source])
    start = time.perf_counter()
    result = rewrite(model, impl=path.impl or lowering_table.DEFAULT, opset=path.opset)
    seconds = time.perf_counter() - start
    if not result.counts:
        raise RuntimeError(f"nothing rewritten: {'; '.join(result.notes) or 'no deformable convolution found'}")
    ir.save(result.model, file)
    return seconds


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _dynamo(case: Case, file: pathlib.Path, opset: Optional[int], table: Optional[dict], dynamic: bool) -> float:
    """``torch.onnx.export(dynamo=True)``; ``dynamic``: input 0 with a dynamic batch, height and width."""
    dims = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")},)
    return _timed(lambda: torch.onnx.export(
        case.module, case.inputs, str(file), dynamo=True, opset_version=opset, custom_translation_table=table,
        dynamic_shapes=dims if dynamic else None, verbose=case.name not in LAYERS and case.name not in CORES))


def _torchscript(case: Case, file: pathlib.Path, opset: int, dynamic: bool, symbolic: Optional[Callable] = None,
                 custom_opsets: Optional[dict[str, int]] = None) -> float:
    """``torch.onnx.export(dynamo=False)``, through dcn_onnxscript's registered symbolic or, given
    ``symbolic``, through that one alone; ``dynamic``: input 0 with a dynamic batch, height and width."""
    names = [f"input_{i}" for i in range(len(case.inputs))]
    export = lambda: torch.onnx.export(  # noqa: E731
        case.module, case.inputs, str(file), dynamo=False, opset_version=opset, input_names=names,
        dynamic_axes={names[0]: {0: "batch", 2: "height", 3: "width"}} if dynamic else None,
        custom_opsets=custom_opsets)
    if symbolic is None:
        return _timed(export)
    with _only_symbolic(symbolic, opset):
        return _timed(export)


@contextlib.contextmanager
def _only_symbolic(symbolic: Callable, opset: int) -> Iterator[None]:
    """``symbolic`` serves deform_conv2d in TorchScript exports at ``opset`` while the block runs, with
    dcn_onnxscript's own registration lifted."""
    was_registered = dcn_onnxscript.is_registered()
    dcn_onnxscript.unregister()
    torch.onnx.register_custom_op_symbolic(_QUALIFIED_NAME, symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_QUALIFIED_NAME, opset)
        if was_registered:
            dcn_onnxscript.register()


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _native_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h,
                     dilation_w, groups, offset_groups, use_mask):
    """ONNX ``DeformConv`` (opset 19) in place of deform_conv2d."""
    inputs = [input, weight, offset, bias, *([mask] if use_mask else [])]
    return g.op("DeformConv", *inputs, kernel_shape_i=_internals.tensor_sizes(weight)[2:],
                strides_i=[stride_h, stride_w], pads_i=[pad_h, pad_w, pad_h, pad_w],
                dilations_i=[dilation_h, dilation_w], group_i=groups, offset_group_i=offset_groups)


def _stub_symbolic(g, input, weight, offset, mask, bias, *args):
    """One node in place of deform_conv2d (counting only: the network's nodes outside its layers)."""
    output = g.op(f"{_STUB_DOMAIN}::DeformConv2d", input, weight, offset, mask, bias)
    offset_sizes, weight_sizes = _internals.tensor_sizes(offset), _internals.tensor_sizes(weight)
    if offset_sizes and weight_sizes:
        n, _, height, width = offset_sizes
        output.setType(offset.type().with_sizes([n, weight_sizes[0], height, width]))
    return output


def _function(case: Case, file: pathlib.Path, dynamic: bool) -> float:
    """The native export (reused when its row has one) with each ``DeformConv`` replaced by a call of
    dcn_onnxscript's standalone function; seconds of both steps."""
    if NATIVE in case.onnx_paths:
        native, seconds = case.onnx_paths[NATIVE], case.export_s[NATIVE]
    else:
        native = file
        seconds = _dynamo(case, file, NATIVE_OPSET, dcn_onnxscript.translation_table(NATIVE), dynamic)
    start = time.perf_counter()
    model = onnx.load(str(native))
    onnx.save(calling_functions(model), str(file))
    return seconds + time.perf_counter() - start


def calling_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``DeformConv`` node a call of the standalone function of its (bias, mask), at the
    functions' opset (a model-local function must import the model's version of each domain) with their
    FunctionProtos added."""
    used = {}
    for node in model.graph.node:
        if node.op_type != "DeformConv" or node.domain not in ("", "ai.onnx"):
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        function = getattr(dcn_onnxscript, _FUNCTIONS[(inputs[3] != "", inputs[4] != "")])
        given = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        attributes = {name: given.get(name, default) for name, default in _FUNCTION_ATTRIBUTES.items()}
        call = helper.make_node(function.name, [name for name in inputs if name], list(node.output),
                                node.name, domain=dcn_onnxscript.DOMAIN, **attributes)
        node.CopyFrom(call)
        used[function.name] = function
    if not used:
        return model
    protos = [proto for function in used.values() for proto in dcn_onnxscript.function_protos(function)]
    opset = max(default_opset(proto) for proto in protos)
    model.functions.extend(protos)
    model.opset_import.append(helper.make_opsetid(dcn_onnxscript.DOMAIN, 1))
    if default_opset(model) != opset:
        model = onnx.version_converter.convert_version(model, opset)
        model.functions.extend(protos)  # the converter drops them
    return model


def _try(case: Case, name: str, export: Callable[[], float]) -> bool:
    """Run ``export`` for row ``name`` of ``case``, recording its seconds, or why it failed."""
    try:
        case.export_s[name] = export()
        return True
    except Exception as error:  # noqa: BLE001  (any failure of a model is reported in its row)
        case.failures[name] = " ".join(_ANSI_STYLE.sub("", _reason(error)).split())[:200]
        progress(f"{case.name}: {name}: {case.failures[name]}")
        return False


def _reason(error: Exception) -> str:
    """Why an export failed: the exception, and the first cause of a wrapping one (torch.onnx's
    ``ConversionError`` says only which step failed)."""
    if isinstance(error, Unavailable):
        return str(error)
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    if root is error:
        return f"export failed: {type(error).__name__}: {error}"
    return f"export failed: {type(error).__name__}, from {type(root).__name__}: {root}"


def _per_layer(case: Case, path: ExportPath, workdir: pathlib.Path, total: int) -> float:
    """Nodes per deformable layer of a network's export: against the same export with one node per layer."""
    baseline = _baseline(case, path, workdir)
    if baseline is None:
        return NAN
    nodes, layers = baseline
    return (total - nodes + layers) / layers


def _baseline(case: Case, path: ExportPath, workdir: pathlib.Path) -> Optional[tuple[int, int]]:
    """(nodes, layers) of ``case`` exported with one node per deformable layer and the same shapes: native
    ``DeformConv`` for the dynamo paths (the native row's file where it fits), a stub node through the same
    TorchScript export for the others (None if that export failed)."""
    dynamic = _is_dynamic(case, path)
    if path.exporter == REWRITE:
        path = case.paths[path.source]
    same_shapes = Case(case.name, case.module, case.inputs, dynamic=dynamic)
    if path.exporter in (TORCHSCRIPT, DCOE, DCOE_PATCHED):
        op_type, what = "DeformConv2d", f"one stub node per layer (TorchScript, opset {path.opset})"
        file = workdir / f"{case.name}_stub_{path.opset}{'_dynamic' if dynamic else ''}.onnx"
        export = lambda: _torchscript(same_shapes, file, path.opset, dynamic, _stub_symbolic, {_STUB_DOMAIN: 1})  # noqa: E731
    elif NATIVE in case.onnx_paths and dynamic == case.dynamic:
        return _counted(onnx.load(str(case.onnx_paths[NATIVE])), "DeformConv")
    else:
        op_type, what = "DeformConv", f"native DeformConv ({'dynamic' if dynamic else 'static'} shapes)"
        file = workdir / f"{case.name}_native_{'dynamic' if dynamic else 'static'}.onnx"
        table = dcn_onnxscript.translation_table(NATIVE)
        export = lambda: _dynamo(same_shapes, file, NATIVE_OPSET, table, dynamic)  # noqa: E731
    if not file.exists():
        with phase(f"{case.name}: the same with {what}, for the node count"):
            try:
                export()
            except Exception as error:  # noqa: BLE001  (the row keeps its total, without a per-layer count)
                progress(f"{case.name}: {_reason(error)}")
                return None
    return _counted(onnx.load(str(file)), op_type)


def _counted(model: onnx.ModelProto, op_type: str) -> tuple[int, int]:
    return count_nodes(model), sum(node.op_type == op_type for node in model.graph.node)


def count_nodes(model: onnx.ModelProto) -> int:
    """Graph nodes other than ``Constant``, a call of a model-local function counting as its body's nodes."""
    functions = {(f.domain, f.name): f for f in model.functions}

    def count(nodes) -> int:
        return sum(count(functions[(n.domain, n.op_type)].node) if (n.domain, n.op_type) in functions
                   else n.op_type != "Constant" for n in nodes)

    return count(model.graph.node)


def sampling_ops(model: onnx.ModelProto) -> str:
    """The ops of :data:`SAMPLING_OPS` that ``model`` holds (functions included), or ``Gather``."""
    found = op_types(model)
    return ", ".join(op for op in SAMPLING_OPS if op in found) or (_FLAT_GATHER if _FLAT_GATHER in found else "-")


def op_types(model: onnx.ModelProto) -> set[str]:
    """Every op type in the graph and the model-local functions."""
    return {node.op_type for node in model.graph.node} | {n.op_type for f in model.functions for n in f.node}


def default_opset(model) -> int:
    """The ONNX domain's version a ModelProto or FunctionProto imports."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
