"""The generated matrix: exporter × model context × lowering × opset × dtype × (bias, mask) variant × layer
geometry × dynamic-shape spelling × runtime, and the export of one of its models."""

from __future__ import annotations

import dataclasses
import io
import itertools
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import onnx
import torch

import dcn_onnxscript
from faults import DEPLOY, OPENCV4, OVEP, RKNN, TFLITE, Fault, Limitation
from helpers import Case, DeformBlock, DeformConvLayer, dcn_resnet50_module, make_inputs
from runtimes import MATRIX_RUNTIMES

#: Layer geometries of the matrix: plain DCN, conv + offset groups (slices), strided/dilated non-square,
#: offset groups that are not a multiple of the conv groups (lcm slices), a 1-pixel-high image.
GEOMETRIES = {
    "plain": Case(),
    "groups": Case(in_channels=4, out_channels=6, groups=2, offset_groups=2),
    # Ho, Wo = 6, 7: a mask (N, 6, 6, 7) whose NCHW and NHWC shapes differ (LiteRT's inputs are fed by shape)
    "strided": Case(kernel=(2, 3), stride=(2, 1), padding=(2, 0), dilation=(2, 1), size=(9, 9)),
    "lcm": Case(in_channels=6, out_channels=4, groups=2, offset_groups=3),
    "one_row": Case(kernel=(1, 3), padding=(0, 1), size=(1, 5)),
}
#: (bias, mask) variants of torchvision.ops.deform_conv2d.
VARIANTS = {"dcnv2": (True, True), "dcnv2_no_bias": (False, True), "dcnv1": (True, False),
            "dcnv1_no_bias": (False, False)}
DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": None}
#: What surrounds the deformable layer: nothing (inputs x, offset[, mask]); a block of ordinary layers
#: (:class:`helpers.DeformBlock`, input x); the DCNv2 ResNet-50 of examples/dcn_resnet50.py (input x).
CONTEXTS = ("layer", "block", "resnet50")
#: How dynamic shapes are spelled: none; one shared ``torch.export.Dim`` per axis (offset and mask share
#: the output grid's); ``Dim.AUTO`` and ``Dim.DYNAMIC`` per axis of every input (each input then gets
#: its own symbols); the ``dynamic_axes`` argument (both exporters).
SHAPES = ("static", "dims", "auto", "dynamic", "dynamic_axes")
#: The ResNet-50's input size when static (the five stride-2 stages need 32 pixels at least).
RESNET_SIZE = (64, 64)


@dataclasses.dataclass(frozen=True)
class Export:
    """One exported model of the matrix."""

    exporter: str  # "dynamo" | "torchscript"
    context: str  # a value of CONTEXTS
    lowering: str  # "auto" (the default: grid_sample from opset 16, else gather) | "gather" | "grid_sample"
    opset: int
    dtype: str  # a key of DTYPES
    variant: str  # a key of VARIANTS
    geometry: str  # a key of GEOMETRIES
    shapes: str  # a value of SHAPES

    @property
    def case(self) -> Case:
        bias, mask = VARIANTS[self.variant]
        return dataclasses.replace(GEOMETRIES[self.geometry], bias=bias, mask=mask)

    @property
    def dynamic(self) -> bool:
        return self.shapes != "static"

    def id(self) -> str:
        return "-".join(str(v) for v in dataclasses.astuple(self))


def dynamo_opsets() -> list[int]:
    from torch.onnx import _constants

    return list(range(12, _constants.ONNX_MAX_OPSET + 1))


def torchscript_opsets() -> list[int]:
    from torch.onnx import _constants

    return list(range(12, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1))


