"""int8 quantization of a model that holds the lowering: the sampling path stays float, and so, by default,
do the deformable layers' per-tap GEMMs, as a native ``DeformConv`` node stays float; the rest of the network
becomes int8.

    y(p_0) = Σ_k w_k · x(p_0 + p_k + Δp_k) · Δm_k

A post-training quantizer (onnxruntime's ``quantize_static``, NNCF) quantizes every Conv, MatMul, Add, Mul,
Where, Gather... it finds, and so the lowering's coordinate arithmetic too: positions p_0 + p_k + Δp_k of
up to hundreds of pixels held in 256 steps, ``GridSample``'s grid in [-1, 1] in steps of 1/128 of the image,
a gather table's bilinear weights rounded. That costs tens of per cent of the output (a native
``DeformConv`` node, which no quantizer knows, simply stays float).

:func:`nodes_to_exclude` finds, in any exported or rewritten model, the nodes of the sampling path: every
sampler (``GridSample``, ``GatherND``) and the nodes between it and the GEMM that consumes its samples (the
mask multiply Δm_k, the gather lowering's blend, reshapes), every node that only feeds them (offsets to
positions to grid or indices and weights, the mask's split and sigmoid, shape arithmetic), and the Adds of
Σ_k over per-tap GEMMs (an int8 GEMM accumulates in int32, not in rounded partial sums). It goes by
the graph's structure, not by names, so it serves the dynamo and TorchScript exports and the rewriter's
output alike. The offset/mask predictor and the rest of the network stay quantizable.

The product with the weights, Σ_k w_k · (samples of tap k) (grid_sample: one 1x1 Conv per tap; gather: one
MatMul over the im2col columns), is the one part of the layer that int8 can speed up. ``gemms="float"`` (the
default) leaves it float, so that the int8 model has exactly the int8 layers that the same network with native
``DeformConv`` has; ``gemms="int8"`` quantizes it too, which adds one int8 layer (its activations are the
samples) that native does not have:

    from dcn_onnxscript.quantization import nodes_to_exclude, quantize_static

    # onnxruntime: QDQ, per-channel, 7-bit weights (reduce_range: see quantize_static), the layer float
    quantize_static(model, "int8.onnx", [{"img": image} for image in calibration_images])
    # NNCF (ONNX backend): the same nodes as an ignored scope; 7-bit weights for the same reason
    nncf.quantize(model, nncf.Dataset(calibration_images, lambda image: {"img": image}),
                  ignored_scope=nncf.IgnoredScope(names=nodes_to_exclude(model)),
                  advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE))

Measured (``benchmarks/quantize_int8.py``, docs/deploy.md), against the same model with native ``DeformConv``
left float and the same quantizer settings: with ``gemms="float"`` within 1.08x of its error over the
generated blocks (``--generated``); with ``gemms="int8"`` within 1.15x on the DCNv2 block, 1.3x on the DCNv2
ResNet-50, and within 1.25x over the generated blocks but for one, 2.1x: sub-pixel offsets and image-like
calibration, where native's own error is small and the per-tap GEMMs' int8 activations dominate.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Literal, Optional, Union

import numpy as np
import onnx

#: Ops that sample the image at computed positions: ``GridSample``, and a gather whose indices are computed
#: from the inputs' values (the gather lowering's neighbours); where the sampling path ends.
SAMPLERS = ("GridSample", "Gather", "GatherND", "GatherElements")
#: Ops that multiply by weights; with weights known before run time they are a layer of the network (a
#: per-tap GEMM, the offset/mask predictor), never part of the sampling path.
_WEIGHTED = ("Conv", "MatMul", "Gemm")
#: Where a deformable layer's per-tap GEMMs (its product with the weights) are left: ``"float"``, as native
#: ``DeformConv`` is, or ``"int8"``.
Gemms = Literal["float", "int8"]
#: Ops whose output depends on their input's shape only: the sampling path does not reach through them.
_SHAPE_ONLY = ("Shape", "Size")


class _Graph:
    """Who produces and who consumes each value of ``graph``, and which values depend on the values (not
    only the shapes) of its inputs."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        initializers = {i.name for i in graph.initializer}
        self.dynamic = {i.name for i in graph.input} - initializers
        for index, node in enumerate(self.nodes):  # graph order is topological
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
            for name in node.output:
                self.producer[name] = index
            if node.op_type not in _SHAPE_ONLY and self.dynamic.intersection(node.input):
                self.dynamic.update(node.output)

    def is_layer(self, index: int) -> bool:
        """A Conv/MatMul/Gemm whose weights (second input) are known before run time."""
        node = self.nodes[index]
        return node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] not in self.dynamic

    def is_sampler(self, index: int) -> bool:
        node = self.nodes[index]
        return node.op_type == "GridSample" or (node.op_type in SAMPLERS and node.input[1] in self.dynamic)

    def readers(self, index: int) -> list[int]:
        """The nodes that read an output of node ``index``."""
        return [c for name in self.nodes[index].output for c in self.consumers.get(name, ())]

    def sources(self, index: int) -> list[int]:
        """The nodes whose values node ``index`` reads (none for a Shape: it reads no values)."""
        node = self.nodes[index]
        return [] if node.op_type in _SHAPE_ONLY else [self.producer[n] for n in node.input if n in self.producer]


