"""The regions that deform_conv2d_onnx_exporter 1.x (the "seed" exporter, TorchScript) writes for one
``deform_conv2d``, found by their structure, their layer's attributes inferred from their constants, each
inference proven on onnxruntime, and each proven region replaced by one ``DeformConv`` node (domain
:data:`SEED_DOMAIN`), which the rewriter then lowers as it lowers a native one.

What the seed writes for one layer, read from its ``deform_conv2d_func`` (step names are its own):

- ``p = Add(p_0 + p_k, Reshape(offset))`` (N, G, K, 2, Ho, Wo), with ``p_0 + p_k`` one constant of shape
  (1, 1, K, 2, Ho, Wo) whose value at tap k = kh·kW + kw, output position (i, j) is
  ``(i·stride_h + extra_h + kh·dilation_h, j·stride_w + extra_w + kw·dilation_w)``;
- ``Floor``, ``Cast`` to int64, the four neighbours clipped to the padded image;
- ``Pad(X)`` by ``padding + extra`` on each side (``extra`` = 1 where the padding is 0, else 0), reshaped to
  (N, G, C/G, Hp, Wp); four samplers on it (``GatherND`` with ``batch_dims=2`` on its (N, G, Hp, Wp, C/G)
  transpose, or ``GatherElements`` on axis 3 of its (N, G, C/G, Hp·Wp) form);
- the bilinear weights from ``p - Floor(p)``, the weighted ``Sum``, the mask (a ``Mul`` by ``Reshape(mask)``);
- the columns reshaped to (N, C, Ho·kH, Wo·kW) and one ``Conv`` with ``strides = kernel_shape`` (the
  weights), then ``Add`` of the bias as a (1, O, 1, 1) constant (or the ``Conv``'s own bias input, after
  graph tools that fuse it).

Each region is found from the samplers that feed one ``Conv`` (the GEMM; graph tools merge what layers compute
alike, such as the index and weight nodes of layers that read one offset and one mask, or the Pad and samplers of
branches on one input, so the Conv is what tells the layers apart): the ``Pad`` they read (X), the ``Conv`` (Y, W,
and the bias after it), the one ``Floor`` their indices come from (offset, through ``p``'s ``Add``) and the one
value outside that the samples are multiplied by, other than what is computed from ``p`` (the mask). Its attributes
come from the ``Conv`` (kernel, groups), the offset's channels (offset groups), the ``Pad`` and the ``p_0 + p_k``
constant (padding, stride, dilation); where that constant is not in the seed's form, every stride and dilation from
1 to 4 and the padding as padded or one less that give the offset's output size are tried. An inference is kept
only once it is proven: the region, cut out with :class:`onnx.utils.Extractor`, and a native ``DeformConv`` of the
inferred attributes with the region's weights run on onnxruntime on random and on hostile offsets (samples far
outside the image, on its border, on whole pixels) and agree within :data:`TOLERANCE` (:data:`TOLERANCE_FLOAT16` in
float16). A region that cannot be proven is left as it was, with one line saying why. Nodes that a region shares
with others stay until the last of them is replaced.

Checked on: deform_conv2d_onnx_exporter 1.0.0, 1.1.0 and 1.2.0 (each from its tag, exporting with torch 1.13.1:
1.0.0 and 1.1.0 read torch's scalar types from tables torch 2 no longer has) at opsets 12 to 17 with every
option (GatherND or GatherElements, static or, through BiRefNet's tutorial's patch, dynamic batch), 1.2.0 on
today's torch (its OpenVINO patch too) at opsets 12, 16 and 17, and after onnxsim, onnxslim, onnxoptimizer
and onnxconverter_common's float16 conversion, layers that share one offset and mask too; its fork (github
nusu-github/deform_conv2d_onnx_exporter: the same steps in onnxscript, dynamo, opset 18, static shapes only).
1.0.0's graph differs from 1.2.0's by one Transpose that its four samplers share, which is also what onnxsim
makes of 1.2.0's graph.
Only the main graph is searched (the exporters write none inside subgraphs or functions).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.shape_inference
import onnx.utils
import onnx_ir as ir

#: The domain of the ``DeformConv`` node (DeformConv-19's inputs and attributes) that replaces a proven region
#: until the rewriter lowers it.
SEED_DOMAIN = "dcn_onnxscript.seed"
#: How the rewrite's report names what it replaced.
SEED_KIND = "deform_conv2d_onnx_exporter"
#: The DeformConv node is named after the region's Conv, with this suffix.
NODE_SUFFIX = "_deform_conv"
#: Largest difference allowed between a region and its DeformConv, relative to max(1, max |DeformConv|).
TOLERANCE = 1e-4
TOLERANCE_FLOAT16 = 1e-2
#: The strides and dilations tried where the p_0 + p_k constant does not give them.
CANDIDATE_STEPS = (1, 2, 3, 4)
#: A region holds about 120 nodes; a search that reaches more has left the layer.
_MAX_REGION_NODES = 600
#: How far (in nodes) the samplers' outputs are followed to the Conv, and their indices back to the Floor.
_MAX_SEARCH_NODES = 200
#: Ops the seed writes between Pad(X) and a sampler, and between a value and its reshaped form.
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten"})
#: The ONNX opset of the native DeformConv the proof compares with.
_DEFORM_CONV_OPSET = 19
#: The random inputs of the proof.
_PROOF_SEED = 24
_ONNX_FLOAT16 = onnx.TensorProto.FLOAT16

#: A value's rank where known.
Rank = Callable[[ir.Value], Optional[int]]


@dataclasses.dataclass(frozen=True)
class Attributes:
    """A layer's attributes in ``DeformConv`` terms; ``pads`` = (begin h, begin w, end h, end w)."""

    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    offset_group: int


