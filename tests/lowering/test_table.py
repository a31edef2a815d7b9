"""The table of lowerings (dcn_onnxscript.lowering.table): names, minimum opsets and their errors."""

from __future__ import annotations

import pytest

from dcn_onnxscript.lowering import emitter, grid_sample, table


def test_every_lowering_names_its_minimum_opset():
    assert table.LOWERINGS["gather"].min_opset == emitter.MIN_OPSET == 12
    assert table.LOWERINGS["grid_sample"].min_opset == grid_sample.MIN_OPSET == 16
    assert table.DEFAULT == table.AUTO and table.NAMES == ("auto", "gather", "grid_sample")


@pytest.mark.parametrize("opset", range(emitter.MIN_OPSET, 24))
def test_auto_takes_grid_sample_where_the_opset_has_it_and_gather_below(opset: int):
    expected = "grid_sample" if opset >= grid_sample.MIN_OPSET else "gather"
    assert table.resolve("auto", opset) == expected
    assert table.lowering("auto", opset).name == expected
    assert table.resolve("gather", opset) == "gather"


def test_unknown_lowering_names_the_choices():
    with pytest.raises(ValueError, match=r"impl must be one of \['auto', 'gather', 'grid_sample'\], got 'bogus'"):
        table.lowering("bogus")


def test_lowering_below_its_opset_names_the_opset_and_the_way_out():
    with pytest.raises(ValueError, match=r"impl='grid_sample' needs opset >= 16, got opset 15; impl='gather'"):
        table.lowering("grid_sample", 15)
    assert table.lowering("gather", 12).name == "gather"