def _sampling_nodes(graph: onnx.GraphProto, gemms: Gemms) -> list[onnx.NodeProto]:
    """The nodes of every layer's sampling path, and with ``gemms="float"`` its per-tap GEMMs, in graph order
    (see the module's docstring)."""
    if gemms not in ("float", "int8"):
        raise ValueError(f"gemms must be 'float' or 'int8', got {gemms!r}")
    g = _Graph(graph)

    # Forward: from each sampler along its samples up to (not into) the layers that weigh them.
    chosen: set[int] = set()
    gemms_of_layers: set[int] = set()
    stack = [i for i in range(len(g.nodes)) if g.is_sampler(i)]
    while stack:
        index = stack.pop()
        if index in chosen or index in gemms_of_layers:
            continue
        if g.is_layer(index):
            gemms_of_layers.add(index)
            continue
        node = g.nodes[index]
        if g.outputs.intersection(node.output):
            raise ValueError(f"model: the samples of {node.op_type} node {node.name!r} reach the graph's output "
                             "without a Conv, MatMul or Gemm with constant weights")
        chosen.add(index)
        stack.extend(g.readers(index))

    # Σ_k: the Adds over per-tap GEMMs (and the bias) accumulate in float, as an int8 GEMM does in int32.
    sums = set(gemms_of_layers)
    for index, node in enumerate(g.nodes):
        if node.op_type == "Add" and sums.intersection(g.sources(index)) and all(
                g.producer.get(name) in sums or name not in g.dynamic for name in node.input):
            sums.add(index)
            chosen.add(index)

    # Backward: every node that only feeds the sampling path (positions, grids, indices, weights, the mask),
    # up to the network's layers; grown until nothing more joins.
    def feeds_only_chosen(index: int) -> bool:  # (a Shape reads no values: it may be anyone's)
        node = g.nodes[index]
        return not g.is_layer(index) and node.op_type != "Constant" and not g.outputs.intersection(node.output) \
            and all(c in chosen or g.nodes[c].op_type in _SHAPE_ONLY for c in g.readers(index))

    grown = True
    while grown:  # a reverse pass sees a node's readers before the node
        grown = False
        for index in reversed(range(len(g.nodes))):
            if index not in chosen and feeds_only_chosen(index) and any(
                    index in g.sources(c) for c in g.readers(index)):
                chosen.add(index)
                grown = True
    if gemms == "float":
        chosen.update(gemms_of_layers)
    return [g.nodes[i] for i in sorted(chosen)]


def nodes_to_exclude(model: onnx.ModelProto, gemms: Gemms = "float") -> list[str]:
    """Names of the nodes that must stay float in an int8 ``model``: the sampling paths of its deformable
    convolutions and, with ``gemms="float"``, their per-tap GEMMs (see the module's docstring), for
    ``quantize_static(nodes_to_exclude=...)`` or ``nncf.IgnoredScope(names=...)``. Nodes without a name cannot
    be excluded: ``ValueError`` (name them first, e.g. with onnxruntime's ``quant_pre_process`` or
    ``onnx_ir``)."""
    nodes = _sampling_nodes(model.graph, gemms)
    unnamed = [node.op_type for node in nodes if not node.name]
    if unnamed:
        raise ValueError(f"model: {len(unnamed)} nodes of the sampling path have no name ({sorted(set(unnamed))}); "
                         "name every node before quantizing")
    return [node.name for node in nodes]


def calibration_reader(feeds: Iterable[dict[str, np.ndarray]]) -> Any:
    """An onnxruntime ``CalibrationDataReader`` that hands out ``feeds`` ({input name: array}) one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self.feeds, None)

    return _Feeds()


def quantize_static(model_input: Union[str, os.PathLike, onnx.ModelProto], model_output: Union[str, os.PathLike],
                    calibration: Any, gemms: Gemms = "float", **options: Any) -> None:
    """int8 ``model_input`` into ``model_output`` by onnxruntime's ``quantize_static``, the sampling path of every
    deformable convolution left float, and its per-tap GEMMs too unless ``gemms="int8"``
    (:func:`nodes_to_exclude`, plus any ``nodes_to_exclude`` in ``options``). ``calibration``: a
    ``CalibrationDataReader`` or an iterable of feeds ({input name: array}).

    Defaults (``options`` override them, and pass any other ``quantize_static`` argument): QDQ, per-channel
    weights, and ``reduce_range=True``, 7-bit weights: on an x86 CPU without VNNI (AVX2 only), onnxruntime's
    int8 kernels add pairs of u8·s8 products in 16 bits, which 8-bit weights overflow (measured on the
    per-tap GEMMs: errors of 30 % of the output instead of 8 %)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if isinstance(model_input, onnx.ModelProto):  # onnxruntime edits a ModelProto it is given: hand it a copy
        model = onnx.ModelProto.FromString(model_input.SerializeToString())
    else:
        model = onnx.load(os.fspath(model_input))
    reader = calibration if isinstance(calibration, CalibrationDataReader) else calibration_reader(calibration)
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True, "reduce_range": True, **options}
    options["nodes_to_exclude"] = [*nodes_to_exclude(model, gemms), *(options.get("nodes_to_exclude") or [])]
    ort_quantize_static(model, model_output, reader, **options)