@dataclasses.dataclass
class Region:
    """One seed layer in ``graph``: its inputs (X (N, C, H, W), offset (N, 2·G·K, Ho, Wo), mask
    (N, G·K, Ho, Wo) or ``None``), its weight W (O, C/groups, kH, kW) and bias (O,) (``None`` without), its
    output Y (N, O, Ho, Wo), the nodes from those inputs to Y, and what inference needs of them."""

    samplers: list[ir.Node]
    pad: ir.Node
    conv: ir.Node
    X: ir.Value
    offset: ir.Value
    mask: Optional[ir.Value]
    W: ir.Value
    bias: Optional[np.ndarray]
    Y: ir.Value
    p_grid: Optional[np.ndarray]
    nodes: list[ir.Node]

    #: The domain of the DeformConv node that replaces it.
    domain = SEED_DOMAIN

    def describe(self) -> str:
        first = self.samplers[0]
        return f"seed region of {first.op_type} {first.name!r} (output {self.Y.name!r})"

    @property
    def name(self) -> str:
        """What its DeformConv node is named after: its im2col Conv."""
        return self.conv.name or "seed"

    def written_shape(self, value: ir.Value) -> Optional[tuple[int, ...]]:
        return _written_shape(value, self)


class NotARegion(ValueError):
    """The samplers of one ``Pad`` do not form a seed region (or it cannot be proven); the message says why."""


# --- reading values -----------------------------------------------------------------------------------


def _constant(value: Optional[ir.Value]) -> Optional[np.ndarray]:
    """The value's constant (initializer or ``Constant`` node), or ``None``."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _is_constant(value: Optional[ir.Value]) -> bool:
    """Whether ``value`` is a constant, or a reshape of one (graph tools leave such reshapes)."""
    if value is None:
        return True
    value = _through_shape_ops(value)
    return value.const_value is not None or (value.producer() is not None and value.producer().op_type == "Constant")


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _ints_attr(node: ir.Node, name: str) -> Optional[tuple[int, ...]]:
    attr = node.attributes.get(name)
    return None if attr is None else tuple(attr.as_ints())


def _through_shape_ops(value: ir.Value, rank: Optional[Rank] = None) -> ir.Value:
    """``value`` followed back through the reshaping ops (their data input) to where it was computed, or,
    given ``rank``, to the first value of rank 4 (N, C, H, W) on the way."""
    while value.producer() is not None and value.producer().op_type in _SHAPE_OPS:
        if rank is not None and rank(value) == 4:
            break
        value = value.producer().inputs[0]
    return value


def _consumers(value: ir.Value) -> Iterator[ir.Node]:
    return (user for user, _ in value.uses())


# --- finding regions ----------------------------------------------------------------------------------


def _is_sampler(node: ir.Node) -> bool:
    """The seed's ``GatherND`` (batch_dims 2) or ``GatherElements`` (axis 3)."""
    if node.op_type == "GatherND" and node.domain in ("", "ai.onnx"):
        return _int_attr(node, "batch_dims", 0) == 2
    if node.op_type == "GatherElements" and node.domain in ("", "ai.onnx"):
        return _int_attr(node, "axis", 0) == 3
    return False


