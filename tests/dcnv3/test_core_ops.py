"""The torch ops ``dcn_onnxscript::dcnv3`` / ``::dcnv4`` in eager mode against the numpy reference, on the CPU and,
where torch sees one, on a CUDA device (marker ``cuda``: ``pytest -m cuda tests/dcnv3``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from core_reference import CoreCase, core_reference, generated_cases

import dcn_onnxscript.ops  # noqa: F401  (defines the ops)
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.tools.bench.internimage import CoreModule
from helpers import HOSTILE, assert_close

CASES = generated_cases(10, version=3, seed=3) + generated_cases(10, version=4, seed=4)
SLOW_CASES = generated_cases(60, version=3, seed=33) + generated_cases(60, version=4, seed=44)
#: The devices the eager op is checked on: the CPU, and CUDA where torch sees a device.
DEVICES = [pytest.param("cpu"),
           pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason="torch sees no CUDA device")])]


def _eager(case: CoreCase, inputs, device: str = "cpu") -> np.ndarray:
    """The op's output for ``inputs`` (numpy) computed on ``device``, back as numpy."""
    with torch.no_grad():
        output = CoreModule(case.core)(*(torch.from_numpy(a).to(device) for a in inputs))
    assert output.device.type == device
    return output.cpu().numpy()


def _check_against_reference(case: CoreCase, dtype, rtol: float, device: str = "cpu") -> None:
    inputs = case.inputs(seed=7, dtype=dtype)
    actual = _eager(case, inputs, device)
    assert actual.dtype == dtype
    assert_close(actual, core_reference(case.core, *inputs), rtol=rtol)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eager_op_matches_the_reference(case):
    _check_against_reference(case, np.float32, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=str)
def test_eager_op_matches_the_reference_on_the_full_matrix(case):
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12), (np.float16, 5e-3)):
        _check_against_reference(case, dtype, rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12), (np.float16, 5e-3)],
                         ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("case", CASES[::5], ids=str)
def test_eager_op_keeps_the_dtype_and_matches_the_reference(case, dtype, rtol, device):
    _check_against_reference(case, dtype, rtol, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("version", [3, 4])
def test_hostile_offsets_contribute_zero(version, device):
    case = CoreCase(Core((3, 3), (1, 1), (1, 1), (1, 1), 2, 3, offset_scale=0.5, version=version), size=(5, 4),
                    batch=2)
    inputs = case.inputs(seed=1)
    offset = inputs[1]
    rng = np.random.default_rng(0)
    at = rng.random(offset.shape) < 0.3
    if version == 4:  # offsets only, not DCNv4's masks: group g's first 2P of 3P channels
        P, channel = case.core.points, np.arange(offset.shape[-1])
        at &= (channel % (3 * P) < 2 * P) & (channel < 3 * P * case.core.group)
    offset[at] = rng.choice(HOSTILE, int(at.sum())).astype(np.float32)
    assert_close(_eager(case, inputs, device), core_reference(case.core, *inputs), rtol=1e-5)


def _call(version: int, input_shape, offset_shape, mask_shape=None, kernel=(3, 3), group=2, group_channels=4,
          remove_center=False):
    args = [torch.zeros(input_shape), torch.zeros(offset_shape)] + ([torch.zeros(mask_shape)] if version == 3 else [])
    attributes = (*kernel, 1, 1, 1, 1, 1, 1, group, group_channels, 1.0, remove_center)
    op = torch.ops.dcn_onnxscript.dcnv3 if version == 3 else torch.ops.dcn_onnxscript.dcnv4
    return op(*args, *attributes)


@pytest.mark.parametrize("version, shapes, kwargs, message", [
    (3, [(1, 5, 5, 7), (1, 5, 5, 36), (1, 5, 5, 18)], {}, "input dimension 3 must be 8"),
    (3, [(1, 5, 5, 8), (1, 5, 5, 35), (1, 5, 5, 18)], {}, "offset dimension 3 must be 36"),
    (3, [(1, 5, 5, 8), (1, 5, 5, 36), (1, 5, 4, 18)], {}, "mask dimension 2 must be 5"),
    (3, [(1, 5, 5, 8), (2, 5, 5, 36), (1, 5, 5, 18)], {}, "offset dimension 0 must be 1"),
    (3, [(1, 5, 5, 8), (1, 5, 5, 36), (1, 5, 5, 16)], {"remove_center": True}, "offset dimension 3 must be 32"),
    (3, [(1, 5, 5, 8), (1, 5, 5, 36), (1, 5, 5, 18)], {"kernel": (0, 3)}, "kernel must be two positive"),
    (3, [(1, 5, 5, 8), (1, 5, 5, 0), (1, 5, 5, 0)], {"kernel": (1, 1), "remove_center": True}, "remove_center"),
    (4, [(1, 5, 5, 8), (1, 5, 5, 53)], {}, "offset_mask dimension 3 must be at least 54"),
    (4, [(1, 5, 5, 8, 1), (1, 5, 5, 56)], {}, "input must have rank 4"),
])
def test_bad_arguments_raise_value_errors_naming_them(version, shapes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(version, *shapes, **kwargs)


def test_importing_the_package_defines_no_op():
    code = ("import torch, dcn_onnxscript, torch.onnx\n"
            "try:\n    torch.ops.dcn_onnxscript.dcnv3\nexcept (AttributeError, RuntimeError):\n    print('absent')\n"
            "import dcn_onnxscript.ops\nprint(torch.ops.dcn_onnxscript.dcnv4.default.name())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["absent", "dcn_onnxscript::dcnv4"]
