"""This package's own lowerings in a file (either exporter, either lowering, static or dynamic sizes, any
opset, also after graph tools), found by their structure for ``rewrite --impl native``, their weights and
attributes read off by running them, each proven as :mod:`.seed` proves the seed's layers and replaced by one
``DeformConv`` node of :data:`OWN_DOMAIN`, which the rewriter then writes as ONNX ``DeformConv``.

A layer of either lowering samples X tap by tap (a ``GridSample`` per tap, or ``Gather`` of X's pixels by
computed indices) and sums what it samples into Y. From its samplers:

- **X**: a value of rank 4 that they all sample, followed back through layout ops of one data input (reshapes,
  slices of groups, padding), the furthest first;
- **Y**: the first value that every sampler feeds (the sum over the taps), followed through reshapes, the
  bias ``Add`` and a ``Cast`` (a float16 layer computes in float32 and casts its output back) to the last of
  the offset's sizes (N, O, Ho, Wo);
- **the offset**: a value of rank 4 with an even number of channels that every sampling position is computed
  from (sizes read with ``Shape`` aside), the one nearest X first;
- **the mask**: a value of rank 4 with half the offset's channels that Y is computed from and that neither
  the offset nor the samples are computed from, on which Y depends linearly, the one nearest X first (or none).

The region, cut out with :class:`onnx.utils.Extractor`, is then run on probes (a dynamic size taken as
:data:`PROBE_SIZE`, :data:`PROBE_OUTPUT`): every offset far out of the image but one (offset group, tap) pair's
at one output position, the mask 1, X one channel at a time and constant over the image, gives W's column of
that channel and tap (Y minus the bias, which X = 0 gives); X a ramp along the height or the width gives
where that tap samples, at two neighbouring output positions: the stride, the padding and the dilation. The
offset groups and the groups are the largest whose blocks hold all of W. Each input is fed in its own type.
The result is proven on random and hostile inputs against a native ``DeformConv`` (:meth:`.seed.Prover.prove`,
within 1e-2 where any of X, the offset, the mask or Y is float16); a region that does not prove equal is left
as it was, with one line saying why. The ``DeformConv`` computes in the type X, the offset, the mask and Y
share; where they do not share one (a float16 layer inside a float32 model), it computes in float32 with
Casts around it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import operator
from typing import Callable, Iterator, Optional

import numpy as np
import onnx
import onnx_ir as ir

from dcn_onnxscript.rewrite import seed
from dcn_onnxscript.rewrite.seed import Attributes, NotARegion, Prover

#: The domain of the ``DeformConv`` node that replaces a proven region until the rewriter writes it.
OWN_DOMAIN = "dcn_onnxscript.own"
#: How the rewrite's report names what it replaced.
OWN_KIND = "dcn_onnxscript"
#: The ops that sample X.
_SAMPLERS = frozenset({"GridSample", "Gather"})
#: Ops that move X's values without computing new ones: between X and what a sampler reads.
_LAYOUT_OPS = seed._SHAPE_OPS | {"Split", "Slice", "Pad", "Concat", "Cast", "Expand"}
#: Ops whose outputs are sizes: what is computed from them and constants is no data.
_SIZE_OPS = frozenset({"Shape", "Size"})
#: A probe's offset that moves a sample out of the image.
_FAR = 1000.0
#: A dynamic image side and output side of the probes, the proof's dynamic sizes (H, W) and batch.
PROBE_SIZE, PROBE_OUTPUT = 64, 16
_PROOF_SIZE, _PROOF_BATCH = (23, 19), 2
#: Channels probed in one run where the batch is dynamic.
_PROBE_BATCH = 16
#: Offset and mask candidates tried per region.
_MAX_TRIES = 8
#: The types ``DeformConv`` computes in (its ``T``), and the one it computes a region of mixed types in.
_DEFORM_CONV_TYPES = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE})
_MIXED_TYPE = onnx.TensorProto.FLOAT


@dataclasses.dataclass
class OwnRegion:
    """One layer of this package's lowerings: its samplers, inputs X (N, C, H, W), offset (N, 2·G·K, Ho, Wo)
    and mask (N, G·K, Ho, Wo) or ``None``, output Y (N, O, Ho, Wo) and the nodes between; W (O, C/groups,
    kH, kW) and the bias (O,) once probed."""

    samplers: list[ir.Node]
    X: ir.Value
    offset: ir.Value
    mask: Optional[ir.Value]
    Y: ir.Value
    nodes: list[ir.Node]
    W: Optional[ir.Value] = None
    bias: Optional[np.ndarray] = None
    #: The ONNX types of X, the offset, the mask and Y, once probed.
    types: dict[ir.Value, int] = dataclasses.field(default_factory=dict)
    domain = OWN_DOMAIN

    @property
    def inputs(self) -> list[ir.Value]:
        """X, the offset and the mask (where there is one)."""
        return [v for v in (self.X, self.offset, self.mask) if v is not None]

    @property
    def elem_type(self) -> int:
        """The ONNX type its DeformConv computes in: that of X, the offset, the mask and Y where they share one,
        else :data:`_MIXED_TYPE` (with Casts around it)."""
        types = set(self.types.values())
        return types.pop() if len(types) == 1 else _MIXED_TYPE

    def describe(self) -> str:
        return f"{OWN_KIND} region of {len(self.samplers)} {self.samplers[0].op_type} nodes (output {self.Y.name!r})"

    @property
    def name(self) -> str:
        """The exporters' name scope of its samplers, else its output's node."""
        first = self.samplers[0].name or ""
        return first.rsplit("/", 1)[0] if "/" in first else (self.Y.producer().name or "dcn")

    def written_shape(self, value: ir.Value) -> Optional[tuple[int, ...]]:
        return None


# --- finding regions ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _is_size(value: ir.Value) -> bool:
    """Whether ``value`` is computed from constants and ``Shape`` alone (a size)."""
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type in _SIZE_OPS:
        return True
    data = [v for v in producer.inputs if v is not None and not seed._is_constant(v)]
    return bool(data) and all(_is_size(v) for v in data)


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    """The inputs of ``node`` that are neither constants nor sizes."""
    return [v for v in node.inputs if v is not None and not seed._is_constant(v) and not _is_size(v)]


def _images(value: ir.Value, rank: seed.Rank) -> list[ir.Value]:
    """The rank-4 values a sampler's data comes from through layout ops of one data input (reshapes, slices of
    groups, padding), nearest first."""
    found = [value] if rank(value) == 4 else []
    while (value.producer() is not None and value.producer().op_type in _LAYOUT_OPS
           and len(_data_inputs(value.producer())) == 1):
        value = _data_inputs(value.producer())[0]
        if rank(value) == 4:
            found.append(value)
    return found


def _sampler_groups(graph: ir.Graph, rank: seed.Rank) -> list[tuple[list[ir.Node], list[ir.Value]]]:
    """``GridSample`` and ``Gather`` nodes that read a computed rank-4 value at computed positions, grouped by
    the furthest value they come from, with the candidates for X: the values that all of a group's samplers
    come from, furthest first (a layer with groups or offset groups samples slices of X)."""
    chains: dict[ir.Value, list[tuple[ir.Node, list[ir.Value]]]] = collections.defaultdict(list)
    for node in graph:
        if node.op_type not in _SAMPLERS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        data, where = node.inputs[:2]
        if data is None or where is None or seed._is_constant(data) or seed._is_constant(where):
            continue
        images = _images(data, rank)
        if images:
            chains[images[-1]].append((node, images))
    groups = []
    for members in chains.values():
        common = set.intersection(*(set(images) for _, images in members))
        if len(members) > 1:
            groups.append(([node for node, _ in members], [v for v in reversed(members[0][1]) if v in common]))
    return groups


def _sum_of(graph: ir.Graph, samplers: list[ir.Node]) -> ir.Value:
    """The first value, in graph order, computed from every sampler."""
    bits = {node: 1 << index for index, node in enumerate(samplers)}
    every = (1 << len(samplers)) - 1
    reached: dict[ir.Value, int] = {}
    for node in graph:
        mask = functools.reduce(operator.or_, (reached.get(v, 0) for v in node.inputs if v is not None),
                                bits.get(node, 0))
        if mask == every and node not in bits:
            return node.outputs[0]
        if mask:
            reached.update((output, mask) for output in node.outputs)
    raise NotARegion("its samplers feed no common value")


def _output(graph: ir.Graph, total: ir.Value, offset: list[Optional[int]], dims: Callable) -> ir.Value:
    """Y: the sum over the taps followed through the reshapes, the constant ``Add`` (the bias) and the ``Cast``
    to a float type that alone read it, to the last value of rank 4 whose sizes are the offset's (N, O, Ho, Wo)
    (or of unknown shape)."""
    chain, value = [total], total
    while value not in graph.outputs:
        users = list(seed._consumers(value))
        if len(users) != 1 or users[0].inputs[0] is not value and users[0].op_type != "Add":
            break
        user = users[0]
        if user.op_type == "Add":
            other = user.inputs[1] if user.inputs[0] is value else user.inputs[0]
            if not seed._is_constant(other):
                break
        elif user.op_type == "Cast":  # a float16 layer computed in float32, cast back to its type
            if seed._int_attr(user, "to", 0) not in _DEFORM_CONV_TYPES:
                break
        elif user.op_type not in seed._SHAPE_OPS:
            break
        value = user.outputs[0]
        chain.append(value)

    def fits(value: ir.Value) -> bool:
        found = dims(value)
        if found is None:  # shape inference gave up on it: the proof will tell
            return True
        return len(found) == 4 and all(
            a is None or b is None or a == b for a, b in zip((found[0], *found[2:]), (offset[0], *offset[2:])))

    fitting = [value for value in chain if fits(value)]
    if not fitting:
        raise NotARegion(f"the sum of its taps {total.name!r} has no form (N, O, Ho, Wo)")
    return fitting[-1]


def _computing(Y: ir.Value, stops: set[ir.Value]) -> list[ir.Node]:
    """The nodes that compute Y, not going past ``stops``, constants and graph inputs (at most
    :data:`seed._MAX_REGION_NODES`), in no order."""
    found: set[ir.Node] = set()
    queue = collections.deque([Y.producer()])
    while queue and len(found) <= seed._MAX_REGION_NODES:
        node = queue.popleft()
        if node is None or node in found:
            continue
        found.add(node)
        queue.extend(v.producer() for v in node.inputs
                     if v is not None and v not in stops and v.const_value is None and v.producer() is not None)
    return list(found)


class _Flow:
    """Data flow among the nodes computing Y from X: each value's data inputs (constants and sizes aside)."""

    def __init__(self, graph: ir.Graph, nodes: list[ir.Node], stops: set[ir.Value]) -> None:
        inside = set(nodes)
        self.order = [node for node in graph if node in inside]
        self.stops = stops
        sizes: set[ir.Value] = set()
        self.inputs: dict[ir.Value, list[ir.Value]] = {}
        for node in self.order:
            data = [v for v in node.inputs if v is not None and not seed._is_constant(v) and v not in sizes]
            if node.op_type in _SIZE_OPS or not data:
                sizes.update(node.outputs)
                continue
            for output in node.outputs:
                self.inputs[output] = [] if output in stops else data
        self.sizes = sizes

    @functools.cached_property
    def dominators(self) -> dict[ir.Value, frozenset[ir.Value]]:
        """Value -> the values every data path into it passes (itself included)."""
        found: dict[ir.Value, frozenset[ir.Value]] = {}

        def of(value: ir.Value) -> frozenset[ir.Value]:
            return found.get(value, frozenset({value}))

        for node in self.order:
            for output in node.outputs:
                data = self.inputs.get(output, [])
                common = frozenset.intersection(*(of(v) for v in data)) if data else frozenset()
                found[output] = common | {output}
        return found

    def descendants(self, starts: set[ir.Value]) -> set[ir.Value]:
        found = set(starts)
        for node in self.order:
            for output in node.outputs:
                if any(v in found for v in self.inputs.get(output, [])):
                    found.add(output)
        return found

    def ancestors(self, value: ir.Value) -> set[ir.Value]:
        found, queue = set(), collections.deque([value])
        while queue:
            for data in self.inputs.get(queue.popleft(), []):
                if data not in found:
                    found.add(data)
                    queue.append(data)
        return found

    def position(self, value: ir.Value) -> int:
        producer = value.producer()
        return self.order.index(producer) if producer in self.order else -1


