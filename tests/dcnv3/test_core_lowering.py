"""The cores' lowering (:mod:`dcn_onnxscript.lowering.dcnv3`) written through an onnx_ir tape, run on
onnxruntime against the numpy reference: both lowerings, opsets from 12, static and dynamic sizes, float16,
float32 and float64, hostile offsets."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from core_models import core_model
from core_reference import CoreCase, core_reference, generated_cases

from dcn_onnxscript.lowering import dcnv3 as lowering
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.lowering.dcnv3_grid_sample import RUN_POINTS, parts
from helpers import HOSTILE, assert_close
from runtimes import run_onnxruntime

#: (lowering, opset): each lowering at its lowest opset and at one where the ops it writes change form.
VARIANTS = [("gather", 12), ("grid_sample", 16), ("gather", 18), ("grid_sample", 20), ("auto", 15)]
#: dtype -> rtol against the float64 reference (float16 outputs are rounded to float16).
DTYPES = {np.float32: 1e-4, np.float64: 1e-10, np.float16: 5e-3}


def _run_and_compare(case: CoreCase, impl: str, opset: int, dtype, static: bool, inputs=None) -> None:
    model = core_model(case, impl, opset, dtype, static)
    onnx.checker.check_model(model, full_check=True)
    inputs = inputs if inputs is not None else case.inputs(seed=5, dtype=dtype)
    actual = run_onnxruntime(model, inputs)
    assert actual.dtype == dtype
    assert_close(actual, core_reference(case.core, *inputs), rtol=DTYPES[dtype])


def _covering(cases: list[CoreCase]) -> list[tuple]:
    """Each case with one variant, dtype and static/dynamic, cycling through them so that every pair of
    variant and dtype and of variant and static/dynamic occurs (float64 only where "gather" computes it)."""
    combos = [(v, d, s) for v, d, s in itertools.product(VARIANTS, DTYPES, (True, False))
              if d is not np.float64 or v[0] == "gather"]
    return [(case, *combos[i % len(combos)]) for i, case in enumerate(cases)]


CASES = _covering(generated_cases(12, version=3, seed=11) + generated_cases(12, version=4, seed=12))
SLOW_CASES = _covering(generated_cases(80, version=3, seed=111) + generated_cases(80, version=4, seed=112))


def _id(param) -> str:
    case, (impl, opset), dtype, static = param
    return f"{case}-{impl}{opset}-{np.dtype(dtype).name}-{'static' if static else 'dynamic'}"


@pytest.mark.parametrize("param", CASES, ids=_id)
def test_lowering_matches_the_reference(param):
    case, (impl, opset), dtype, static = param
    _run_and_compare(case, impl, opset, dtype, static)


@pytest.mark.slow
@pytest.mark.parametrize("param", SLOW_CASES, ids=_id)
def test_lowering_matches_the_reference_on_the_full_matrix(param):
    case, (impl, opset), dtype, static = param
    _run_and_compare(case, impl, opset, dtype, static)


@pytest.mark.parametrize("impl, opset", [("gather", 12), ("grid_sample", 16)])
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
@pytest.mark.parametrize("version", [3, 4])
def test_hostile_offsets_contribute_zero_and_read_nothing_out_of_bounds(impl, opset, static, version):
    case = CoreCase(Core((3, 3), (2, 1), (1, 1), (1, 2), 2, 3, offset_scale=2.0, version=version), size=(6, 5),
                    batch=2)
    inputs = case.inputs(seed=2)
    offset, rng = inputs[1], np.random.default_rng(version)
    at = rng.random(offset.shape) < 0.4
    if version == 4:  # offsets only, not DCNv4's masks
        P, channel = case.core.points, np.arange(offset.shape[-1])
        at &= channel % (3 * P) < 2 * P
    offset[at] = rng.choice(HOSTILE, int(at.sum())).astype(np.float32)
    _run_and_compare(case, impl, opset, np.float32, static, inputs)


def test_remove_center_gives_the_centre_tap_a_zero_weight():
    core = Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 2, remove_center=True)
    weight = lowering.identity_weight(core)
    assert weight.shape == (4, 2, 3, 3)
    assert not weight[:, :, 1, 1].any()
    # points run column-major over the kernel, the centre skipped (DCNv3's and DCNv4's kernels)
    assert lowering.tap_points(core) == [0, 3, 5, 1, None, 6, 2, 4, 7]


@pytest.mark.parametrize("case", generated_cases(8, version=3, seed=21) + generated_cases(8, version=4, seed=22),
                         ids=str)
def test_grid_sample_reads_the_cores_layouts_as_they_are(case: CoreCase):
    """A static core lowered by grid_sample reads its offsets and masks where they lie: no ``Gather`` of channels,
    one ``Transpose`` each for the input, the grid, the masks and the output, and one ``GridSample`` per chunk of
    groups and run of points (:func:`parts`)."""
    ops = [node.op_type for node in core_model(case, "grid_sample", 18).graph.node]
    assert "Gather" not in ops and ops.count("Transpose") == 4
    chunks, runs = parts(case.core)
    assert ops.count("GridSample") == len(chunks) * len(runs)
    assert ops.count("Concat") == (len(chunks) > 1)  # the chunks' sums joined; no pairwise swap of the offsets


@pytest.mark.parametrize("group", [1, 2, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("kernel, remove_center", [((3, 3), False), ((3, 3), True), ((5, 5), False), ((1, 3), False),
                                                   ((7, 7), True)])
def test_parts_sample_whole_groups_and_no_more_than_runs_of_points(group: int, kernel, remove_center: bool):
    """Every group and point is sampled once; no call holds more samples than RUN_POINTS points of every group;
    whole groups (one run of all P points) wherever one group's points fit, in as few chunks as that allows,
    else runs over every group; chunks and runs of near-equal size."""
    core = Core(kernel, (1, 1), (1, 1), (1, 1), group, 4, remove_center=remove_center)
    G, P = group, core.points
    chunks, runs = parts(core)
    assert sum(chunks) == G and sum(runs) == P
    assert max(chunks) * max(runs) <= G * RUN_POINTS
    assert (runs == [P]) == (P <= G * RUN_POINTS)
    assert max(chunks) - min(chunks) <= 1 and max(runs) - min(runs) <= 1
    if runs == [P] and len(chunks) > 1:  # one chunk fewer would hold more than the budget
        assert -(-G // (len(chunks) - 1)) * P > G * RUN_POINTS
    if runs != [P]:
        assert chunks == [G] and len(runs) == -(-P // RUN_POINTS)
