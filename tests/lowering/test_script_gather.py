"""Parity of the ONNX functions (dcn_onnxscript.functions) with torchvision's CPU deform_conv2d, run as
model-local functions on onnxruntime and onnx.reference, and eagerly through onnxscript."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnxscript import OnnxFunction

from dcn_onnxscript import function_protos, functions
from helpers import assert_close, run_onnxruntime, run_reference, torchvision_reference

SEED = 20261126
RANKS = {"X": 4, "W": 4, "offset": 4, "B": 1, "mask": 4}
CASES = 48


@dataclasses.dataclass(frozen=True)
class Case:
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


def random_case(rng: np.random.Generator) -> Case:
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
        case = Case(
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


def sweep_reference(case: Case, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """torchvision's CPU deform_conv2d in float64 for the case's arrays."""
    return torchvision_reference(
        arrays["X"], arrays["W"], arrays["offset"], arrays["mask"] if case.use_mask else None,
        arrays["B"] if case.use_bias else None, case.stride, case.padding, case.dilation,
    )


def variant(case: Case) -> tuple[OnnxFunction, tuple[str, ...]]:
    """The public function for the case's optional inputs and its input names, in order."""
    if case.use_bias and case.use_mask:
        return functions.deform_conv2d, ("X", "W", "offset", "B", "mask")
    if case.use_mask:
        return functions.deform_conv2d_no_bias, ("X", "W", "offset", "mask")
    if case.use_bias:
        return functions.deform_conv2d_no_mask, ("X", "W", "offset", "B")
    return functions.deform_conv2d_no_bias_no_mask, ("X", "W", "offset")


def attributes(case: Case) -> dict:
    return {
        "strides": list(case.stride),
        "pads": list(case.padding) * 2,
        "dilations": list(case.dilation),
        "group": case.groups,
        "offset_group": case.offset_groups,
    }


def function_model(case: Case, elem_type: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
    """A one-node model calling the case's public function, with every function it needs (callees
    first, as onnx.reference requires). All dimensions are symbolic."""
    fn, names = variant(case)
    node = onnx.helper.make_node(fn.name, list(names), ["Y"], domain=functions.DOMAIN, **attributes(case))
    inputs = [onnx.helper.make_tensor_value_info(n, elem_type, [f"{n}{i}" for i in range(RANKS[n])])
              for n in names]
    output = onnx.helper.make_tensor_value_info("Y", elem_type, ["N", "O", "Ho", "Wo"])
    graph = onnx.helper.make_graph([node], "deform_conv2d", inputs, [output])
    return onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(functions.DOMAIN, 1)],
        functions=function_protos(fn),
        ir_version=10,
    )


SWEEP = [random_case(np.random.default_rng([SEED, i])) for i in range(CASES)]


def ordered(case: Case, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``arrays`` in the order of the inputs of the case's function."""
    return [arrays[name] for name in variant(case)[1]]


@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(CASES)])
def test_matches_torchvision_on_onnxruntime_and_reference(case: Case) -> None:
    arrays = case.arrays(np.random.default_rng(SEED))
    feeds = ordered(case, arrays)
    model = function_model(case)
    onnx.checker.check_model(model, full_check=True)
    expected = sweep_reference(case, arrays)
    assert_close(run_onnxruntime(model, feeds), expected)
    assert_close(run_reference(model, feeds), expected)


def test_sweep_covers_the_issue_ranges() -> None:
    """Guards the sweep itself: the randomized cases reach every corner the foundation issue names."""
    assert {c.kernel[0] for c in SWEEP} | {c.kernel[1] for c in SWEEP} == set(range(1, 8))
    assert any(c.kernel[0] != c.kernel[1] for c in SWEEP)
    assert {s for c in SWEEP for s in c.stride} == {1, 2, 3}
    assert {p for c in SWEEP for p in c.padding} == {0, 1, 2, 3}
    assert {d for c in SWEEP for d in c.dilation} == {1, 2, 3}
    assert any(c.groups > 1 and c.offset_groups > 1 for c in SWEEP)
    assert max(c.groups for c in SWEEP) == 4 and max(c.offset_groups for c in SWEEP) == 4
    assert any(c.height == 1 for c in SWEEP) and any(c.width == 1 for c in SWEEP)
    assert any(c.batch > 1 for c in SWEEP)
    assert any(c.offset_scale >= 20 for c in SWEEP)
    assert {(c.use_mask, c.use_bias) for c in SWEEP} == {(m, b) for m in (0, 1) for b in (0, 1)}


HOSTILE = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38]


def hostile_offsets() -> tuple[Case, dict[str, np.ndarray]]:
    """A grouped DCNv2 case whose offsets are NaN, ±Inf or huge at 5 % of the entries."""
    case = Case(2, 4, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, 2, True, True, 2.0)
    rng = np.random.default_rng(SEED)
    arrays = case.arrays(np.random.default_rng(SEED))
    where = rng.random(arrays["offset"].shape) < 0.05
    arrays["offset"][where] = rng.choice(HOSTILE, size=int(where.sum()))
    return case, arrays


def far_away_offsets() -> tuple[Case, dict[str, np.ndarray]]:
    """A DCNv2 case with bias whose every sample lies 1e6 pixels away from the image."""
    case = Case(1, 2, 3, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 1.0)
    arrays = case.arrays(np.random.default_rng(SEED))
    arrays["offset"] = np.full_like(arrays["offset"], 1e6)
    return case, arrays


@pytest.mark.parametrize("run", [run_onnxruntime, run_reference], ids=["onnxruntime", "reference"])
def test_hostile_offsets_never_raise_and_match_where_torchvision_is_finite(run) -> None:
    case, arrays = hostile_offsets()
    actual = run(function_model(case), ordered(case, arrays))
    assert np.isfinite(actual).all()
    assert_close(actual, sweep_reference(case, arrays))


def test_samples_pushed_outside_the_image_contribute_zero() -> None:
    """Every sample 1e6 pixels away: the output is exactly the bias, as torchvision gives."""
    case, arrays = far_away_offsets()
    actual = run_onnxruntime(function_model(case), ordered(case, arrays))
    np.testing.assert_array_equal(actual, np.broadcast_to(arrays["B"][None, :, None, None], actual.shape))


def test_eager_onnxscript_matches_torchvision() -> None:
    case = SWEEP[0]
    arrays = case.arrays(np.random.default_rng(SEED))
    fn, _ = variant(case)
    actual = fn(*ordered(case, arrays), **attributes(case))
    assert_close(np.asarray(actual), sweep_reference(case, arrays))


def test_function_uses_only_standard_primitive_ops() -> None:
    """Every node of every function is a standard ONNX op or a call to one of our own functions."""
    fn = functions.deform_conv2d
    callees = fn.function_ir.get_called_functions().values()
    for proto in [fn.to_function_proto()] + [f.to_function_proto() for f in callees]:
        assert proto.domain == functions.DOMAIN
        for node in proto.node:
            assert node.domain in ("", functions.DOMAIN), node
            assert node.op_type != "DeformConv"
            if node.domain == "":
                assert onnx.defs.has(node.op_type), node.op_type
