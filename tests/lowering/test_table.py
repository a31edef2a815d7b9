"""The table of lowerings (dcn_onnxscript.lowering.table): names, minimum opsets and their errors."""

from __future__ import annotations

import onnx.defs
import pytest

from dcn_onnxscript.lowering import table


def _first_opset(op_type: str) -> int:
    return min(s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.name == op_type and not s.domain)


def test_every_lowering_names_its_minimum_opset_as_onnx_defines_it():
    """grid_sample from GridSample's first opset; gather from the first where Min/Max take INT64 (its
    integer clamps)."""
    assert table.LOWERINGS["grid_sample"].min_opset == table.GRID_SAMPLE_OPSET == _first_opset("GridSample")
    int64 = "tensor(int64)"
    accepts = {v: int64 in onnx.defs.get_schema("Min", v).type_constraints[0].allowed_type_strs for v in (11, 12)}
    assert table.LOWERINGS["gather"].min_opset == table.MIN_OPSET == 12 and accepts == {11: False, 12: True}
    assert table.DEFAULT == table.AUTO and table.NAMES == ("auto", "gather", "grid_sample")


@pytest.mark.parametrize("opset", range(table.MIN_OPSET, 24))
def test_auto_takes_grid_sample_where_the_opset_has_it_and_gather_below(opset: int):
    expected = "grid_sample" if opset >= table.GRID_SAMPLE_OPSET else "gather"
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