def _reads_pad(sampler: ir.Node) -> Optional[ir.Node]:
    """The ``Pad`` whose output ``sampler`` reads (through reshapes), or ``None``."""
    source = _through_shape_ops(sampler.inputs[0]).producer()
    return source if source is not None and source.op_type == "Pad" else None


def _samplers_by_conv(graph: ir.Graph) -> dict[Optional[ir.Node], list[ir.Node]]:
    """The seed's samplers of ``graph`` (those that read a ``Pad``), grouped by the ``Conv`` (the GEMM) that
    their samples reach first; a sampler that reaches several is in each group, one that reaches none (or only
    past :data:`_MAX_SEARCH_NODES` nodes) under ``None``. Graph tools merge what layers compute alike, so one
    ``Pad`` or one sampler may serve several layers: the Conv tells the layers apart."""
    groups: dict[Optional[ir.Node], list[ir.Node]] = collections.defaultdict(list)
    for node in graph:
        if _is_sampler(node) and _reads_pad(node) is not None:
            try:
                _, convs = _forward([node.outputs[0]], frozenset({"Conv"}))
            except NotARegion:
                convs = []
            for conv in dict.fromkeys(convs) or [None]:
                groups[conv].append(node)
    return groups


def _forward(starts: Iterable[ir.Value], stop: frozenset[str]) -> tuple[set[ir.Node], list[ir.Node]]:
    """The nodes reached forward from ``starts`` (at most :data:`_MAX_SEARCH_NODES`), not going past nodes
    whose op is in ``stop``, and those stopping nodes."""
    seen: set[ir.Node] = set()
    stops: list[ir.Node] = []
    queue = collections.deque(user for value in starts for user in _consumers(value))
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        if len(seen) > _MAX_SEARCH_NODES:
            raise NotARegion(f"more than {_MAX_SEARCH_NODES} nodes between the samplers and a Conv")
        if node.op_type in stop:
            stops.append(node)
            continue
        queue.extend(user for output in node.outputs for user in _consumers(output))
    return seen, stops


def _backward_to(starts: Iterable[ir.Value], op_type: str) -> list[ir.Node]:
    """The ``op_type`` nodes first reached backward from ``starts`` (at most :data:`_MAX_SEARCH_NODES`)."""
    seen: set[ir.Node] = set()
    found: list[ir.Node] = []
    queue = collections.deque(value.producer() for value in starts if value.producer() is not None)
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        if len(seen) > _MAX_SEARCH_NODES:
            break
        if node.op_type == op_type:
            found.append(node)
            continue
        queue.extend(value.producer() for value in node.inputs if value is not None and value.producer() is not None)
    return found


def _check_im2col(conv: ir.Node) -> None:
    """:class:`NotARegion` unless ``conv`` is the seed's im2col ``Conv``: a constant 4-D weight, strides = kernel,
    no dilations or pads."""
    kernel, strides = _ints_attr(conv, "kernel_shape"), _ints_attr(conv, "strides")
    weight = _constant(conv.inputs[1])
    if weight is None or weight.ndim != 4:
        raise NotARegion(f"Conv {conv.name!r} has no constant 4-D weight")
    if (kernel is not None and tuple(kernel) != weight.shape[2:]) or strides != tuple(weight.shape[2:]):
        raise NotARegion(f"Conv {conv.name!r} is not the seed's im2col Conv (strides {strides}, kernel "
                         f"{list(weight.shape[2:])})")
    if any(_ints_attr(conv, name) not in (None, expected) for name, expected in
           (("dilations", (1, 1)), ("pads", (0, 0, 0, 0)))):
        raise NotARegion(f"Conv {conv.name!r} is not the seed's im2col Conv (dilations or pads set)")


def _the_pad(samplers: list[ir.Node]) -> ir.Node:
    """The one ``Pad`` (of X) that every sampler reads."""
    pads = list(dict.fromkeys(_reads_pad(s) for s in samplers))
    if len(pads) != 1:
        raise NotARegion(f"the samplers read {len(pads)} Pad nodes, not one")
    return pads[0]


