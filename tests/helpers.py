"""Shared test helpers: torchvision references, layer cases, inputs and models built without torch.onnx.

Runners of the ONNX runtimes are in :mod:`runtimes`, the generated matrix in :mod:`matrix`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Optional, Sequence

import numpy as np
import onnx
import onnx.inliner
import torch
import torchvision  # noqa: F401  (loads torchvision::deform_conv2d)
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import dcn_onnxscript  # noqa: F401  (registers the translations, as a user's script does)

Inputs = Sequence[np.ndarray]


def conv_output_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int]) -> tuple[int, ...]:
    """(Ho, Wo) of a convolution over ``size`` (H, W) with these (h, w) pairs."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))


@dataclasses.dataclass(frozen=True)
class SeedCase:
    """One DeformConv2d layer and the opset deform_conv2d_onnx_exporter exports it at (the seed's files)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    offset_groups: int
    mask: bool
    bias: bool
    opset: int
    size: tuple[int, int]

    @property
    def out_size(self) -> tuple[int, int]:
        return conv_output_size(self.size, self.kernel, self.stride, self.padding, self.dilation)

    def __str__(self) -> str:
        return (f"k{self.kernel}-s{self.stride}-p{self.padding}-d{self.dilation}-g{self.groups}-og"
                f"{self.offset_groups}-{'mask' if self.mask else 'nomask'}-{'bias' if self.bias else 'nobias'}"
                f"-opset{self.opset}").replace(" ", "")


@dataclasses.dataclass(frozen=True)
class Case:
    """One deform_conv2d layer configuration; inputs are made at ``size`` = (H, W) and ``batch``."""

    in_channels: int = 4
    out_channels: int = 6
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True
    size: tuple[int, int] = (7, 6)
    batch: int = 1

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return conv_output_size(size, self.kernel, self.stride, self.padding, self.dilation)


class DeformConvLayer(torch.nn.Module):
    """torchvision.ops.deform_conv2d with the weights of ``case``; forward(x, offset[, mask])."""

    def __init__(self, case: Case, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shape = (case.out_channels, case.in_channels // case.groups, *case.kernel)
        self.weight = torch.nn.Parameter(torch.randn(shape, generator=g) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(case.out_channels, generator=g)) if case.bias else None
        self.case = case

    def forward(self, x, offset, mask=None):
        c = self.case
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, c.stride, c.padding,
                                             c.dilation, mask)


class DeformBlock(torch.nn.Module):
    """A deformable layer with ordinary layers around it, on x (N, 3, H, W): Conv → BatchNorm → ReLU → an
    (offset, mask) predictor Conv with the layer's kernel, stride, padding and dilation → offset·2 and
    sigmoid(mask) (slices of the prediction) → the :class:`DeformConvLayer` of ``case`` → SiLU → + 0.5."""

    def __init__(self, case: Case, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        taps = case.kernel[0] * case.kernel[1] * case.offset_groups
        self.stem = torch.nn.Conv2d(3, case.in_channels, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(case.in_channels)
        self.predictor = torch.nn.Conv2d(case.in_channels, (3 if case.mask else 2) * taps, case.kernel,
                                         stride=case.stride, padding=case.padding, dilation=case.dilation)
        with torch.no_grad():  # statistics that are not the identity, offsets of a few pixels
            self.norm.running_mean.copy_(torch.randn(case.in_channels, generator=g) * 0.1)
            self.norm.running_var.copy_(torch.rand(case.in_channels, generator=g) + 0.5)
            self.predictor.weight.copy_(torch.randn(self.predictor.weight.shape, generator=g) * 0.3)
        self.deform = DeformConvLayer(case, seed)
        self.split = 2 * taps
        self.case = case

    def forward(self, x):
        features = torch.relu(self.norm(self.stem(x)))
        prediction = self.predictor(features)
        offset = prediction[:, :self.split] * 2.0
        mask = torch.sigmoid(prediction[:, self.split:]) if self.case.mask else None
        return torch.nn.functional.silu(self.deform(features, offset, mask)) + 0.5


@functools.cache
def dcn_resnet50_module():
    """``examples/dcn_resnet50.py`` as a module (its ``build_model`` is the DCNv2 ResNet-50)."""
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "dcn_resnet50.py"
    spec = importlib.util.spec_from_file_location("dcn_resnet50", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_inputs(case: Case, seed: int = 1, size: Optional[tuple[int, int]] = None,
                batch: Optional[int] = None, dtype=np.float32, offset_scale: float = 2.0) -> list[np.ndarray]:
    """``[x, offset(, mask)]`` for ``case`` at ``size``/``batch`` (defaults: the case's); offsets of a few
    pixels, so samples leave the image and land between pixels."""
    rng = np.random.default_rng(seed)
    n, (h, w) = batch or case.batch, size or case.size
    ho, wo = case.output_size((h, w))
    taps = case.kernel[0] * case.kernel[1] * case.offset_groups
    arrays = [rng.standard_normal((n, case.in_channels, h, w)),
              rng.standard_normal((n, 2 * taps, ho, wo)) * offset_scale]
    if case.mask:
        arrays.append(rng.uniform(0.0, 1.0, (n, taps, ho, wo)))
    return [a.astype(dtype) for a in arrays]


def layer_reference(layer: DeformConvLayer, inputs: Inputs) -> np.ndarray:
    """float64 torchvision output of ``layer`` on ``inputs`` = [x, offset(, mask)]."""
    c = layer.case
    x, offset, *mask = inputs
    bias = None if layer.bias is None else layer.bias.detach().numpy()
    return torchvision_reference(x, layer.weight.detach().numpy(), offset, mask[0] if mask else None, bias,
                                 c.stride, c.padding, c.dilation)


def export_dynamo(module: torch.nn.Module, inputs: Inputs, opset: Optional[int] = None,
                  dynamic: bool = False, **kwargs) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` of ``module`` at ``inputs``; with ``dynamic``, batch, height and
    width of every input are dynamic (the output grid of offset/mask follows the input's); or give your own
    ``dynamic_shapes``."""
    args = tuple(torch.from_numpy(np.asarray(a)) for a in inputs)
    shapes = kwargs.pop("dynamic_shapes", None)
    if dynamic:
        n, h, w = torch.export.Dim("n"), torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
        grid = ({0: n, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},) * (len(args) - 1)
        shapes = ({0: n, 2: h, 3: w}, *grid)
    program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                verbose=False, **kwargs)
    return program.model_proto


