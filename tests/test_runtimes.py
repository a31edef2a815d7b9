"""Exported portable models run on onnxruntime, OpenVINO (CPU), tract and the ONNX reference evaluator and
match torchvision (float64), at the export size, at new dynamic sizes, and under hostile offsets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dcn_onnxscript  # noqa: F401  (registers the portable translation)
from helpers import RUNNERS, Case, DeformConvLayer, assert_close, export_dynamo, layer_reference, make_inputs

CASES = {
    "dcnv2": Case(),
    "dcnv1_no_bias": Case(mask=False, bias=False),
    "strided_dilated": Case(stride=(2, 1), padding=(2, 0), dilation=(2, 1), size=(9, 8)),
    "groups": Case(in_channels=6, out_channels=4, kernel=(2, 3), groups=2, offset_groups=3, bias=False),
    "one_pixel_rows": Case(kernel=(1, 3), padding=(0, 1), size=(1, 5)),
}


@pytest.fixture(scope="module")
def exported():
    """case name -> (layer, static model, dynamic model)."""
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, case in CASES.items():
            layer = DeformConvLayer(case).eval()
            inputs = make_inputs(case)
            dynamic = export_dynamo(layer, inputs, dynamic=True) if name != "one_pixel_rows" else None
            models[name] = layer, export_dynamo(layer, inputs), dynamic
    return models


@pytest.mark.parametrize("runtime", sorted(RUNNERS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_static_export_matches_torchvision(exported, name, runtime):
    layer, model, _ = exported[name]
    inputs = make_inputs(CASES[name], seed=2)
    assert_close(RUNNERS[runtime](model, inputs), layer_reference(layer, inputs))


@pytest.mark.parametrize("runtime", sorted(RUNNERS))
@pytest.mark.parametrize("name", ["dcnv2", "strided_dilated", "groups"])
def test_dynamic_export_runs_at_new_sizes(exported, name, runtime):
    layer, _, model = exported[name]
    for batch, size in ((2, (11, 7)), (1, (4, 13))):
        inputs = make_inputs(CASES[name], seed=3, size=size, batch=batch)
        assert_close(RUNNERS[runtime](model, inputs), layer_reference(layer, inputs))


def hostile_offsets(inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Put NaN, ±Inf and ±1e30 into the offset (input 1): in both the y and x halves of some taps."""
    x, offset, *rest = (a.copy() for a in inputs)
    flat = offset.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9], dtype=offset.dtype)
    positions = np.random.default_rng(4).choice(flat.size, size=4 * specials.size, replace=False)
    flat[positions] = np.resize(specials, positions.size)
    return [x, offset, *rest]


@pytest.mark.parametrize("runtime", sorted(RUNNERS))
@pytest.mark.parametrize("name", ["dcnv2", "groups"])
def test_hostile_offsets_do_not_raise_and_match_where_finite(exported, name, runtime):
    layer, model, dynamic = exported[name]
    inputs = hostile_offsets(make_inputs(CASES[name], seed=5))
    expected = layer_reference(layer, inputs)
    for m in (model, dynamic):
        with np.errstate(all="ignore"):
            actual = RUNNERS[runtime](m, inputs)
        assert_close(actual, expected)