def _output_and_bias(conv: ir.Node) -> tuple[ir.Value, Optional[np.ndarray]]:
    """Y and the bias (O,): the Conv's own bias input, or an ``Add`` of a (1, O, 1, 1) constant after it."""
    out_channels = _constant(conv.inputs[1]).shape[0]
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        bias = _constant(_through_shape_ops(conv.inputs[2]))
        if bias is None or bias.size != out_channels:
            raise NotARegion(f"Conv {conv.name!r} has a bias that is not a constant of {out_channels} values")
        return conv.outputs[0], bias.reshape(out_channels)
    users = list(_consumers(conv.outputs[0]))
    if len(users) == 1 and users[0].op_type == "Add" and conv.outputs[0] not in conv.graph.outputs:
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is conv.outputs[0] else add.inputs[0]
        bias = _constant(_through_shape_ops(other))
        if bias is not None and bias.size == out_channels and (other.shape is None or tuple(other.shape) in (
                (1, out_channels, 1, 1), (out_channels, 1, 1))):
            return add.outputs[0], bias.reshape(out_channels)
    return conv.outputs[0], None


def _offset_and_grid(samplers: list[ir.Node], rank: Rank) -> tuple[ir.Value, Optional[np.ndarray], ir.Node]:
    """The offset, the p_0 + p_k constant ``p`` adds it to (``None`` if not a constant), and the Floor."""
    floors = list(dict.fromkeys(_backward_to((s.inputs[1] for s in samplers), "Floor")))
    if len(floors) != 1:
        raise NotARegion(f"the samplers' indices come from {len(floors)} Floor nodes, not one")
    p = floors[0].inputs[0]
    add = p.producer()
    if add is None or add.op_type != "Add":
        raise NotARegion("the sampling positions are not an Add of the kernel grid and the offset")
    first, second = add.inputs
    grid_value, moved = (first, second) if _is_constant(first) else (second, first)
    if not _is_constant(grid_value) or _is_constant(moved):
        raise NotARegion("the sampling positions are not an Add of a constant grid and the offset")
    offset = _through_shape_ops(moved, rank)
    return offset, _constant(grid_value), floors[0]


def _computed_from(value: ir.Value, source: ir.Value) -> bool:
    """Whether ``value`` is computed from ``source`` (searched backward, at most :data:`_MAX_SEARCH_NODES`)."""
    seen: set[ir.Node] = set()
    queue = collections.deque([value])
    while queue:
        current = queue.popleft()
        if current is source:
            return True
        node = current.producer()
        if node is None or node in seen or len(seen) >= _MAX_SEARCH_NODES:
            continue
        seen.add(node)
        queue.extend(v for v in node.inputs if v is not None)
    return False


def _mask(on_way: set[ir.Node], p: ir.Value, X: ir.Value, offset: ir.Value, rank: Rank) -> Optional[ir.Value]:
    """The one value from outside that the nodes between the samplers and the Conv multiply by, other than
    constants, what those nodes compute and what is computed from the sampling positions ``p`` (the bilinear
    weights): the mask, before its reshapes; ``None`` if none."""
    computed = {output for node in on_way for output in node.outputs}
    outside = {value for node in on_way if node.op_type == "Mul" for value in node.inputs
               if value is not None and value not in computed and not _is_constant(value)
               and not _computed_from(value, p)}
    masks = {_through_shape_ops(value, rank) for value in outside} - {X, offset}
    if len(masks) > 1:
        raise NotARegion(f"the samples are multiplied by {len(masks)} values from outside, not by one mask")
    return masks.pop() if masks else None


def _nodes_between(graph: ir.Graph, Y: ir.Value, boundary: set[ir.Value]) -> list[ir.Node]:
    """Every node that computes Y from ``boundary`` and constants, in graph order; :class:`NotARegion` if it
    reads anything else (a graph input, a value computed outside). Its nodes may be read outside it too (where
    graph tools merged what layers compute alike): :func:`replace` keeps those."""
    region: set[ir.Node] = set()
    queue = collections.deque([Y.producer()])
    while queue:
        node = queue.popleft()
        if node in region:
            continue
        region.add(node)
        if len(region) > _MAX_REGION_NODES:
            raise NotARegion(f"more than {_MAX_REGION_NODES} nodes between its inputs and its output")
        for value in node.inputs:
            if value is None or value in boundary or value.const_value is not None:
                continue
            if value.producer() is None:
                raise NotARegion(f"it reads graph input {value.name!r}, which is not its input, offset or mask")
            queue.append(value.producer())
    return [node for node in graph if node in region]