def valid_export(export: Export) -> bool:
    """Whether the export is meaningful (not whether it passes), whatever the runtime."""
    if export.exporter == "torchscript" and (export.lowering != "auto" or export.opset not in torchscript_opsets()
                                             or export.shapes not in ("static", "dynamic_axes")):
        return False  # the TorchScript exporter writes the default lowering; dynamic_axes is its spelling
    if export.lowering == "grid_sample" and export.opset < 16:
        return False  # refused at export: tested in test_grid_sample_below_opset_16_fails_at_export_...
    if export.context == "resnet50":
        return (export.geometry, export.variant, export.dtype) == ("plain", "dcnv2", "float32")
    # torchvision has no bfloat16 CPU kernel, and the TorchScript exporter runs the model to trace it;
    # ONNX ops take bfloat16 from opset 13 on, Conv (the block's own) from opset 22.
    lowest = 22 if export.context == "block" else 13
    return export.dtype != "bfloat16" or (export.exporter == "dynamo" and export.opset >= lowest)


def valid(export: Export, runtime: str) -> bool:
    """Whether the combination is meaningful (not whether it passes)."""
    if not valid_export(export):
        return False
    if export.context == "resnet50" and runtime not in ("onnxruntime", "openvino"):
        return False  # the network runs where it is fast enough for a test
    if export.dtype == "bfloat16" or runtime == "checker":
        return export.dtype == "bfloat16" and runtime == "checker"
    if runtime == "tract_symbolic":
        return export.dynamic
    if runtime == "tract":
        return not export.dynamic  # tract cannot unify concrete input facts with the exporter's symbolic value_info
    if runtime == "tflite":
        return not export.dynamic and export.dtype == "float32"  # what onnx2tf converts
    if runtime == "ncnn":
        return not export.dynamic and export.dtype == "float32"  # pnnx converts float32, ncnn has no batch
    if runtime == "rknn":  # rknn-toolkit2 takes opsets up to 19; it builds a dynamic export at the feeds' sizes
        return export.dtype == "float32" and export.opset <= 19
    if runtime in ("opencv", "opencv4", "tvm", "openvino_ep", "tinygrad"):
        return export.dtype == "float32"  # the type these deployments run
    return True


def all_matrix_cases() -> list[tuple[Export, str]]:
    """Every valid (export, runtime) of the matrix; "checker" is the runtime of bfloat16 cases."""
    runtimes = (*MATRIX_RUNTIMES, "checker")
    cases = []
    for exporter in ("dynamo", "torchscript"):
        opsets = dynamo_opsets() if exporter == "dynamo" else torchscript_opsets()
        for values in itertools.product(CONTEXTS, ("auto", "gather", "grid_sample"), opsets, DTYPES):
            if not valid_export(Export(exporter, *values, "dcnv2", "plain", "static")):
                continue  # invalid whatever the variant, geometry and shapes (checked on one of them)
            for variant, geometry, shapes in itertools.product(VARIANTS, GEOMETRIES, SHAPES):
                export = Export(exporter, *values, variant, geometry, shapes)
                if valid_export(export):
                    cases.extend((export, runtime) for runtime in runtimes if valid(export, runtime))
    return cases


def pairwise_slice(cases: Sequence[tuple[Export, str]], paired: Optional[Sequence[str]] = None
                   ) -> set[tuple[Export, str]]:
    """A greedy covering subset: every pair of values of two dimensions that occurs in ``cases`` occurs in
    the subset too (deterministic: ties go to the earlier case). With ``paired``, only pairs of those
    dimensions (names of Export's fields, or "runtime"); every value of every other dimension still occurs
    at least once. Each case's pairs are numbered, one column per pair of dimensions, so that one step of
    the greedy search is a vectorised count."""
    names = [f.name for f in dataclasses.fields(Export)] + ["runtime"]
    numbering: list[dict] = [{} for _ in names]
    codes = np.array([[number.setdefault(value, len(number)) for number, value in
                       zip(numbering, (*(getattr(export, name) for name in names[:-1]), runtime))]
                      for export, runtime in cases])
    sizes = codes.max(axis=0) + 1
    which = [i for i, name in enumerate(names) if paired is None or name in paired]
    columns, offset = [], 0
    for i in range(len(names)):  # every value of every dimension, as a "pair" with itself
        columns.append(offset + codes[:, i])
        offset += sizes[i]
    for i, j in itertools.combinations(which, 2):
        columns.append(offset + codes[:, i] * sizes[j] + codes[:, j])
        offset += sizes[i] * sizes[j]
    pairs = np.stack(columns, axis=1)
    uncovered = np.zeros(offset, dtype=bool)
    uncovered[pairs.ravel()] = True
    chosen: set = set()
    while uncovered.any():
        best = int(np.argmax(uncovered[pairs].sum(axis=1)))
        chosen.add(cases[best])
        uncovered[pairs[best]] = False
    return chosen


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def model_of(export: Export) -> torch.nn.Module:
    """The PyTorch model of the export's context, in the export's dtype, in eval mode."""
    if export.context == "resnet50":
        module = dcn_resnet50_module().build_model()
    elif export.context == "block":
        module = DeformBlock(export.case)
    else:
        module = DeformConvLayer(export.case)
    return module.eval().to(torch_dtype(export.dtype))