def _channels(dims: Optional[list[Optional[int]]]) -> Optional[int]:
    return dims[1] if dims and len(dims) == 4 else None


def _offsets(flow: _Flow, X: ir.Value, samplers: list[ir.Node], dims: Callable) -> list[ir.Value]:
    """Offset candidates: rank-4 values with an even channel count that every sampling position is computed
    from, X's side first."""
    dominators = flow.dominators
    common = frozenset.intersection(*(dominators.get(s.inputs[1], frozenset({s.inputs[1]})) for s in samplers))
    found = [v for v in common - {X} if len(dims(v) or ()) == 4 and (_channels(dims(v)) or 0) % 2 == 0
             and _channels(dims(v))]
    return sorted(found, key=flow.position)


def _masks(flow: _Flow, X: ir.Value, offset: ir.Value, samplers: list[ir.Node], dims: Callable,
           before_offset: set[ir.Value]) -> list[ir.Value]:
    """Mask candidates: rank-4 values of half the offset's channels that Y is computed from, and neither the
    offset (nor what it is computed from, ``before_offset``) nor the samples, X's side first."""
    tainted = flow.descendants({offset, *(s.outputs[0] for s in samplers)}) | before_offset | {X}
    half = _channels(dims(offset)) // 2
    values = {v for node in flow.order for v in (*node.outputs, *node.inputs) if v is not None}
    found = [v for v in values - tainted - flow.sizes if v.const_value is None and len(dims(v) or ()) == 4
             and _channels(dims(v)) == half]
    return sorted(found, key=flow.position)