def find_region(graph: ir.Graph, conv: ir.Node, samplers: list[ir.Node], rank: Rank) -> Region:
    """The region of the samplers that feed ``conv``; :class:`NotARegion` saying why it is not one. ``rank``
    gives a value's rank where known (the offset and mask are the first rank-4 values before the seed's
    reshapes)."""
    pad = _the_pad(samplers)
    X = pad.inputs[0]
    if pad.attributes.get_string("mode", "constant") != "constant" or _nonzero(pad):
        raise NotARegion(f"Pad {pad.name!r} does not pad with zeros")
    _check_im2col(conv)
    on_way, _ = _forward((s.outputs[0] for s in samplers), frozenset({"Conv"}))
    Y, bias = _output_and_bias(conv)
    offset, p_grid, floor = _offset_and_grid(samplers, rank)
    mask = _mask(on_way, floor.inputs[0], X, offset, rank)
    boundary = {X, offset} | ({mask} if mask is not None else set())
    nodes = _nodes_between(graph, Y, boundary)
    if not set(samplers) <= set(nodes) or pad not in nodes:
        raise NotARegion("its samplers and Pad are not all on the way to its output")
    return Region(samplers=samplers, pad=pad, conv=conv, X=X, offset=offset, mask=mask, W=conv.inputs[1],
                  bias=bias, Y=Y, p_grid=p_grid, nodes=nodes)


def find_regions(graph: ir.Graph, rank: Rank) -> tuple[list[Region], list[str]]:
    """The seed regions of ``graph``, one per ``Conv`` that samplers feed, and one line per group of samplers
    that is not a region, saying why."""
    regions: list[Region] = []
    notes: list[str] = []
    for conv, samplers in _samplers_by_conv(graph).items():
        try:
            if conv is None:
                raise NotARegion("its samplers feed no Conv")
            regions.append(find_region(graph, conv, samplers, rank))
        except NotARegion as why:
            notes.append(f"left as it was: seed region of {samplers[0].op_type} {samplers[0].name!r} ({why})")
    return regions, notes


def _nonzero(pad: ir.Node) -> bool:
    """Whether ``pad`` pads with a value other than 0 (its third input)."""
    if len(pad.inputs) < 3 or pad.inputs[2] is None:
        return False
    value = _constant(pad.inputs[2])
    return value is None or bool(np.any(value != 0))


# --- inferring the attributes --------------------------------------------------------------------------


def _padded_by(pad: ir.Node) -> tuple[int, int]:
    """How far ``pad`` pads X's height and width (the same on both sides); :class:`NotARegion` otherwise."""
    pads = _constant(pad.inputs[1]) if len(pad.inputs) > 1 else None
    if pads is None:
        attr = _ints_attr(pad, "pads")
        pads = None if attr is None else np.array(attr)
    if pads is None or pads.shape != (8,):
        raise NotARegion(f"Pad {pad.name!r} has no constant 4-D pads")
    pads = [int(v) for v in pads]
    if pads[:2] != [0, 0] or pads[4:6] != [0, 0] or pads[2:4] != pads[6:8]:
        raise NotARegion(f"Pad {pad.name!r} pads {pads}, not the height and width alike on both sides")
    return pads[2], pads[3]


