"""Export-time argument checks (dcn_onnxscript.validation): each error names the argument, the dimension
and the expected value."""

from __future__ import annotations

import pytest

from dcn_onnxscript import check_deform_conv2d_args

GOOD = dict(
    input_shape=(2, 8, 10, 10),
    weight_shape=(6, 4, 3, 3),
    offset_shape=(2, 36, 10, 10),
    mask_shape=(2, 18, 10, 10),
    bias_shape=(6,),
    padding=(1, 1),
    groups=2,
    offset_groups=2,
)


def test_consistent_arguments_pass() -> None:
    check_deform_conv2d_args(**GOOD)


def test_dynamic_dimensions_are_not_checked() -> None:
    check_deform_conv2d_args(**dict(GOOD, input_shape=(None, 8, None, None), offset_shape=(None, 36, None, None),
                                    mask_shape=(None, 18, None, None)))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(input_shape=(2, 8, 10)), "input must have rank 4, (N, C, H, W); got shape (2, 8, 10)"),
        (dict(weight_shape=(6, 4, 3)), "weight must have rank 4"),
        (dict(offset_shape=(2, 36, 10)), "offset must have rank 4"),
        (dict(bias_shape=(6, 1)), "bias must have rank 1, (O,)"),
        (dict(input_shape=(2, 9, 10, 10), weight_shape=(6, 3, 3, 3), groups=3),
         "input dimension 1 (channels) = 9 must be divisible by offset_groups = 2"),
        (dict(input_shape=(2, 6, 10, 10), weight_shape=(6, 1, 3, 3), groups=4),
         "input dimension 1 (channels) = 6 must be divisible by groups = 4"),
        (dict(weight_shape=(6, 8, 3, 3)), "weight dimension 1 must be 4 (input channels / groups), got 8"),
        (dict(weight_shape=(5, 4, 3, 3), bias_shape=(5,)),
         "weight dimension 0 (out channels) = 5 must be divisible by groups = 2"),
        (dict(offset_shape=(2, 18, 10, 10)), "offset dimension 1 must be 36 (2*offset_groups*kH*kW), got 18"),
        (dict(mask_shape=(2, 9, 10, 10)), "mask dimension 1 must be 18 (offset_groups*kH*kW), got 9"),
        (dict(offset_shape=(3, 36, 10, 10)), "offset dimension 0 must be 2 (the input's batch size), got 3"),
        (dict(offset_shape=(2, 36, 8, 10)), "offset dimension 2 must be 10 (the output height), got 8"),
        (dict(mask_shape=(2, 18, 10, 9)), "mask dimension 3 must be 10 (the output width), got 9"),
        (dict(bias_shape=(5,)), "bias dimension 0 must be 6 (the weight's out channels), got 5"),
        (dict(stride=(0, 1)), "stride must be two positive integers (h, w), got (0, 1)"),
        (dict(dilation=(1,)), "dilation must be two positive integers (h, w), got (1,)"),
        (dict(padding=(-1, 0)), "padding must be non-negative, got (-1, 0)"),
        (dict(offset_groups=0), "offset_groups must be a positive integer, got 0"),
        (dict(input_shape=(2, 8, 1, 1), padding=(0, 0), offset_shape=None, mask_shape=None),
         "the output would be empty"),
    ],
)
def test_inconsistent_arguments_name_argument_dimension_and_expected_value(change, message) -> None:
    with pytest.raises(ValueError) as info:
        check_deform_conv2d_args(**dict(GOOD, **change))
    assert message in str(info.value)
