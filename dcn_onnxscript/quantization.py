"""int8 quantization of a model that holds the lowering: the sampling path stays float, the per-tap GEMMs
become int8.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

A post-training quantizer (onnxruntime's ``quantize_static``, NNCF) quantizes every Conv, MatMul, Add, Mul,
Where, Gather... it finds, and so the lowering's coordinate arithmetic too: positions p_0 + p_k + Δp_k of
up to hundreds of pixels held in 256 steps, ``GridSample``'s grid in [-1, 1] in steps of 1/128 of the image,
a gather table's bilinear weights rounded. That costs tens of per cent of the output (a native
``DeformConv`` node, which no quantizer knows, simply stays float). What int8 is good for here is the
product with the weights, Σ_k w_k · (samples of tap k): a Conv (grid_sample: one 1x1 Conv per tap) or a
MatMul (gather: one over the im2col columns) with constant weights.

:func:`nodes_to_exclude` finds, in any exported or rewritten model, the nodes of the sampling path: every
sampler (``GridSample``, ``GatherND``) and the nodes between it and the GEMM that consumes its samples (the
mask multiply Δm_k, the gather lowering's blend, reshapes), and every node that only feeds them (offsets
to positions to grid or indices and weights, the mask's split and sigmoid, shape arithmetic). It goes by
the graph's structure, not by names, so it serves the dynamo and TorchScript exports and the rewriter's
output alike. A layer's GEMMs, the offset/mask predictor and the rest of the network stay quantizable.

    from onnxruntime.quantization import QuantFormat, quantize_static
    from dcn_onnxscript.quantization import nodes_to_exclude

    quantize_static(model, "int8.onnx", reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    nodes_to_exclude=nodes_to_exclude(model))
    # NNCF: nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(names=nodes_to_exclude(model)))

:func:`quantize_static` is that call with onnxruntime's defaults otherwise (QDQ, per-channel weights).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import onnx

#: Ops that sample the image at computed positions: where the sampling path ends.
SAMPLERS = ("GridSample", "GatherND")
#: Ops that multiply by weights; with a constant weight input they are a layer of the network (a per-tap
#: GEMM, the offset/mask predictor), never part of the sampling path.
_WEIGHTED = ("Conv", "MatMul", "Gemm")
#: Ops whose output depends on their input's shape only: the sampling path does not reach through them.
_SHAPE_ONLY = ("Shape", "Size")


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Names of the values known before run time: initializers and ``Constant`` outputs."""
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _is_layer(node: onnx.NodeProto, constants: set[str]) -> bool:
    """A Conv/MatMul/Gemm with a constant weight (its second input)."""
    return node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in constants


def _sampling_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of every layer's sampling path, in graph order (see the module's docstring)."""
    constants = _constants(graph)
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
        for name in node.output:
            producer[name] = index
    outputs = {o.name for o in graph.output}

    # Forward: from each sampler along its samples up to (not into) the layer that weighs them.
    chosen: set[int] = set()
    gemms: set[int] = set()
    stack = [i for i, node in enumerate(graph.node) if node.op_type in SAMPLERS]
    while stack:
        index = stack.pop()
        if index in chosen or index in gemms:
            continue
        if _is_layer(graph.node[index], constants):
            gemms.add(index)
            continue
        if any(name in outputs for name in graph.node[index].output):
            raise ValueError(f"model: the samples of {graph.node[index].op_type} node {graph.node[index].name!r} "
                             "reach the graph's output without a Conv or MatMul with constant weights")
        chosen.add(index)
        stack.extend(c for name in graph.node[index].output for c in consumers.get(name, ()))
    # Σ_k: the Adds that sum per-tap GEMMs (grid_sample) accumulate in float, as an int8 GEMM does in int32.
    for index, node in enumerate(graph.node):
        if node.op_type == "Add" and all(producer.get(name) in gemms | chosen for name in node.input):
            chosen.add(index)

    # Backward: every node that only feeds the sampling path (positions, grids, indices, weights, the mask),
    # up to the network's layers; grown until nothing more joins.
    def feeds_only_chosen(index: int) -> bool:
        node = graph.node[index]
        return not _is_layer(node, constants) and node.op_type != "Constant" and all(
            name not in outputs and all(c in chosen for c in consumers.get(name, ())) for name in node.output)

    def producers(index: int) -> list[int]:
        node = graph.node[index]
        if node.op_type in _SHAPE_ONLY:
            return []
        return [producer[name] for name in node.input if name in producer]

    grown = True
    while grown:  # graph order is topological: a reverse pass sees a node's consumers before the node
        grown = False
        for index in reversed(range(len(graph.node))):
            if index not in chosen and feeds_only_chosen(index) and any(
                    index in producers(c) for name in graph.node[index].output for c in consumers.get(name, ())):
                chosen.add(index)
                grown = True
    return [graph.node[i] for i in sorted(chosen)]


def nodes_to_exclude(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay float in an int8 ``model``: the sampling paths of its deformable
    convolutions (see the module's docstring), for ``quantize_static(nodes_to_exclude=...)`` or
    ``nncf.IgnoredScope(names=...)``. Nodes without a name cannot be excluded: ``ValueError`` (name them
    first, e.g. with onnxruntime's ``quant_pre_process`` or ``onnx_ir``)."""
    nodes = _sampling_nodes(model.graph)
    unnamed = [node.op_type for node in nodes if not node.name]
    if unnamed:
        raise ValueError(f"model: {len(unnamed)} nodes of the sampling path have no name ({sorted(set(unnamed))}); "
                         "name every node before quantizing")
    return [node.name for node in nodes]


def quantize_static(model_input: Union[str, os.PathLike, onnx.ModelProto], model_output: Union[str, os.PathLike],
                    calibration_data_reader: Any, nodes_to_exclude_also: Optional[list[str]] = None,
                    **options: Any) -> None:
    """onnxruntime's ``quantize_static`` (QDQ, per-channel weights unless ``options`` say otherwise) of
    ``model_input`` into ``model_output``, with the sampling path of every deformable convolution left float
    (:func:`nodes_to_exclude`) and ``nodes_to_exclude_also`` besides."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    model = model_input if isinstance(model_input, onnx.ModelProto) else onnx.load(os.fspath(model_input))
    excluded = [*nodes_to_exclude(model), *(nodes_to_exclude_also or [])]
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True, **options}
    ort_quantize_static(model, model_output, calibration_data_reader, nodes_to_exclude=excluded, **options)
