"""Shared test helpers: torchvision references, model builders and runners for every ONNX runtime.

Runners take an ``onnx.ModelProto`` and a sequence of numpy inputs (in graph-input order) and return the
first output as a numpy array.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import os
import pathlib
import re
import subprocess
import tempfile
from typing import Optional, Sequence

import numpy as np
import onnx
import torch
import torchvision  # noqa: F401  (loads torchvision::deform_conv2d)
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import dcn_onnxscript  # registers the translations, as a user's script does

Inputs = Sequence[np.ndarray]


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
        return tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(size, self.kernel, self.stride, self.padding, self.dilation)
        )


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


# --------------------------------------------------------------------------------------------- runners

def run_onnxruntime(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(v) for i, v in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0]


def run_reference(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    session = ReferenceEvaluator(model)
    feeds = {i.name: np.asarray(v) for i, v in zip(model.graph.input, inputs)}
    return session.run(None, feeds)[0]


def run_openvino(model: onnx.ModelProto, inputs: Inputs, precision: Optional[str] = "f32") -> np.ndarray:
    """OpenVINO CPU in float32 (its default inference precision there is bf16 on capable CPUs), or with
    ``precision=None`` in its default precision."""
    import openvino

    core = openvino.Core()
    ov_model = core.read_model(model.SerializeToString(), b"")  # bytes: an in-memory model
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = core.compile_model(ov_model, "CPU", config)
    result = compiled([np.asarray(v) for v in inputs])
    return np.asarray(result[compiled.output(0)])


def run_tract(model: onnx.ModelProto, inputs: Inputs, concrete: bool = True) -> np.ndarray:
    """tract, with every input's shape and type fixed to the given arrays' (``concrete``), or loaded as it
    is, symbolic dimensions and all. A symbolic model must type with output sizes that are plain symbols
    or numbers: an expression (a rounded split, a broadcast of two spellings of one size) grows with every
    layer a network stacks, until tract takes minutes to load it."""
    import tract

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        inference_model = tract.onnx().load(path)
        for i, value in enumerate(inputs if concrete else ()):
            value = np.asarray(value)
            fact = f"{','.join(map(str, value.shape))},{_tract_dtype(value.dtype)}"
            inference_model.set_input_fact(i, fact)
        typed = inference_model.into_model()
        if not concrete:
            sizes = str(typed.output_fact(0)).split(",")[:-1]
            assert all(re.fullmatch(r"<?\w+>?", size) for size in sizes), f"tract output fact {typed.output_fact(0)}"
        return typed.into_runnable().run([np.asarray(v) for v in inputs])[0].to_numpy()


def _tract_dtype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}[
        np.dtype(dtype)]


#: The Python of the LiteRT venv that ``.ci/tflite`` builds (onnx2tf, tensorflow, ai-edge-litert; no torch).
TFLITE_PYTHON = os.environ.get(
    "DCN_TFLITE_PYTHON", str(pathlib.Path(__file__).resolve().parents[1] / ".venv-tflite" / "bin" / "python"))
_TFLITE_WORKER = pathlib.Path(__file__).resolve().parent / "tflite_worker.py"
#: Where the converted files live; removed with the test process.
_TFLITE_FOLDER = tempfile.TemporaryDirectory(prefix="dcn_tflite_")


@functools.lru_cache(maxsize=8)
def _tflite_file(serialized: bytes) -> str:
    """onnx2tf's float32 TFLite file of a serialized ONNX model (converted once per model, in the LiteRT
    venv; kept in :data:`_TFLITE_FOLDER` until the test process ends)."""
    import pytest

    if not os.path.exists(TFLITE_PYTHON):
        pytest.fail(f"no LiteRT venv at {TFLITE_PYTHON}: run `bash .ci/tflite` or set DCN_TFLITE_PYTHON")
    folder = tempfile.mkdtemp(dir=_TFLITE_FOLDER.name)
    model, tflite = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.tflite")
    with open(model, "wb") as file:
        file.write(serialized)
    done = subprocess.run([TFLITE_PYTHON, str(_TFLITE_WORKER), "convert", model, tflite], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"onnx2tf failed:\n{done.stderr[-3000:]}"
    return tflite


def run_tflite(model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """onnx2tf (its defaults: channels-last inputs) to a float32 TFLite model, run by LiteRT, in the LiteRT
    venv (``tflite_worker.py``); the output back in the model's NCHW. The converted model must use LiteRT's
    builtin ops only (no "Flex" select-TensorFlow ops, which plain LiteRT runtimes lack).

    onnx2tf leaves a rank-4 output NCHW or makes it NHWC and the TFLite file does not say which: where both
    read as the ONNX output's shape (O = Ho = Wo), the layout is the one in which LiteRT's output is nearer
    to onnxruntime's for the same ONNX model (the caller then compares with its own reference)."""
    tflite = _tflite_file(model.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        feeds, output = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "output.npy")
        np.savez(feeds, **{value.name: np.asarray(array) for value, array in zip(model.graph.input, inputs)})
        done = subprocess.run([TFLITE_PYTHON, str(_TFLITE_WORKER), "run", tflite, feeds, output],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"LiteRT failed:\n{done.stderr[-3000:]}"
        result = np.load(output)
    ops = done.stdout.strip().splitlines()[-1].split()[1:]
    assert not [op for op in ops if op.startswith("Flex")], f"select TensorFlow ops in the TFLite model: {ops}"
    shape = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    channels_last = result.transpose(0, 3, 1, 2)
    if result.shape != shape:
        return channels_last
    if channels_last.shape != shape:
        return result
    onnx_result = np.nan_to_num(run_onnxruntime(model, inputs))
    distance = [np.abs(np.nan_to_num(r) - onnx_result).max() for r in (result, channels_last)]
    return result if distance[0] <= distance[1] else channels_last


RUNNERS = {
    "onnxruntime": run_onnxruntime,
    "reference": run_reference,
    "openvino": run_openvino,
    "tract": run_tract,
    "tflite": run_tflite,
}


# ----------------------------------------------------------------------------------- the generated matrix

#: Layer geometries of the matrix: plain DCN, conv + offset groups (slices), strided/dilated non-square,
#: offset groups that are not a multiple of the conv groups (lcm slices), a 1-pixel-high image.
GEOMETRIES = {
    "plain": Case(),
    "groups": Case(in_channels=4, out_channels=6, groups=2, offset_groups=2),
    "strided": Case(kernel=(2, 3), stride=(2, 1), padding=(2, 0), dilation=(2, 1), size=(9, 8)),
    "lcm": Case(in_channels=6, out_channels=4, groups=2, offset_groups=3),
    "one_row": Case(kernel=(1, 3), padding=(0, 1), size=(1, 5)),
}
#: (bias, mask) variants of torchvision.ops.deform_conv2d.
VARIANTS = {"dcnv2": (True, True), "dcnv2_no_bias": (False, True), "dcnv1": (True, False),
            "dcnv1_no_bias": (False, False)}
DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": None}
#: runtime -> runner; "openvino" compares in f32, "openvino_default" runs OpenVINO's own default precision
#: (bf16 on this AMX CPU); "tract" runs static models with concrete input facts, "tract_symbolic" loads
#: dynamic models as they are; "tflite" converts static float32 models with onnx2tf and runs LiteRT (in
#: its own venv: marked ``tflite``, run by ``.ci/tflite``, not by the default command).
MATRIX_RUNTIMES = ("onnxruntime", "openvino", "openvino_default", "tract", "tract_symbolic", "reference", "tflite")


@dataclasses.dataclass(frozen=True)
class Export:
    """One exported model of the matrix."""

    exporter: str  # "dynamo" | "torchscript"
    lowering: str  # "auto" (the default: grid_sample above opset 18, else gather) | "gather" | "grid_sample"
    opset: int
    dtype: str  # a key of DTYPES
    variant: str  # a key of VARIANTS
    geometry: str  # a key of GEOMETRIES
    shapes: str  # "static" | "dynamic"

    @property
    def case(self) -> Case:
        bias, mask = VARIANTS[self.variant]
        return dataclasses.replace(GEOMETRIES[self.geometry], bias=bias, mask=mask)

    def id(self) -> str:
        return "-".join(str(v) for v in dataclasses.astuple(self))


def dynamo_opsets() -> list[int]:
    from torch.onnx import _constants

    return list(range(12, _constants.ONNX_MAX_OPSET + 1))


def torchscript_opsets() -> list[int]:
    from torch.onnx import _constants

    return list(range(12, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1))


def valid(export: Export, runtime: str) -> bool:
    """Whether the combination is meaningful (not whether it passes)."""
    if export.exporter == "torchscript" and (export.lowering != "gather" or export.opset not in torchscript_opsets()):
        return False
    if export.lowering == "grid_sample" and export.opset < 16:
        return False  # refused at export: tested in test_export_refuses_grid_sample_below_16
    if export.dtype == "bfloat16":
        # torchvision has no bfloat16 CPU kernel, and the TorchScript exporter runs the model to trace it;
        # ONNX ops take bfloat16 from opset 13 on.
        return runtime == "checker" and export.exporter == "dynamo" and export.opset >= 13
    if runtime == "tract_symbolic" and export.shapes != "dynamic":
        return False
    if runtime == "tract" and export.shapes != "static":
        return False  # tract cannot unify concrete input facts with the exporter's symbolic value_info
    if runtime == "tflite":
        return export.shapes == "static" and export.dtype == "float32"  # what onnx2tf converts
    return True


def all_matrix_cases() -> list[tuple[Export, str]]:
    """Every valid (export, runtime) of the matrix; "checker" is the runtime of bfloat16 cases."""
    cases = []
    for exporter in ("dynamo", "torchscript"):
        opsets = dynamo_opsets() if exporter == "dynamo" else torchscript_opsets()
        for lowering, opset, dtype, variant, geometry, shapes in itertools.product(
                ("auto", "gather", "grid_sample"), opsets, DTYPES, VARIANTS, GEOMETRIES, ("static", "dynamic")):
            export = Export(exporter, lowering, opset, dtype, variant, geometry, shapes)
            for runtime in (*MATRIX_RUNTIMES, "checker"):
                if valid(export, runtime):
                    cases.append((export, runtime))
    return cases


def pairwise_slice(cases: Sequence[tuple[Export, str]], paired: Optional[Sequence[str]] = None
                   ) -> set[tuple[Export, str]]:
    """A greedy covering subset: every pair of values of two dimensions that occurs in ``cases`` occurs in
    the subset too (deterministic). With ``paired``, only pairs of those dimensions (names of Export's
    fields, or "runtime"); every value of every other dimension still occurs at least once."""
    def pairs(case):
        export, runtime = case
        values = {**{f.name: f"{f.name}={getattr(export, f.name)}" for f in dataclasses.fields(export)},
                  "runtime": f"runtime={runtime}"}
        chosen = [values[name] for name in (paired or values)]
        return {(a, b) for a, b in itertools.combinations(chosen, 2)} | {(v, v) for v in values.values()}

    uncovered = set().union(*(pairs(c) for c in cases))
    chosen: set = set()
    by_pairs = {c: pairs(c) for c in cases}
    while uncovered:
        best = max(cases, key=lambda c: (len(by_pairs[c] & uncovered), c[0].id(), c[1]))
        chosen.add(best)
        uncovered -= by_pairs[best]
    return chosen


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def export_matrix_model(export: Export) -> tuple[DeformConvLayer, onnx.ModelProto]:
    """The layer (in the export's dtype) and its exported model."""
    case = export.case
    layer = DeformConvLayer(case).eval().to(torch_dtype(export.dtype))
    dynamic = export.shapes == "dynamic"
    # A dynamic dimension of size 1 would be specialised by torch.export: export at 2 or more.
    size = tuple(max(2, s) for s in case.size) if dynamic else case.size
    args = tuple(torch.from_numpy(a).to(torch_dtype(export.dtype)) for a in make_inputs(case, size=size))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if export.exporter == "torchscript":
            names = ["x", "offset", "mask"][: len(args)]
            axes = {name: {0: "batch", 2: "out_h", 3: "out_w"} for name in names[1:]} if dynamic else None
            if dynamic:
                axes["x"] = {0: "batch", 2: "h", 3: "w"}
            buffer = io.BytesIO()
            torch.onnx.export(layer, args, buffer, dynamo=False, opset_version=export.opset, input_names=names,
                              output_names=["y"], dynamic_axes=axes)
            return layer, onnx.load_from_string(buffer.getvalue())
        shapes = None
        if dynamic:  # offset and mask share their output-grid dimensions, as in a real network
            n, h, w = torch.export.Dim("n"), torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
            grid = ({0: n, 2: torch.export.Dim("ho", min=1), 3: torch.export.Dim("wo", min=1)},) * (len(args) - 1)
            shapes = ({0: n, 2: h, 3: w}, *grid)
        program = torch.onnx.export(layer, args, dynamo=True, opset_version=export.opset, dynamic_shapes=shapes,
                                    verbose=False,
                                    custom_translation_table=dcn_onnxscript.translation_table(export.lowering))
        return layer, program.model_proto


def hostile(offset: np.ndarray, seed: int) -> np.ndarray:
    """``offset`` with about 5 % of its entries NaN, ±Inf or ±huge (the largest finite value of its dtype)."""
    rng = np.random.default_rng(seed)
    offset = offset.copy()
    big = np.finfo(offset.dtype).max
    chosen = rng.random(offset.shape) < 0.05
    offset[chosen] = rng.choice(np.array([np.nan, np.inf, -np.inf, big, -big, 1e4], dtype=offset.dtype),
                                size=int(chosen.sum()))
    return offset


def known_failure(export: Export, runtime: str) -> Optional[str]:
    """Why a valid combination fails for a reason outside this package or a documented limitation (it is
    run as a strict xfail, so that a fix shows up), or ``None``."""
    writes_grid_sample_16 = export.lowering == "grid_sample" or (
        export.lowering == "auto" and export.opset == 19 and export.dtype != "float64")
    if runtime == "reference" and writes_grid_sample_16 and export.opset < 20:
        return ("onnx.reference implements only GridSample-20's mode names (linear, cubic); GridSample-16 "
                "names the mode 'bilinear' (tool)")
    writes_gather = export.lowering == "gather" or (
        export.lowering == "auto" and (export.exporter == "torchscript" or export.opset < 19))
    if runtime == "tflite" and writes_gather:
        return ("LiteRT takes the grid_sample lowering only: onnx2tf turns the gather lowering's int64 index "
                "arithmetic into select-TensorFlow ops (FlexCumsum, FlexRelu) or fails on it (README)")
    return None


def run_runtime(runtime: str, model: onnx.ModelProto, inputs: Inputs) -> np.ndarray:
    """The matrix's runners by name (see :data:`MATRIX_RUNTIMES`)."""
    if runtime == "openvino_default":
        return run_openvino(model, inputs, precision=None)
    if runtime == "tract_symbolic":
        return run_tract(model, inputs, concrete=False)
    return RUNNERS[runtime](model, inputs)


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
        return tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(
                (self.height, self.width), self.kernel, self.stride, self.padding, self.dilation
            )
        )

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


def sweep_layer(case: SweepCase, dtype: int = onnx.TensorProto.FLOAT):
    """The :class:`dcn_onnxscript.lowering.layer.Layer` of a sweep case."""
    from dcn_onnxscript.lowering.layer import Layer

    return Layer(kernel=case.kernel, stride=case.stride, padding=case.padding, dilation=case.dilation,
                 groups=case.groups, offset_groups=case.offset_groups, in_channels=case.channels,
                 out_channels=case.out_channels, dtype=dtype, bias=case.use_bias, mask=case.use_mask)