def default_opset(model: onnx.ModelProto) -> int:
    return next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))


def torchvision_reference(
    x: np.ndarray,
    weight: np.ndarray,
    offset: np.ndarray,
    mask: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
) -> np.ndarray:
    """torchvision.ops.deform_conv2d in float64 on CPU: ``x`` (N, C, H, W), ``weight`` (O, C/groups, kH, kW),
    ``offset`` (N, 2·G·kH·kW, Ho, Wo), ``mask`` (N, G·kH·kW, Ho, Wo), ``bias`` (O); returns (N, O, Ho, Wo)."""

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))

    # torchvision's CPU kernel reads out of bounds (segfaults) on NaN offsets: its in-image test is false
    # for NaN and it then casts floor(NaN) to an index. A NaN sample position has no in-image neighbour,
    # so it contributes zero, like -Inf, which torchvision handles.
    offset = np.where(np.isnan(offset), -np.inf, offset)

    with torch.no_grad():
        y = tv_deform_conv2d(t(x), t(offset), t(weight), t(bias), tuple(stride), tuple(padding),
                             tuple(dilation), t(mask))
    return y.numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """|actual - expected| ≤ rtol·max(1, max|expected|) wherever ``expected`` is finite (a fraction of the
    output scale: float32 accumulation error grows with it)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    err = np.abs(actual.astype(np.float64)[finite] - expected[finite])
    worst = float(err.max(initial=0.0)) if not np.isnan(err).any() else float("nan")
    assert worst <= rtol * scale, f"max |error| {worst:.3g} > {rtol:g}·{scale:.3g}"


# --------------------------------------------------------------- random configurations (sweep, hypothesis)

@dataclasses.dataclass(frozen=True)
class SweepCase:
    """One deformable convolution: sizes, hyper-parameters and whether it has a mask and a bias."""

    batch: int
    channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    offset_groups: int
    use_mask: bool
    use_bias: bool
    offset_scale: float

    @property
    def output_size(self) -> tuple[int, int]:
        return conv_output_size((self.height, self.width), self.kernel, self.stride, self.padding, self.dilation)

    def arrays(self, rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
        """X (N, C, H, W), W (O, C/groups, kH, kW), offset, B (O) and mask with this case's shapes."""
        kh, kw = self.kernel
        ho, wo = self.output_size
        taps = self.offset_groups * kh * kw
        return {
            "X": rng.standard_normal((self.batch, self.channels, self.height, self.width)).astype(dtype),
            "W": rng.standard_normal((self.out_channels, self.channels // self.groups, kh, kw)).astype(dtype),
            "offset": (rng.standard_normal((self.batch, 2 * taps, ho, wo)) * self.offset_scale).astype(dtype),
            "B": rng.standard_normal((self.out_channels,)).astype(dtype),
            "mask": rng.random((self.batch, taps, ho, wo)).astype(dtype),
        }


def random_case(rng: np.random.Generator) -> SweepCase:
    """A case drawn from the sweep of the foundation issue: kernels 1–7 (non-square), stride 1–3, padding
    0–3, dilation 1–3, groups and offset_groups 1–4, thin (1-pixel) inputs, batch 1–3, offsets up to far
    outside the image."""
    while True:
        groups, offset_groups = (int(v) for v in rng.integers(1, 5, size=2))
        channels = int(np.lcm(groups, offset_groups)) * int(rng.integers(1, 3))
        kernel = tuple(int(v) for v in rng.integers(1, 8, size=2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, size=2))
        padding = tuple(int(v) for v in rng.integers(0, 4, size=2))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
        height, width = (int(rng.choice([1, 2, 5, 9])) for _ in range(2))
        case = SweepCase(
            batch=int(rng.integers(1, 4)),
            channels=channels,
            out_channels=groups * int(rng.integers(1, 3)),
            height=height,
            width=width,
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            offset_groups=offset_groups,
            use_mask=bool(rng.integers(0, 2)),
            use_bias=bool(rng.integers(0, 2)),
            offset_scale=float(rng.choice([0.5, 2.0, 20.0])),
        )
        if min(case.output_size) >= 1:
            return case


def sweep_reference(case: SweepCase, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """torchvision's CPU deform_conv2d in float64 for the case's arrays."""
    return torchvision_reference(
        arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if case.use_mask else None,
        arrays["B"] if case.use_bias else None, case.stride, case.padding, case.dilation,
    )


def attributes(case: SweepCase) -> dict:
    return {
        "strides": list(case.stride),
        "pads": list(case.padding) * 2,
        "dilations": list(case.dilation),
        "group": case.groups,
        "offset_group": case.offset_groups,
    }



#: Ops with no kernel for these types in onnxruntime-web's JSEP WebGPU build (1.31.1), which it places on the CPU
#: EP: Min and Max of any type, And, Clip and Split of integers (its Split is float-only).
JSEP_ON_THE_CPU = {"Min": None, "Max": None, "And": None, "Clip": "integer", "Split": "integer"}


def inferred_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Every value ``model``'s graph computes, typed by strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return [*inferred.graph.value_info, *inferred.graph.output]


def jsep_cpu_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of ``model``'s graph (local functions inlined first) that onnxruntime-web's JSEP has no kernel
    for (:data:`JSEP_ON_THE_CPU`): it runs them on the CPU, with an upload between CPU and GPU that its upload
    race corrupts (``tests/web`` checks the placement in the browser)."""
    model = onnx.inliner.inline_local_functions(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred_values(model), *model.graph.input]}
    integers = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
    return [n.name or n.op_type for n in model.graph.node if n.op_type in JSEP_ON_THE_CPU
            and (JSEP_ON_THE_CPU[n.op_type] is None or types.get(n.input[0]) in integers)]


def wider_than_webgpu(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(op, buffers) of every node of ``model``'s graph (local functions inlined first) with more inputs and
    outputs together than ``STORAGE_BUFFERS`` (8): a WebGPU kernel binds one storage buffer per input and output,
    WebGPU guarantees 8 per shader stage and onnxruntime-web's JSEP asks for no more; a node over it fails to
    compile and the session returns garbage, with only a console error."""
    from dcn_onnxscript.lowering.emitter import STORAGE_BUFFERS

    model = onnx.inliner.inline_local_functions(model)
    buffers = [(n.op_type, len([i for i in n.input if i]) + len(n.output)) for n in model.graph.node]
    return [(op, count) for op, count in buffers if count > STORAGE_BUFFERS]


#: Hostile offset values: NaN, ±Inf and huge.
HOSTILE = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38]


def lowering_model(lowering: str, layer, opset: int = 18, static_shapes: Optional[dict] = None,
                   constants: Optional[dict] = None) -> onnx.ModelProto:
    """A one-layer model written by ``lowering`` through an onnx_ir tape (no torch export), inputs
    ``X``, ``W``, ``offset``[, ``B``][, ``mask``] of the layer's dtype; dynamic shapes unless
    ``static_shapes`` (name -> shape) is given. ``W`` and ``B`` are graph inputs, so nothing is folded,
    unless ``constants`` (name -> array) makes them initializers, as in exported and rewritten models."""
    import onnx_ir as ir

    from dcn_onnxscript.lowering import table
    from dcn_onnxscript.lowering.emitter import TapeEmitter

    op = TapeEmitter(opset, initializers=False)
    dtype = ir.DataType(layer.dtype)
    constants = constants or {}
    names = ["X", "W", "offset"] + (["B"] if layer.bias else []) + (["mask"] if layer.mask else [])
    ranks = {"B": 1}
    values = {n: ir.Value(name=n, type=ir.TensorType(dtype),
                          shape=ir.Shape((static_shapes or {}).get(n, [f"{n}{i}" for i in range(ranks.get(n, 4))])),
                          const_value=ir.tensor(constants[n]) if n in constants else None)
              for n in names}
    Y = table.build(lowering, op, layer, values["X"], values["W"], values["offset"], values.get("B"),
                    values.get("mask"))
    Y.name, Y.type, Y.shape = "Y", ir.TensorType(dtype), ir.Shape(["N", "O", "Ho", "Wo"])
    graph = ir.Graph([values[n] for n in names if n not in constants], [Y], nodes=op.tape.nodes,
                     initializers=[values[n] for n in names if n in constants], opset_imports={"": opset},
                     name=f"deform_conv2d_{lowering}")
    return ir.to_proto(ir.Model(graph, ir_version=8))


def pass_through_weights(case: SweepCase, zero_taps: list[bool]) -> np.ndarray:
    """W (C, C/groups, kH, kW) float32 that passes every channel of a group to itself at each tap (the DCNv3/DCNv4
    cores' weight), zero at the taps ``zero_taps`` marks."""
    n = case.channels // case.groups
    W = np.tile(np.eye(n, dtype=np.float32), (case.groups, 1))[:, :, None, None] * np.ones((1, 1, *case.kernel))
    W[:, :, np.array(zero_taps).reshape(case.kernel)] = 0
    return W.astype(np.float32)


def sweep_layer(case: SweepCase, dtype: int = onnx.TensorProto.FLOAT, static: bool = False):
    """The :class:`dcn_onnxscript.lowering.layer.Layer` of a sweep case; with ``static``, every size known (N,
    (H, W), (Ho, Wo)), as exporters and the rewriter fill them in from static shapes."""
    from dcn_onnxscript.lowering.layer import Layer

    sizes = dict(batch=case.batch, input_size=(case.height, case.width), output_size=case.output_size) if static \
        else {}
    return Layer(kernel=case.kernel, stride=case.stride, padding=case.padding, dilation=case.dilation,
                 groups=case.groups, offset_groups=case.offset_groups, in_channels=case.channels,
                 out_channels=case.out_channels, dtype=dtype, bias=case.use_bias, mask=case.use_mask, **sizes)


#: A number in a shown output, compared by order of magnitude (errors move with the machine's BLAS).
NUMBER = re.compile(r"\d+\.\d+e[-+]\d+")


def readme_block(marker: str) -> str:
    """The first ```text block after ``marker`` in README.md."""
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"```text\n(.*?)```", readme[readme.index(marker):], flags=re.DOTALL).group(1)


def assert_same_output(shown: str, printed: str) -> None:
    """Line by line equal, numbers like 1.3e-06 within a factor of 10."""
    shown_lines, printed_lines = shown.strip().splitlines(), printed.strip().splitlines()
    assert len(shown_lines) == len(printed_lines), printed
    for want, got in zip(shown_lines, printed_lines):
        assert NUMBER.sub("#", want) == NUMBER.sub("#", got), f"README shows {want!r}, the command prints {got!r}"
        for a, b in zip(NUMBER.findall(want), NUMBER.findall(got)):
            assert 0.1 <= float(a) / max(float(b), 1e-30) <= 10, (want, got)


# --------------------------------------------------------------- graph tools users run on ONNX files


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    return onnxsim.simplify(model)[0]


def _onnxoptimizer(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(model)


def _float16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True)


#: The graph tools users run on ONNX files: (tool, the tolerance against torchvision in float64).
GRAPH_TOOLS = {"onnxslim": (_onnxslim, 1e-4), "onnxsim": (_onnxsim, 1e-4), "onnxoptimizer": (_onnxoptimizer, 1e-4),
         "float16": (_float16, 1e-2)}