def find_regions(graph: ir.Graph, X: ir.Value, samplers: list[ir.Node], dims: Callable) -> list[OwnRegion]:
    """The region candidates of the samplers that read X, likeliest first; :class:`NotARegion` if there is none."""
    total = _sum_of(graph, samplers)
    flow = _Flow(graph, _computing(total, {X}), {X})
    offsets = _offsets(flow, X, samplers, dims)
    if not offsets:
        raise NotARegion("no value of rank 4 that every sampling position is computed from")
    found, why = [], ""
    for offset in offsets:
        try:
            Y = _output(graph, total, dims(offset), dims)
        except NotARegion as error:
            why = str(error)
            continue
        inner = _Flow(graph, _computing(Y, {X, offset}), {X, offset})
        for mask in [*_masks(inner, X, offset, samplers, dims, flow.ancestors(offset)), None]:
            boundary = {X, offset} | ({mask} if mask is not None else set())
            try:
                nodes = seed._nodes_between(graph, Y, boundary)
            except NotARegion as error:
                why = str(error)
                continue
            if set(samplers) <= set(nodes):
                found.append(OwnRegion(samplers, X, offset, mask, Y, nodes))
            if len(found) == _MAX_TRIES:
                return found
    if not found:
        raise NotARegion(f"no offset and mask it is computed from alone ({why})")
    return found