def _from_grid(grid: np.ndarray, kernel: tuple[int, int], out: tuple[int, int],
               padded: tuple[int, int]) -> Optional[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """(strides, padding, dilations) read off the p_0 + p_k constant (1, 1, K, 2, Ho, Wo) (see the module
    docstring); ``None`` where it is not in that form. A step that the grid cannot show (one output row, one
    kernel row) is left 0 for the candidates to fill."""
    K = kernel[0] * kernel[1]
    if grid.size != K * 2 * out[0] * out[1]:
        return None
    grid = grid.reshape(kernel[0], kernel[1], 2, out[0], out[1]).astype(np.float64)
    origin_y, origin_x = grid[0, 0, 0, 0, 0], grid[0, 0, 1, 0, 0]
    stride_h = grid[0, 0, 0, 1, 0] - origin_y if out[0] > 1 else 0
    stride_w = grid[0, 0, 1, 0, 1] - origin_x if out[1] > 1 else 0
    dilation_h = grid[1, 0, 0, 0, 0] - origin_y if kernel[0] > 1 else 0
    dilation_w = grid[0, 1, 1, 0, 0] - origin_x if kernel[1] > 1 else 0
    padding = (padded[0] - origin_y, padded[1] - origin_x)
    values = (stride_h, stride_w, *padding, dilation_h, dilation_w)
    if any(v != int(v) or v < 0 for v in values):
        return None
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = (int(v) for v in values)
    return (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w)


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def candidates(region: Region, x_shape: tuple[int, ...], offset_shape: tuple[int, ...]) -> list[Attributes]:
    """The attributes the region may stand for, the likeliest first: read off its constants where they are
    in the seed's form, else every stride and dilation in :data:`CANDIDATE_STEPS` and the padding as padded
    or one less (the seed pads one more where the padding is 0) that give the offset's output size."""
    weight = _constant(region.W)
    kernel = weight.shape[2:]
    K = kernel[0] * kernel[1]
    if offset_shape[1] % (2 * K):
        raise NotARegion(f"offset channels {offset_shape[1]} are not a multiple of 2*kH*kW = {2 * K}")
    group, offset_group = _int_attr(region.conv, "group", 1), offset_shape[1] // (2 * K)
    size, out, padded = x_shape[2:], offset_shape[2:], _padded_by(region.pad)
    read = _from_grid(region.p_grid, kernel, out, padded) if region.p_grid is not None else None
    per_axis = []
    for axis in range(2):
        steps = CANDIDATE_STEPS
        pads = [p for p in (padded[axis] - 1, padded[axis]) if p >= 0]
        if padded[axis] > 1:
            pads.reverse()
        options = [(s, p, d) for s, p, d in itertools.product(steps, pads, steps)]
        if read is not None:
            strides, padding, dilations = read
            fixed = (strides[axis], padding[axis], dilations[axis])
            options = [o for o in options if all(f in (0, v) for f, v in zip(fixed, o))]
        per_axis.append([o for o in options if _output_size(size[axis], kernel[axis], *o) == out[axis]])
    return [Attributes(strides=(h[0], w[0]), pads=(h[1], w[1], h[1], w[1]), dilations=(h[2], w[2]),
                       group=group, offset_group=offset_group)
            for h, w in itertools.product(*per_axis)]


# --- proving -------------------------------------------------------------------------------------------


def _reshaped_to(value: ir.Value, rank: int) -> Optional[tuple[int, ...]]:
    """The constant, fully written target shape of rank ``rank`` of a ``Reshape`` of ``value``, if any."""
    for user in _consumers(value):
        if user.op_type == "Reshape" and user.inputs[0] is value:
            shape = _constant(user.inputs[1])
            if shape is not None and shape.shape == (rank,) and bool((shape > 0).all()):
                return tuple(int(v) for v in shape)
    return None


def _written_shape(value: ir.Value, region: Region) -> Optional[tuple[int, ...]]:
    """The shape the seed wrote for the region's input ``value`` into its reshapes: Pad(X) to
    (N, G, C/G, Hp, Wp), the offset to (N, G, K, 2, Ho, Wo), the mask to (N, G, 1, K, Ho, Wo)."""
    if value is region.X:
        padded = _reshaped_to(region.pad.outputs[0], 5)
        if padded is None:
            return None
        pad_h, pad_w = _padded_by(region.pad)
        n, groups, per_group, height, width = padded
        return n, groups * per_group, height - 2 * pad_h, width - 2 * pad_w
    written = _reshaped_to(value, 6)
    if written is None:
        return None
    n, groups, first, second, height, width = written
    return n, groups * first * second, height, width


class Prover:
    """Runs regions of one model, cut out with :class:`onnx.utils.Extractor`, against native ``DeformConv``
    on onnxruntime."""

    def __init__(self, model: ir.Model) -> None:
        self.extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(ir.to_proto(model)))
        self.initializers = model.graph.initializers

    def cut(self, region: Region, inputs: list[str]) -> onnx.ModelProto:
        """The region alone, its tensors held in the model (a session made from bytes cannot read a file's
        external data)."""
        cut = self.extractor.extract_model(inputs, [region.Y.name])
        for index, tensor in enumerate(cut.graph.initializer):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                array = self.initializers[tensor.name].const_value.numpy()
                cut.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
        return cut

    def shape(self, value: ir.Value, region: Region) -> tuple[int, ...]:
        """The static shape of the region's input ``value``: from shape inference, each unknown dimension (a
        dynamic batch declared where the seed wrote static sizes) from the region's own reshape of it;
        :class:`NotARegion` if still unknown."""
        info = self.extractor.value_infos.get(value.name)
        dims = None if info is None else [d.dim_value if d.HasField("dim_value") else None
                                          for d in info.type.tensor_type.shape.dim]
        written = region.written_shape(value)
        if dims and written and len(dims) == len(written):
            dims = [d if d is not None else w for d, w in zip(dims, written)]
        if not dims or None in dims:
            raise NotARegion(f"the shape of {value.name!r} is not static")
        return tuple(dims)

    def rank(self, value: ir.Value) -> Optional[int]:
        info = self.extractor.value_infos.get(value.name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return len(info.type.tensor_type.shape.dim)

    def elem_type(self, value: ir.Value | str) -> int:
        """The ONNX type of ``value`` (or of the value of that name)."""
        name = value if isinstance(value, str) else value.name
        return self.extractor.value_infos[name].type.tensor_type.elem_type

    def prove(self, region: Region, options: list[Attributes],
              shapes: Optional[dict[str, tuple[int, ...]]] = None) -> Attributes:
        """The first of ``options`` whose DeformConv computes what the region does on random and on hostile
        inputs of ``shapes`` (input name -> shape; default: the region's static shapes); :class:`NotARegion`
        with the closest difference when none does. Any region with X, offset, mask (or ``None``), Y, a
        constant W and a bias (or ``None``) will do."""
        if not options:
            raise NotARegion("no stride, padding and dilation give its output size")
        if shapes is None:
            inputs = [v for v in (region.X, region.offset, region.mask) if v is not None]
            shapes = {v.name: self.shape(v, region) for v in inputs}
        try:
            session = _session(self.cut(region, list(shapes)))
            types = {name: self.elem_type(name) for name in shapes}
            feeds = _proof_inputs(region, shapes, types)
            expected = [session.run(None, feed)[0] for feed in feeds]
        except Exception as error:  # noqa: BLE001  (the extractor and onnxruntime raise assorted types)
            raise NotARegion(f"it does not run on its own: {_one_line(error)}") from None
        float16 = _ONNX_FLOAT16 in {*types.values(), self.elem_type(region.Y)}
        tolerance = TOLERANCE_FLOAT16 if float16 else TOLERANCE
        closest = np.inf
        for attributes in options:
            try:
                native = _session(_native_model(region, attributes, shapes))
                worst = max(relative_difference(region_out, native.run(None, _as_float32(feed))[0])
                            for region_out, feed in zip(expected, feeds))
            except Exception:  # noqa: BLE001  (attributes that do not fit the shapes)
                continue
            if worst <= tolerance:
                return attributes
            closest = min(closest, worst)
        raise NotARegion(f"no inferred attributes compute what it does: {len(options)} tried, closest max "
                         f"difference {closest:.3g} relative, tolerance {tolerance:g}")


def _session(model: onnx.ModelProto):
    """An onnxruntime CPU session of ``model`` (imported here: the exporters' use of the rewriter needs none)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _proof_inputs(region: Region, shapes: dict[str, tuple[int, ...]],
                  types: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """Two feeds, each input in its ONNX type (``types``, by name): random inputs (offsets of a few pixels), and
    the same with hostile offsets: samples far outside the image, just outside and on its border, on whole and
    half pixels."""
    rng = np.random.default_rng(_PROOF_SEED)
    X, offset = region.X.name, region.offset.name
    height, width = shapes[X][2:]
    random = {X: rng.standard_normal(shapes[X]), offset: rng.standard_normal(shapes[offset]) * 2}
    if region.mask is not None:
        random[region.mask.name] = rng.random(shapes[region.mask.name])
    far = max(height, width) + 2
    hostile = dict(random)
    hostile[offset] = rng.choice(np.array([-1000.0, -far, -1.0, -0.5, 0.0, 0.5, 1.0, far, 1000.0, height - 1,
                                           width - 1, 1 - height, 1 - width]), size=shapes[offset])
    return [{name: value.astype(onnx.helper.tensor_dtype_to_np_dtype(types[name])) for name, value in feed.items()}
            for feed in (random, hostile)]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _as_float32(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value.astype(np.float32) for name, value in feed.items()}


def _native_model(region: Region, attributes: Attributes, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """One float32 DeformConv (opset 19) with the region's weights, inputs named as the region's."""
    weight = _constant(region.W).astype(np.float32)
    initializers = [onnx.numpy_helper.from_array(weight, "W")]
    inputs = [region.X.name, "W", region.offset.name, "", ""]
    if region.bias is not None:
        initializers.append(onnx.numpy_helper.from_array(region.bias.astype(np.float32), "B"))
        inputs[3] = "B"
    if region.mask is not None:
        inputs[4] = region.mask.name
    while inputs[-1] == "":
        inputs.pop()
    node = onnx.helper.make_node(
        "DeformConv", inputs, ["Y"], kernel_shape=list(weight.shape[2:]), strides=list(attributes.strides),
        pads=list(attributes.pads), dilations=list(attributes.dilations), group=attributes.group,
        offset_group=attributes.offset_group)
    graph_inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
                    for name, shape in shapes.items()]
    graph = onnx.helper.make_graph([node], "native", graph_inputs,
                                   [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
                                   initializer=initializers)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", _DEFORM_CONV_OPSET)])


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to max(1, max |expected|); inf for other shapes or a NaN."""
    if actual.shape != expected.shape:
        return float("inf")
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    if not actual.size:
        return 0.0
    worst = float(np.abs(actual - expected).max())
    return worst / max(1.0, float(np.abs(expected).max())) if np.isfinite(worst) else float("inf")


# --- replacing -----------------------------------------------------------------------------------------


def replace(graph: ir.Graph, region: Region, attributes: Attributes) -> ir.Node:
    """Put one ``DeformConv`` node of the region's domain (:data:`SEED_DOMAIN` for the seed's) in the
    region's place; returns it."""
    inputs: list[Optional[ir.Value]] = [region.X, region.W, region.offset, None, region.mask]
    if region.bias is not None:
        bias = ir.Value(name=f"{region.name}_bias", const_value=ir.tensor(region.bias, name=f"{region.name}_bias"))
        graph.register_initializer(bias)
        inputs[3] = bias
    while inputs[-1] is None:
        inputs.pop()
    node = ir.node("DeformConv", inputs, domain=region.domain, name=f"{region.name}{NODE_SUFFIX}",
                   attributes=dict(kernel_shape=list(_constant(region.W).shape[2:]),
                                   strides=list(attributes.strides), pads=list(attributes.pads),
                                   dilations=list(attributes.dilations), group=attributes.group,
                                   offset_group=attributes.offset_group))
    read = {value for n in region.nodes for value in n.inputs if value is not None}
    kept = _read_outside(graph, region)
    removable = [n for n in region.nodes if n not in kept]
    ir.convenience.replace_nodes_and_values(graph, insertion_point=region.Y.producer(), old_nodes=removable,
                                            new_nodes=[node], old_values=[region.Y], new_values=node.outputs)
    for value in read:
        if (value.name in graph.initializers and graph.initializers[value.name] is value and not value.uses()
                and value not in graph.inputs and value not in graph.outputs):
            del graph.initializers[value.name]
    return node


def _read_outside(graph: ir.Graph, region: Region) -> set[ir.Node]:
    """The region's nodes that stay: those whose outputs (other than Y) nodes outside it, graph outputs or
    nodes that stay read (what graph tools merged between layers, a Constant read elsewhere too)."""
    inside = set(region.nodes)
    kept: set[ir.Node] = set()
    for node in reversed(region.nodes):  # graph order: readers come before what they read
        outputs = [output for output in node.outputs if output is not region.Y]
        if any(output in graph.outputs for output in outputs) or any(
                user not in inside or user in kept for output in outputs for user, _ in output.uses()):
            kept.add(node)
    return kept


#: A region and the attributes proven for it.
Proven = tuple[Region, Attributes]


def prove_regions(model: ir.Model, progress: Optional[Callable[[str], None]] = None) -> tuple[list[Proven], list[str]]:
    """The seed regions of ``model``'s main graph whose attributes are proven, and one line per region that is
    left as it was; ``progress`` hears of each proof. Changes nothing."""
    if not any(_is_sampler(node) and _reads_pad(node) is not None for node in model.graph):
        return [], []
    prover = Prover(model)
    regions, notes = find_regions(model.graph, prover.rank)
    found: list[Proven] = []
    for index, region in enumerate(regions, 1):
        if progress:
            progress(f"proving {SEED_KIND}'s layer {index}/{len(regions)}")
        try:
            options = candidates(region, prover.shape(region.X, region), prover.shape(region.offset, region))
            found.append((region, prover.prove(region, options)))
        except NotARegion as why:
            notes.append(f"left as it was: {region.describe()} ({why})")
    return found, notes


def replace_regions(model: ir.Model, proven: list[Proven]) -> list[ir.Node]:
    """Replace each proven region by a :data:`SEED_DOMAIN` ``DeformConv`` node; returns those nodes."""
    return [replace(model.graph, region, attributes) for region, attributes in proven]