def input_names(export: Export) -> list[str]:
    return ["x", "offset", "mask"][: 3 if export.case.mask else 2] if export.context == "layer" else ["x"]


def model_inputs(export: Export, seed: int, size: Optional[tuple[int, int]] = None,
                 batch: Optional[int] = None) -> list[np.ndarray]:
    """Inputs of the export's model: [x, offset(, mask)] of the layer, or the image x, at ``size`` and
    ``batch`` (defaults: the context's)."""
    dtype = DTYPES[export.dtype] or np.float32
    if export.context == "layer":
        return make_inputs(export.case, seed=seed, size=size, batch=batch, dtype=dtype)
    default = RESNET_SIZE if export.context == "resnet50" else export.case.size
    height, width = size or default
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch or 1, 3, height, width)).astype(dtype)]


def _dynamic_shapes(export: Export) -> Optional[tuple]:
    """``dynamic_shapes`` of the dynamo export for the spelling ``export.shapes``."""
    Dim = torch.export.Dim
    count = len(input_names(export))
    if export.shapes in ("auto", "dynamic"):
        marker = Dim.AUTO if export.shapes == "auto" else Dim.DYNAMIC
        return ({0: marker, 2: marker, 3: marker},) * count
    if export.shapes != "dims":
        return None
    n, h, w = Dim("n"), Dim("h", min=2), Dim("w", min=2)
    grid = {0: n, 2: Dim("ho", min=1), 3: Dim("wo", min=1)}  # offset and mask share the output grid
    return ({0: n, 2: h, 3: w}, *(grid,) * (count - 1))


def _dynamic_axes(export: Export) -> Optional[dict]:
    if export.shapes != "dynamic_axes":
        return None
    names = input_names(export)
    axes = {names[0]: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 2: "out_height", 3: "out_width"} for name in names[1:]})
    return axes


def export_matrix_model(export: Export) -> tuple[torch.nn.Module, onnx.ModelProto]:
    """The PyTorch model (in the export's dtype) and its exported ONNX model."""
    module = model_of(export)
    # A dynamic dimension of size 1 would be specialised by torch.export: export at 2 or more.
    size = tuple(max(2, s) for s in export.case.size) if export.dynamic and export.context != "resnet50" else None
    args = tuple(torch.from_numpy(a).to(torch_dtype(export.dtype)) for a in model_inputs(export, 1, size=size))
    names = input_names(export)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if export.exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=export.opset, input_names=names,
                              output_names=["y"], dynamic_axes=_dynamic_axes(export))
            return module, onnx.load_from_string(buffer.getvalue())
        program = torch.onnx.export(module, args, dynamo=True, opset_version=export.opset, verbose=False,
                                    input_names=names, dynamic_shapes=_dynamic_shapes(export),
                                    dynamic_axes=_dynamic_axes(export),
                                    custom_translation_table=dcn_onnxscript.translation_table(export.lowering))
        return module, program.model_proto


def hostile(offset: np.ndarray, seed: int) -> np.ndarray:
    """``offset`` with about 5 % of its entries NaN, ±Inf or ±huge (the largest finite value of its dtype)."""
    rng = np.random.default_rng(seed)
    offset = offset.copy()
    big = np.finfo(offset.dtype).max
    chosen = rng.random(offset.shape) < 0.05
    offset[chosen] = rng.choice(np.array([np.nan, np.inf, -np.inf, big, -big, 1e4], dtype=offset.dtype),
                                size=int(chosen.sum()))
    return offset


