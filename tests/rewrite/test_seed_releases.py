"""deform_conv2d_onnx_exporter's releases 1.0.0, 1.1.0 and 1.2.0, each loaded from its tag, exporting with the
torch they were written for (torch 1.13.1: the releases read torch's scalar-type tables that torch 2 no longer
has) in a venv of its own (``tests/seed_release_worker.py``), then rewritten here (default lowering and
``--impl native --opset 19``) and run on onnxruntime against the original file and torchvision.

Generated cases: each release x every opset it writes with torch 1.13.1 (12 to 17) x mask/bias x static/dynamic
batch, each with a random stride, padding, dilation, kernel, groups and offset groups (and, from 1.1.0, GatherND
or GatherElements). Runs where ``DCN_SEED_REPO`` names a clone of github masamitsu-murase/deform_conv2d_onnx_exporter
(its tags) and ``DCN_SEED_OLD_PYTHON`` the Python of that venv; ``.ci/deploy`` sets both."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torchvision

from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.rewrite.seed import SEED_KIND
from helpers import SeedCase, assert_close
from runtimes import run_onnxruntime

pytestmark = pytest.mark.deploy

REPO_ENV, PYTHON_ENV = "DCN_SEED_REPO", "DCN_SEED_OLD_PYTHON"
#: The releases' tags, and whether the release takes the sampler option (``use_gathernd``, from 1.1.0).
RELEASES = {"v1.0.0": False, "v1.1.0": True, "v1.2.0": True}
#: The releases' floor (12: Clip of int64, GatherND's batch_dims) to torch 1.13.1's last opset.
OPSETS = range(12, 18)
_WORKER = pathlib.Path(__file__).resolve().parents[1] / "seed_release_worker.py"
_MODULE = "src/deform_conv2d_onnx_exporter.py"
#: The batch of a rewritten file that declares a dynamic batch, besides the batch of its export.
_OTHER_BATCH = 3


@dataclasses.dataclass(frozen=True)
class ReleaseCase(SeedCase):
    """One layer (:class:`SeedCase`), the release that exports it and how."""

    release: str
    dynamic: bool
    use_gathernd: bool

    @property
    def batch(self) -> int:
        """The batch of the export: 1 where it declares a dynamic batch (the tutorial's patch writes the
        batch of the export as 1 into the seed's reshapes, so that the file runs at batch 1 only), else 2."""
        return 1 if self.dynamic else 2

    @property
    def options(self) -> dict[str, bool]:
        """The keyword arguments of the release's ``register_deform_conv2d_onnx_op``."""
        return {"use_gathernd": self.use_gathernd} if RELEASES[self.release] else {}

    def __str__(self) -> str:
        sampler = "" if not RELEASES[self.release] else "-gathernd" if self.use_gathernd else "-gatherelements"
        return (f"{self.release}-opset{self.opset}-{'mask' if self.mask else 'nomask'}-"
                f"{'bias' if self.bias else 'nobias'}-{'dynamic' if self.dynamic else 'static'}{sampler}-k"
                f"{self.kernel}-s{self.stride}-p{self.padding}-d{self.dilation}-g{self.groups}-og"
                f"{self.offset_groups}").replace(" ", "").replace("(", "").replace(")", "").replace(",", "x")


def generated_case(index: int, release: str, opset: int, mask: bool, bias: bool, dynamic: bool) -> ReleaseCase:
    """The layer of one cell of the matrix: its geometry random (seeded by ``index``), with an output of at
    least one pixel."""
    rng = np.random.default_rng(index)
    while True:
        pair = lambda low, high: tuple(int(v) for v in rng.integers(low, high + 1, 2))  # noqa: E731
        case = ReleaseCase(release=release, opset=opset, mask=mask, bias=bias, dynamic=dynamic,
                           use_gathernd=bool(rng.integers(2)), kernel=pair(1, 3), stride=pair(1, 2),
                           padding=pair(0, 2), dilation=pair(1, 2), groups=int(rng.choice([1, 2])),
                           offset_groups=int(rng.choice([1, 2])), size=pair(4, 9))
        if min(case.out_size) >= 1:
            return case


MATRIX = [generated_case(index, release, opset, mask, bias, dynamic) for index, (release, opset, mask, bias, dynamic)
          in enumerate((r, o, m, b, d) for r in RELEASES for o in OPSETS for m in (False, True) for b in (False, True)
                       for d in (False, True))]


def layer_arrays(case: ReleaseCase, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The layer's weight (O, C/groups, kH, kW) and bias (O,), and random x (N, C, H, W), offset
    (N, 2·G·kH·kW, Ho, Wo) (a few pixels) and mask (N, G·kH·kW, Ho, Wo)."""
    rng = np.random.default_rng(seed)
    channels = 2 * int(np.lcm(case.groups, case.offset_groups))
    taps = case.kernel[0] * case.kernel[1] * case.offset_groups
    arrays = {"weight": rng.standard_normal((2 * case.groups, channels // case.groups, *case.kernel)),
              "x": rng.standard_normal((batch, channels, *case.size)),
              "offset": rng.standard_normal((batch, 2 * taps, *case.out_size)) * 2,
              "mask": rng.random((batch, taps, *case.out_size))}
    if case.bias:
        arrays["bias"] = rng.standard_normal(2 * case.groups)
    return {name: value.astype(np.float32) for name, value in arrays.items()}


def torchvision_output(case: ReleaseCase, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """torchvision's deform_conv2d of the layer, in float64."""
    tensor = {name: torch.from_numpy(value).double() for name, value in arrays.items()}
    return torchvision.ops.deform_conv2d(tensor["x"], tensor["offset"], tensor["weight"], tensor.get("bias"),
                                         stride=case.stride, padding=case.padding, dilation=case.dilation,
                                         mask=tensor["mask"] if case.mask else None).numpy()


def _required_path(variable: str, what: str) -> pathlib.Path:
    value = os.environ.get(variable)
    if not value or not pathlib.Path(value).exists():
        pytest.skip(f"{variable} does not name {what} (`bash .ci/deploy` sets it)")
    return pathlib.Path(value)


def _release_module(repo: pathlib.Path, tag: str, folder: pathlib.Path) -> pathlib.Path:
    """The release's module as its tag holds it, written to ``folder``."""
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{_MODULE}"], capture_output=True, text=True)
    if shown.returncode:
        pytest.skip(f"{REPO_ENV}={repo} has no {tag}:{_MODULE} ({shown.stderr.strip()})")
    path = folder / f"deform_conv2d_onnx_exporter_{tag.replace('.', '_')}.py"
    path.write_text(shown.stdout)
    return path


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> pathlib.Path:
    """Every case of :data:`MATRIX` exported by its release in the old venv, in one worker run: the folder of
    ``NAME.onnx`` (or ``NAME.error``) and ``NAME.npz`` (weights and inputs)."""
    repo = _required_path(REPO_ENV, "a clone of github masamitsu-murase/deform_conv2d_onnx_exporter")
    python = _required_path(PYTHON_ENV, "the Python of a torch 1.13.1 venv")
    folder = tmp_path_factory.mktemp("seed_releases")
    modules = {tag: str(_release_module(repo, tag, folder)) for tag in RELEASES}
    cases = []
    for case in MATRIX:
        np.savez(folder / f"{case}.npz", **layer_arrays(case, case.batch))
        cases.append(dict(name=str(case), module=modules[case.release], options=case.options, opset=case.opset,
                          dynamic=case.dynamic, mask=case.mask, stride=case.stride, padding=case.padding,
                          dilation=case.dilation, groups=case.groups))
    (folder / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([str(python), str(_WORKER), str(folder / "cases.json"), str(folder)], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, f"the worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return folder


def _exported(folder: pathlib.Path, case: ReleaseCase) -> onnx.ModelProto:
    error = folder / f"{case}.error"
    assert not error.exists(), f"{case.release} did not export: {error.read_text()}"
    return onnx.load(folder / f"{case}.onnx")


def _feeds(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays in the order of the model's inputs (a layer without mask has no mask input)."""
    return [arrays[value.name] for value in model.graph.input]


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


#: How each rewrite is asked for: the default lowering at the file's opset, and the native DeformConv.
REWRITES = {"default": {}, "native": dict(impl="native", opset=19)}


@pytest.mark.parametrize("how", list(REWRITES))
@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_release_layer_is_rewritten_and_matches(case, how, exports):
    """The layer is found and proven (one rewrite, no note), no GatherND is left (with ``native``: one
    DeformConv), and the rewrite equals the original file and torchvision on random and far offsets; where the
    file declares a dynamic batch, the rewrite runs at another batch too."""
    model = _exported(exports, case)
    assert {"GatherND", "GatherElements"} & set(_op_types(model)), "the release wrote no sampler"
    result = rewrite(ir.from_proto(model), **REWRITES[how])
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    assert dict(result.counts) == {SEED_KIND: 1} and not result.notes, (result.counts, result.notes)
    assert "GatherND" not in _op_types(proto)
    if how == "native":
        assert _op_types(proto) == ["DeformConv"] and proto.opset_import[0].version == 19
    arrays = dict(np.load(exports / f"{case}.npz"))
    far = dict(arrays, offset=arrays["offset"].copy())
    far["offset"][..., ::3] = 50.0  # samples far outside the image contribute zero
    for values in (arrays, far):
        actual = run_onnxruntime(proto, _feeds(proto, values))
        assert_close(actual, run_onnxruntime(model, _feeds(model, values)))
        assert_close(actual, torchvision_output(case, values))
    if case.dynamic:
        other = layer_arrays(case, batch=_OTHER_BATCH, seed=1) | {k: arrays[k] for k in ("weight", "bias")
                                                                   if k in arrays}
        assert_close(run_onnxruntime(proto, _feeds(proto, other)), torchvision_output(case, other))


def test_the_matrix_covers_every_release_opset_and_option():
    """The generated geometry reaches every option the releases spell differently."""
    assert {(c.release, c.opset, c.mask, c.bias, c.dynamic) for c in MATRIX} == {
        (r, o, m, b, d) for r in RELEASES for o in OPSETS for m in (0, 1) for b in (0, 1) for d in (0, 1)}
    for attribute in ("stride", "padding", "dilation", "kernel"):
        assert {v for c in MATRIX for v in getattr(c, attribute)} == ({0, 1, 2} if attribute == "padding" else
                                                                        {1, 2, 3} if attribute == "kernel" else
                                                                        {1, 2})
    assert {(c.groups, c.offset_groups) for c in MATRIX} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert {c.use_gathernd for c in MATRIX if RELEASES[c.release]} == {False, True}
