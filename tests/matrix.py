"""The generated matrix: exporter × lowering × opset × dtype × (bias, mask) variant × layer geometry ×
shapes × runtime, and the export of one of its models."""

from __future__ import annotations

import dataclasses
import io
import itertools
from typing import Optional, Sequence

import numpy as np
import onnx
import torch

import dcn_onnxscript
from helpers import Case, DeformConvLayer, make_inputs
from runtimes import MATRIX_RUNTIMES

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
    if runtime == "ncnn":
        return export.shapes == "static" and export.dtype == "float32"  # pnnx converts float32, ncnn has no batch
    if runtime in ("opencv_classic", "opencv_new", "tvm", "openvino_ep", "tinygrad"):
        return export.dtype == "float32"  # the type these deployments run
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
    return _deploy_failure(export, runtime, writes_gather)


def _deploy_failure(export: Export, runtime: str, writes_gather: bool) -> Optional[str]:
    """:func:`known_failure` of the deployment runtimes (float32 exports)."""
    if runtime == "tinygrad" and not writes_gather:
        return "tinygrad's ONNX runner has no GridSample (tool; tests/tools/test_deploy.py)"
    if runtime == "openvino_ep" and not writes_gather and export.opset >= 20:
        return ("onnxruntime-openvino 1.24's OpenVINO 2025.4 knows GridSample-20's mode only as 'bilinear', not "
                "'linear' (tool; tests/tools/test_deploy.py)")
    if runtime == "openvino_ep" and writes_gather:
        return "the OpenVINO EP does not take the gather lowering's Equal -> Cast(DOUBLE) -> CumSum (graph)"
    if runtime == "opencv_classic":
        return ("OpenCV's classic engine segfaults on the CumSum of a constant (static exports) and cannot parse the "
                "Transpose after the 2K-channel Gather (dynamic) (graph)")
    if runtime == "opencv_new" and export.exporter == "torchscript":
        return ("OpenCV's new engine: a Cast to DOUBLE of a Shape meets a float64 Sub, 'inputs should have equal "
                "types' (graph)")
    if runtime == "ncnn":
        return ("pnnx writes Abs/Less/Greater/Equal -> Where as torch.lt/gt/eq/where, and Cast as Tensor.to, which "
                "ncnn lacks (graph)")
    return None