def lowering_written(export: Export) -> str:
    """The lowering the export writes: "auto" is grid_sample from opset 16 and gather below and for float64."""
    if export.lowering != "auto":
        return export.lowering
    return "grid_sample" if export.opset >= 16 and export.dtype != "float64" else "gather"


def known_failure(export: Export, runtime: str) -> Optional[Union[Fault, Limitation]]:
    """Why a valid combination fails for a reason outside this package (a :class:`~faults.Fault`, with the
    versions where it was seen) or a documented limitation, or ``None``. Run as an xfail: strict where the
    fault was seen, so that a fix shows up."""
    written = lowering_written(export)
    if runtime == "reference" and written == "grid_sample" and export.opset < 20:
        return Fault("onnx", "1.23.2", "onnx.reference implements only GridSample-20's mode names (linear, "
                     "cubic); GridSample-16 names the mode 'bilinear'")
    if runtime == "onnxruntime" and export.context != "layer" and export.dtype == "float64":
        return Fault("onnxruntime", "1.32.0", "the CPU provider has no float64 Conv kernel (the block's own "
                     "convolutions)")
    if runtime == "tflite" and export.exporter == "torchscript" and export.case.groups > 1 and written == "grid_sample":
        return Fault("onnx2tf", "1.29.24", "cannot name the grouped Conv of a TorchScript export, whose node names "
                     "start with '/': 'the OP name does not match'", TFLITE)
    return _deploy_failure(export, runtime, written == "gather")


#: Why OpenCV 4.x (4.14.0) refuses dynamic-size exports, by exporter: `rewrite --for opencv4` rewrites static
#: sizes only, and the importer fails before any GridSample is reached.
_OPENCV4_DYNAMIC = {
    "dynamo": Fault("opencv-python-headless", "4.14.0.94", "the importer cannot read the BOOL constants of a "
                    "dynamic export (the Where conditions of the positions and masks): 'Unsupported data type: BOOL "
                    "in function getMatFromTensor' (export with static shapes)", OPENCV4),
    "torchscript": Fault("opencv-python-headless", "4.14.0.94", "the importer evaluates Shape when it reads the "
                         "model and refuses an input of dynamic size: 'parseShape ... !isDynamicShape' (export with "
                         "static shapes)", OPENCV4),
}


def _deploy_failure(export: Export, runtime: str, writes_gather: bool) -> Optional[Union[Fault, Limitation]]:
    """:func:`known_failure` of the deployment runtimes (float32 exports)."""
    if runtime == "tinygrad" and not writes_gather:
        return Fault("tinygrad", "0.14.0", "the ONNX runner has no GridSample (tests/tools/test_deploy.py)", DEPLOY)
    if runtime == "openvino_ep" and not writes_gather and export.opset >= 20:
        return Fault("onnxruntime-openvino", "1.24.1", "its OpenVINO 2025.4 knows GridSample-20's mode only as "
                     "'bilinear', not 'linear' (tests/tools/test_deploy.py)", OVEP)
    if runtime == "opencv4" and export.dynamic:
        return _OPENCV4_DYNAMIC[export.exporter]
    if runtime == "ncnn" and writes_gather:
        return Limitation("the gather lowering indexes with integer ops (Greater/Equal -> Where, Cast to INT64), "
                          "which pnnx writes as torch.gt/eq/where and Tensor.to and ncnn lacks: ncnn takes "
                          "grid_sample exports (opset >= 16; docs/deploy.md)")
    if runtime == "rknn" and not writes_gather and export.context == "layer":
        return Fault("rknn-toolkit2", "2.5.0", "the RK3588 simulator samples offsets that are NaN, ±Inf or beyond "
                     "float16's range (the layer's hostile inputs) as if they were finite (max error 1.66 at an "
                     "output scale of 2.1; offsets up to 1e4 match within 4.7e-3) (docs/known-issues.md)", RKNN)
    return None