# --- probing -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Probe:
    """Runs a region on chosen inputs: X (N, C, H, W), offset (N, 2J, Ho, Wo), mask (N, J, Ho, Wo), J = G·K,
    each fed in its own type (``dtypes``: X's, the offset's, the mask's)."""

    run: Callable[..., np.ndarray]
    dtypes: tuple[np.dtype, ...]
    batch: int
    channels: int
    size: tuple[int, int]
    out: tuple[int, int]
    pairs: int
    has_mask: bool

    def positions(self) -> list[tuple[int, int]]:
        """Output positions whose taps sample inside the image at offset 0 (a quarter to half way down and
        across), each with a neighbour below and to the right (where the output is more than one row or
        column)."""
        rows, cols = (range(n // 4, max(n // 4 + 1, n // 2)) for n in self.out)
        found = [(i, j) for i, j in itertools.product(rows, cols)
                 if all(k + 1 < n or n == 1 for k, n in zip((i, j), self.out))]
        if not found:
            raise NotARegion(f"its output {self.out} is too small to probe")
        return found

    def __call__(self, X: np.ndarray, alive: dict[int, tuple[int, int]], mask: float = 1.0) -> np.ndarray:
        """Y (float64) with every (group, tap) pair's offset far out but pair j's at position ``alive[j]``."""
        offset = np.full((self.batch, 2 * self.pairs, *self.out), _FAR)
        for pair, (i, j) in alive.items():
            offset[:, 2 * pair:2 * pair + 2, i, j] = 0.0
        feeds = [X, offset] + ([np.full((self.batch, self.pairs, *self.out), mask)] if self.has_mask else [])
        return self.run(*(a.astype(dtype) for a, dtype in zip(feeds, self.dtypes))).astype(np.float64)

    def image(self, values: Optional[np.ndarray] = None) -> np.ndarray:
        """X holding ``values`` (H, W) in every channel (zeros by default)."""
        X = np.zeros((self.batch, self.channels, *self.size))
        if values is not None:
            X[:] = values
        return X

    def rounds(self, shift: int = 0) -> Iterator[dict[int, tuple[int, int]]]:
        """Pair -> output position, as many pairs a run as there are positions, moved by ``shift`` along both
        axes (not along an axis of one output)."""
        positions = self.positions()
        moved = [shift if n > 1 else 0 for n in self.out]
        for first in range(0, self.pairs, len(positions)):
            yield {pair: (i + moved[0], j + moved[1]) for pair, (i, j) in zip(range(first, self.pairs), positions)}


def _at(Y: np.ndarray, alive: dict[int, tuple[int, int]], n: int = 0) -> dict[int, np.ndarray]:
    return {pair: Y[n, :, i, j] for pair, (i, j) in alive.items()}


def _reading(probe: _Probe, X: np.ndarray, bias: np.ndarray, shift: int = 0, mask: float = 1.0) -> np.ndarray:
    """(O, J): Y minus the bias where each pair alone samples ``X`` (batch entry 0)."""
    found = np.zeros((bias.size, probe.pairs))
    for alive in probe.rounds(shift):
        for pair, value in _at(probe(X, alive, mask), alive).items():
            found[:, pair] = value - bias
    return found


def _sampled_at(probe: _Probe, bias: np.ndarray, weight: np.ndarray, axis: int, shift: int) -> np.ndarray:
    """(J,) where along ``axis`` (0: height, 1: width) each pair samples at offset 0 (X a ramp along that axis,
    against ``weight``, what X = 1 gives), at its position moved by ``shift``; NaN for a pair without weight."""
    ramp = np.arange(probe.size[axis], dtype=np.float64)
    ramped = _reading(probe, probe.image(ramp[:, None] if axis == 0 else ramp[None, :]), bias, shift)
    found = np.full(probe.pairs, np.nan)
    scale = max(1.0, float(np.abs(weight).max()))
    for pair in range(probe.pairs):
        o = int(np.argmax(np.abs(weight[:, pair])))
        if abs(weight[o, pair]) > 1e-6 * scale:
            found[pair] = ramped[o, pair] / weight[o, pair]
    return found


def _check_mask(probe: _Probe, bias: np.ndarray, weight: np.ndarray, tolerance: float) -> None:
    """:class:`NotARegion` unless Y minus the bias is proportional to the mask (half the mask, half of it)."""
    if not probe.has_mask:
        return
    halved = _reading(probe, probe.image(np.ones(probe.size)), bias, mask=0.5)
    if np.abs(2 * halved - weight).max() > tolerance * max(1.0, float(np.abs(weight).max())):
        raise NotARegion("its output is not proportional to its mask")


def _columns(probe: _Probe, bias: np.ndarray) -> np.ndarray:
    """T (O, C, J): what channel c contributes through pair j per unit of X (one channel a batch entry)."""
    columns = np.zeros((bias.size, probe.channels, probe.pairs))
    for alive in probe.rounds():
        for start in range(0, probe.channels, probe.batch):
            batch = range(start, min(start + probe.batch, probe.channels))
            X = probe.image()
            for n, c in enumerate(batch):
                X[n, c] = 1.0
            Y = probe(X, alive)
            for n, c in enumerate(batch):
                for pair, value in _at(Y, alive, n).items():
                    columns[:, c, pair] = value - bias
    return columns


def _largest_blocks(columns: np.ndarray, options: list[int], block: Callable[[int, int], np.ndarray]) -> int:
    """The largest of ``options`` whose off-block entries of ``columns`` are all (about) zero."""
    scale = max(float(np.abs(columns).max()), 1e-30)
    for option in sorted(options, reverse=True):
        if float(np.abs(block(option, 0)).max(initial=0.0)) <= 1e-3 * scale:
            return option
    return 1


def _offset_groups(columns: np.ndarray) -> int:
    """G: the largest that divides the pairs and the channels and leaves each pair's columns in its block."""
    _, C, J = columns.shape

    def outside(G: int, _) -> np.ndarray:
        per_pair, per_channel = J // G, C // G
        keep = np.arange(C)[:, None] // per_channel == np.arange(J)[None, :] // per_pair
        return columns[:, ~keep]

    return _largest_blocks(columns, [G for G in range(1, J + 1) if J % G == 0 and C % G == 0], outside)


def _groups(W: np.ndarray) -> int:
    """The largest number of groups that divides O and C and holds all of W (O, C, K)."""
    O, C, _ = W.shape

    def outside(g: int, _) -> np.ndarray:
        keep = np.arange(O)[:, None] // (O // g) == np.arange(C)[None, :] // (C // g)
        return W[~keep]

    return _largest_blocks(W, [g for g in range(1, math.gcd(O, C) + 1) if O % g == 0 and C % g == 0], outside)


def _kernel_steps(first: np.ndarray, moved: np.ndarray, rows: np.ndarray, output: np.ndarray,
                  tolerance: float) -> Optional[tuple[int, int, int]]:
    """(stride, padding, dilation) along one axis from where the taps of offset group 0 sample at output
    position ``output`` (``first``) and one further (``moved``), ``rows`` each tap's kernel index on that
    axis; ``None`` if they do not fit."""
    known = ~np.isnan(first) & ~np.isnan(moved)
    if not known.any():
        return None
    strides = moved[known] - first[known]
    stride = int(round(float(np.median(strides))))
    q = first[known] - output[known] * stride  # = kernel index · dilation - padding
    k = rows[known]
    if np.ptp(k) > 0:
        dilation = (q[k == k.max()].mean() - q[k == k.min()].mean()) / (k.max() - k.min())
    else:
        dilation = 1.0
    padding = float(np.mean(k * dilation - q))
    stride, dilation, padding = int(round(stride)), int(round(dilation)), int(round(padding))
    error = np.abs(k * dilation - padding - q).max(initial=0.0)
    if stride < 1 or dilation < 1 or padding < 0 or error > tolerance or np.abs(strides - stride).max() > tolerance:
        return None
    return stride, padding, dilation


def _kernels(probe: _Probe, bias: np.ndarray, weight: np.ndarray, tolerance: float
             ) -> list[tuple[tuple[int, int], Attributes]]:
    """(kernel shape, attributes but the groups) for each kernel shape whose taps (of offset group 0, the
    first K pairs for every G) fit where they sample, for each K the pairs allow."""
    sampled = []
    for axis in range(2):
        first = _sampled_at(probe, bias, weight, axis, 0)
        # one output along the axis: no stride to see, and none that matters (1 stands for it)
        sampled.append((first, _sampled_at(probe, bias, weight, axis, 1) if probe.out[axis] > 1 else first + 1))
    positions = probe.positions()
    where = np.array([positions[pair % len(positions)] for pair in range(probe.pairs)], dtype=np.float64)
    found = []
    for K in (K for K in range(probe.pairs, 0, -1) if probe.pairs % K == 0):
        for kH in sorted((d for d in range(1, K + 1) if K % d == 0), key=lambda d: abs(d - K // d)):
            kW, taps = K // kH, np.arange(K)
            steps = [_kernel_steps(sampled[axis][0][:K], sampled[axis][1][:K], (taps // kW, taps % kW)[axis],
                                   where[:K, axis], tolerance) for axis in range(2)]
            if None not in steps:
                (s_h, p_h, d_h), (s_w, p_w, d_w) = steps
                found.append(((kH, kW), Attributes(strides=(s_h, s_w), pads=(p_h, p_w, p_h, p_w),
                                                   dilations=(d_h, d_w), group=1, offset_group=probe.pairs // K)))
    return found


def read_layer(probe: _Probe, float16: bool) -> list[tuple[np.ndarray, Optional[np.ndarray], Attributes]]:
    """(W, bias or None, attributes) the region may stand for, one per kernel shape whose taps fit; the cheap
    readings first (the mask, where the taps sample), then W one channel at a time."""
    tolerance = 0.05 if float16 else 1e-2
    bias = probe(probe.image(), {})[0, :, 0, 0]
    weight = _reading(probe, probe.image(np.ones(probe.size)), bias)  # (O, J)
    _check_mask(probe, bias, weight, tolerance)
    kernels = _kernels(probe, bias, weight, tolerance)
    if not kernels:
        raise NotARegion("no kernel shape fits where its taps sample")
    columns = _columns(probe, bias)
    G = _offset_groups(columns)
    C, K = probe.channels, probe.pairs // G
    per_channel = C // G
    # W (O, C, K): each channel's columns of its own offset group
    W_full = np.stack([columns[:, c, (c // per_channel) * K:(c // per_channel + 1) * K] for c in range(C)], axis=1)
    g = _groups(W_full)
    O = W_full.shape[0]
    W = np.stack([W_full[o, (o // (O // g)) * (C // g):(o // (O // g) + 1) * (C // g)] for o in range(O)])
    return [(W.reshape(O, C // g, *kernel), bias if np.any(bias) else None,
             dataclasses.replace(attributes, group=g))
            for kernel, attributes in kernels if attributes.offset_group == G]


# --- proving -------------------------------------------------------------------------------------------


def _dims(prover: Prover, value: ir.Value) -> Optional[list[Optional[int]]]:
    info = prover.extractor.value_infos.get(value.name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _probe(prover: Prover, region: OwnRegion) -> _Probe:
    """The region cut out, as a probe; dynamic sizes taken as :data:`PROBE_SIZE` and :data:`PROBE_OUTPUT`."""
    x, offset = _dims(prover, region.X), _dims(prover, region.offset)
    if not x or not offset or x[1] is None or offset[1] is None:
        raise NotARegion("its input's or offset's channels are not static")
    batch = x[0] or offset[0] or min(x[1], _PROBE_BATCH)
    try:
        session = seed._session(prover.cut(region, [v.name for v in region.inputs]))
    except Exception as error:  # noqa: BLE001  (the extractor and onnxruntime raise assorted types)
        raise NotARegion(f"it does not run on its own: {seed._one_line(error)}") from None
    names = [i.name for i in session.get_inputs()]

    def run(*arrays: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, dict(zip(names, arrays)))[0]
        except Exception as error:  # noqa: BLE001  (onnxruntime's errors have no common type)
            raise NotARegion(f"it does not run on probes: {seed._one_line(error)}") from None

    dtypes = tuple(onnx.helper.tensor_dtype_to_np_dtype(prover.elem_type(v)) for v in region.inputs)
    return _Probe(run, dtypes, batch, x[1], (x[2] or PROBE_SIZE, x[3] or PROBE_SIZE),
                  (offset[2] or PROBE_OUTPUT, offset[3] or PROBE_OUTPUT), offset[1] // 2, region.mask is not None)


def _proof_shapes(prover: Prover, region: OwnRegion, W: np.ndarray,
                  attributes: Attributes) -> dict[str, tuple[int, ...]]:
    """The region's inputs' shapes, a dynamic size taken as :data:`_PROOF_SIZE` (the output's from the attributes)."""
    x, offset = _dims(prover, region.X), _dims(prover, region.offset)
    batch = x[0] or offset[0] or _PROOF_BATCH
    size = tuple(x[2 + axis] or _PROOF_SIZE[axis] for axis in range(2))
    out = tuple(offset[2 + axis] or seed._output_size(size[axis], W.shape[2 + axis], attributes.strides[axis],
                                                       attributes.pads[axis], attributes.dilations[axis])
                for axis in range(2))
    shapes = {region.X.name: (batch, x[1], *size), region.offset.name: (batch, offset[1], *out)}
    if region.mask is not None:
        shapes[region.mask.name] = (batch, offset[1] // 2, *out)
    return shapes


def _prove(prover: Prover, region: OwnRegion) -> Attributes:
    """The attributes proven for ``region`` (its W and bias set); :class:`NotARegion` saying why not."""
    region.types = {v: prover.elem_type(v) for v in (*region.inputs, region.Y)}
    if not set(region.types.values()) <= _DEFORM_CONV_TYPES:
        raise NotARegion("its inputs and output are not all of float16, float32 or float64")
    readings = read_layer(_probe(prover, region), onnx.TensorProto.FLOAT16 in region.types.values())
    if not readings:
        raise NotARegion("no kernel shape fits where its taps sample")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(region.elem_type)
    why = None
    for W, bias, attributes in readings:
        name = f"{region.name}_weight"
        region.W = ir.Value(name=name, const_value=ir.tensor(W.astype(dtype), name=name))
        region.bias = None if bias is None else bias.astype(dtype)
        try:
            return prover.prove(region, [attributes], _proof_shapes(prover, region, W, attributes))
        except NotARegion as error:
            why = error
    raise why


#: A region and the attributes proven for it.
Proven = tuple[OwnRegion, Attributes]


def prove_regions(model: ir.Model, progress: Optional[Callable[[str], None]] = None) -> tuple[list[Proven], list[str]]:
    """The layers of this package's lowerings in ``model``'s main graph whose replacement is proven, and one
    line per layer left as it was; ``progress`` hears of each proof. Changes nothing."""
    graph = model.graph
    prover = Prover(model)
    _is_size.cache_clear()
    groups = _sampler_groups(graph, prover.rank)
    found: list[Proven] = []
    notes: list[str] = []
    for index, (samplers, images) in enumerate(groups, 1):
        if progress:
            progress(f"proving {OWN_KIND}'s layer {index}/{len(groups)}")
        why, where, candidates = None, "", []
        for X in images[:_MAX_TRIES]:
            try:
                candidates += find_regions(graph, X, samplers, functools.partial(_dims, prover))
            except NotARegion:
                continue  # not X
        for region in candidates[:_MAX_TRIES]:
            try:
                found.append((region, _prove(prover, region)))
                break
            except NotARegion as error:
                why, where = error, region.describe()
        else:
            if candidates:  # a group that looks like a layer but does not prove equal
                notes.append(f"left as it was: {where} ({why})")
    _is_size.cache_clear()
    return found, notes


def _cast(graph: ir.Graph, value: ir.Value, elem_type: int, name: str) -> ir.Node:
    """A ``Cast`` of ``value`` to ``elem_type`` (its output typed), not yet in ``graph``."""
    cast = ir.node("Cast", [value], attributes=dict(to=elem_type), name=name)
    cast.outputs[0].dtype = ir.DataType(elem_type)
    cast.outputs[0].shape = value.shape
    return cast


def _cast_around(graph: ir.Graph, node: ir.Node, region: OwnRegion) -> None:
    """``node`` (the ``DeformConv`` in ``region``'s place) computing in the region's type: each input of another
    type cast to it before, and its output cast back to Y's type."""
    elem_type = region.elem_type
    for index, value in ((0, region.X), (2, region.offset), (4, region.mask)):
        if value is not None and region.types[value] != elem_type:
            cast = _cast(graph, value, elem_type, f"{node.name}_cast_{index}")
            graph.insert_before(node, cast)
            node.replace_input_with(index, cast.outputs[0])
    Y = node.outputs[0]
    Y.dtype = ir.DataType(region.types[region.Y])
    if region.types[region.Y] == elem_type:
        return
    back = _cast(graph, Y, region.types[region.Y], f"{node.name}_cast_back")
    graph.insert_after(node, back)
    Y.replace_all_uses_with(back.outputs[0], replace_graph_outputs=True)
    back.replace_input_with(0, Y)
    back.outputs[0].name, Y.name = Y.name, f"{Y.name}_{ir.DataType(elem_type).name.lower()}"
    Y.dtype = ir.DataType(elem_type)


def replace_regions(model: ir.Model, proven: list[Proven]) -> list[ir.Node]:
    """Replace each proven region by an :data:`OWN_DOMAIN` ``DeformConv`` node (its W an initializer), with
    Casts around it where it computes in another type than its inputs' or output's."""
    nodes = []
    for index, (region, attributes) in enumerate(proven):
        weight = region.W
        if weight.name in model.graph.initializers:
            weight.name = weight.const_value.name = f"{weight.name}_{index}"
        model.graph.register_initializer(weight)
        node = seed.replace(model.graph, region, attributes)
        _cast_around(model.graph, node, region)
        nodes.append(node)
    return nodes
