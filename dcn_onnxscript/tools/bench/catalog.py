"""What the bench can run, by name: the cases, the export paths (one table row each), the other runtimes.

Plain data, importable without torch or onnxruntime, so that ``bench --help`` lists every choice at once.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from dcn_onnxscript.lowering.table import LOWERINGS


class Unavailable(Exception):
    """A case or model that cannot be built or run here; the message goes into its row."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """A modulated 3x3 deformable layer, padding 1, C = O channels, on (batch, C, size, size)."""

    batch: int
    channels: int
    size: int

    def gemm_shape(self) -> tuple[int, int, int]:
        """(M, K, O) of its im2col GEMM: (N·H·W, C·9) x (C·9, O)."""
        return self.batch * self.size * self.size, 9 * self.channels, self.channels


#: Layer cases; "tiny" is for smoke tests.
LAYERS = {
    "tiny": Layer(1, 8, 8),
    "L1": Layer(1, 64, 64),
    "L2": Layer(4, 128, 64),
    "L3": Layer(1, 256, 32),
}


@dataclasses.dataclass(frozen=True)
class CoreLayer:
    """A DCNv3 or DCNv4 core (``version``; 3x3, stride 1, pad 1) on channels-last (1, size, size, channels)
    inputs, ``group`` groups."""

    version: int
    channels: int
    size: int
    group: int


#: The cores at InternImage-T's first two stage shapes; the "tiny" ones are for smoke tests.
CORES = {
    "dcnv3-tiny": CoreLayer(3, 8, 8, 2),
    "dcnv3-56": CoreLayer(3, 64, 56, 4),
    "dcnv3-28": CoreLayer(3, 128, 28, 8),
    "dcnv4-tiny": CoreLayer(4, 8, 8, 2),
    "dcnv4-56": CoreLayer(4, 64, 56, 4),
    "dcnv4-28": CoreLayer(4, 128, 28, 8),
}
#: The DCNv2 ResNet-50 of examples/dcn_resnet50.py (13 deformable layers), exported with a dynamic batch,
#: height and width.
NETWORK = "resnet50"
#: BiRefNet (swin_v1_t backbone, 20 deformable layers in its decoder), built from a checkout of its
#: repository, exported as its tutorial does: TorchScript, opset 17, static shapes.
BIREFNET = "birefnet"
#: One bottleneck of that ResNet-50 (its ``layer2[0]``: a stride-2 DCNv2 with its offset and mask predictor,
#: between 1x1 convolutions) on a (1, 256, 56, 56) input, exported as the network is.
BLOCK = "block"
BLOCK_INPUT = (1, 256, 56, 56)
CASES = (*LAYERS, BLOCK, NETWORK, BIREFNET, *CORES)
DEFAULT_CASES = ("L1", "L2", "L3", NETWORK, BIREFNET, "dcnv3-56", "dcnv3-28", "dcnv4-56", "dcnv4-28")

#: How a path exports (see :mod:`dcn_onnxscript.tools.bench.exports`): torch.onnx's dynamo exporter with
#: dcn_onnxscript's translation; the TorchScript exporter (``dynamo=False``) with dcn_onnxscript's symbolic;
#: the native export with every ``DeformConv`` replaced by a call of the standalone function; torch's own
#: dynamo translation (native ``DeformConv``); the TorchScript exporter with a symbolic writing native
#: ``DeformConv``; deform_conv2d_onnx_exporter 1.2.0's TorchScript symbolic; its fork's dynamo translation.
DYNAMO, TORCHSCRIPT, FUNCTION, NATIVE, NATIVE_TORCHSCRIPT, DCOE, FORK = (
    "dynamo", "torchscript", "function", "native", "native-torchscript", "deform_conv2d_onnx_exporter",
    "dcoe-fork")
#: How the cores' baseline exports: InternImage's pure-PyTorch DCNv3 core through plain ``torch.onnx``.
PLAIN = "plain"
#: A row that is another row's file after ``rewrite`` (``bench --from-seed``).
REWRITE = "rewrite"
#: deform_conv2d_onnx_exporter 1.2.0 with BiRefNet's tutorial's patch: a size TorchScript does not know is
#: read from the input's strides.
DCOE_PATCHED = "dcoe-patched"
#: The peers, whose translations need known sizes: their exports are static in every case.
STATIC_EXPORTERS = (DCOE, DCOE_PATCHED, FORK)


@dataclasses.dataclass(frozen=True)
class ExportPath:
    """One row of the table: ``name``, exported by ``exporter`` (one of the kinds above) at ``opset`` (None:
    the exporter's default; for the function, its own) with dcn_onnxscript's lowering ``impl`` (None: the
    registered default, "auto"); ``about`` says it in words. A :data:`REWRITE` row is row ``source``'s file
    rewritten with ``impl`` at ``opset`` (None: the file's own)."""

    name: str
    exporter: str
    opset: Optional[int]
    impl: Optional[str]
    about: str
    source: Optional[str] = None


#: The first opset with a native ``DeformConv``.
NATIVE_OPSET = 19
#: deform_conv2d_onnx_exporter's documented opset, and its fork's.
DCOE_OPSET, FORK_OPSET = 12, 18
#: The opset of BiRefNet's tutorial export.
BIREFNET_OPSET = 17

PATHS = {
    path.name: path
    for path in (
        *(ExportPath(name, DYNAMO, None, name, f"torch.onnx.export(dynamo=True), torch's default opset, "
                     f"impl={name!r}") for name in LOWERINGS),
        ExportPath("dynamo-17", DYNAMO, 17, None, "torch.onnx.export(dynamo=True, opset_version=17), default impl"),
        ExportPath("torchscript-17", TORCHSCRIPT, 17, None, "torch.onnx.export(dynamo=False, opset_version=17)"),
        ExportPath("torchscript-13", TORCHSCRIPT, 13, None, "torch.onnx.export(dynamo=False, opset_version=13)"),
        ExportPath(NATIVE, NATIVE, NATIVE_OPSET, None, "torch.onnx.export(dynamo=True, opset_version=19) with "
                   "torch's own translation: one DeformConv node per layer"),
        ExportPath(FUNCTION, FUNCTION, None, None,
                   "the native export with each DeformConv node replaced by a call of the standalone "
                   "dcn_onnxscript.deform_conv2d (its FunctionProto added; weights stay initializers), "
                   "converted to the functions' opset"),
        ExportPath(DCOE, DCOE, DCOE_OPSET, None, "deform_conv2d_onnx_exporter 1.2.0, "
                   "torch.onnx.export(dynamo=False, opset_version=12), static shapes"),
        ExportPath(FORK, FORK, FORK_OPSET, None, "github nusu-github/deform_conv2d_onnx_exporter (a maintained "
                   "fork, from --fork PATH): torch.onnx.export(dynamo=True, opset_version=18), static shapes"),
    )
}
#: BiRefNet's rows, all through its tutorial's exporter (TorchScript): opset 17 through dcn_onnxscript and
#: through deform_conv2d_onnx_exporter 1.2.0 (as installed and as the tutorial patches it), and native
#: DeformConv for the ratios (torch's dynamo export of
#: BiRefNet is slower and may fail).
BIREFNET_PATHS = {
    path.name: path
    for path in (
        PATHS[f"torchscript-{BIREFNET_OPSET}"],
        ExportPath(DCOE, DCOE, BIREFNET_OPSET, None, "deform_conv2d_onnx_exporter 1.2.0 as installed: "
                   "torch.onnx.export(dynamo=False, opset_version=17), static shapes"),
        ExportPath(DCOE_PATCHED, DCOE_PATCHED, BIREFNET_OPSET, None, "BiRefNet's tutorial's export: "
                   "deform_conv2d_onnx_exporter 1.2.0 with the tutorial's patch (a size TorchScript does not know "
                   "read from the input's strides), torch.onnx.export(dynamo=False, opset_version=17), static "
                   "shapes, the tutorial's input and output names"),
        ExportPath(NATIVE, NATIVE_TORCHSCRIPT, NATIVE_OPSET, None, "torch.onnx.export(dynamo=False, "
                   "opset_version=19) with a symbolic writing one DeformConv node per layer"),
    )
}

#: The first opset at which ``F.grid_sample`` exports: the plain DCNv3 core's.
PLAIN_OPSET = 16
#: The cores' rows: the package's ops through both lowerings, and for DCNv3 the plain export.
CORE_PATHS = {
    path.name: path
    for path in (
        *(ExportPath(name, DYNAMO, None, name, f"torch.onnx.export(dynamo=True) of the package's op, torch's "
                     f"default opset, impl={name!r}") for name in LOWERINGS),
        ExportPath(PLAIN, PLAIN, PLAIN_OPSET, None, "InternImage's pure-PyTorch DCNv3 core (dcnv3_core_pytorch, "
                   "one GridSample over every point) through torch.onnx.export(dynamo=False, opset_version=16)"),
    )
}
#: The other runtimes the cores run on.
CORE_RUNTIMES = ("openvino",)

#: Kinds of rows besides the export paths: torchvision eager, and the floors of a layer (its GEMM alone,
#: its sampling alone), in round order.
EAGER, GEMM, SAMPLING = "eager", "gemm floor", "sampling floor"
FLOORS = (GEMM, SAMPLING)

#: The other runtimes of the network case, and the paths they run.
OPENVINO, TRACT = "openvino", "tract"
RUNTIMES = (OPENVINO, TRACT)
RUNTIME_PATHS = (*LOWERINGS, DCOE, FORK)
#: What ``--skip`` can leave out.
SKIPPABLE = (*dict.fromkeys([*PATHS, *BIREFNET_PATHS, *CORE_PATHS]), *RUNTIMES)


#: How ``--from-seed`` rewrites each peer's file: (row suffix, impl, opset, in words).
REWRITES = (
    ("rewritten", None, None, "rewrite {source}'s file (default impl, at the file's opset)"),
    ("rewritten native", NATIVE, NATIVE_OPSET, f"rewrite --impl native --opset {NATIVE_OPSET} of {{source}}'s file"),
)


def rewrites_of(source: ExportPath) -> list[ExportPath]:
    """The rows ``--from-seed`` adds after a peer's row ``source``."""
    return [ExportPath(f"{source.name} {suffix}", REWRITE, opset, impl, about.format(source=source.name),
                       source.name) for suffix, impl, opset, about in REWRITES]


def paths_of(case: str, from_seed: bool = False) -> dict[str, ExportPath]:
    """The export paths (rows) of case ``case``; ``from_seed``: only the peers', each followed by its
    rewrites, and native (a DCNv3/DCNv4 core has no peers' rows: its own; BiRefNet's are its tutorial's file
    and its rewrites alone, the file its users have)."""
    if case in CORES:
        return {name: path for name, path in CORE_PATHS.items() if name != PLAIN or CORES[case].version == 3}
    paths = BIREFNET_PATHS if case == BIREFNET else PATHS
    if not from_seed:
        return paths
    if case == BIREFNET:
        tutorial = paths[DCOE_PATCHED]
        return {path.name: path for path in (tutorial, *rewrites_of(tutorial))}
    rows = [row for path in paths.values() if path.exporter in STATIC_EXPORTERS for row in (path, *rewrites_of(path))]
    return {path.name: path for path in (*rows, paths[NATIVE])}
