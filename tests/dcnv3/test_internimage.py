"""``portable_cores``: InternImage's DCNv3 and FlashInternImage's DCNv4 modules (as defined in
:mod:`internimage_blocks`) run and export through this package's ops, their state_dict untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from core_reference import core_reference
from internimage_blocks import DCNv3, DCNv4
from test_core_export import export_module

import dcn_onnxscript.ops  # noqa: F401
from dcn_onnxscript.lowering.dcnv3 import Core
from dcn_onnxscript.ops.internimage import portable_cores
from helpers import assert_close
from runtimes import run_onnxruntime


class _V4Image(torch.nn.Module):
    """A DCNv4 block on an (N, H, W, C) image (its own forward takes (N, H·W, C) and the shape)."""

    def __init__(self, block: DCNv4, size) -> None:
        super().__init__()
        self.block, self.size = block, size

    def forward(self, image):
        N, H, W, C = image.shape
        return self.block(image.reshape(N, H * W, C), self.size).reshape(N, H, W, C)


def _blocks():
    torch.manual_seed(0)
    v3 = DCNv3(channels=16, group=4, offset_scale=0.5)
    v3_rc = DCNv3(channels=8, group=2, remove_center=True, pytorch_core=True)
    v4 = _V4Image(DCNv4(channels=32, group=2, remove_center=True), (6, 5))
    for block in (v3, v3_rc, v4):
        for p in block.parameters():  # upstream zeroes the offset linears at init: random ones move the samples
            torch.nn.init.normal_(p, std=0.3)
    return {"dcnv3": (v3, (2, 6, 5, 16)), "dcnv3_pytorch_core_remove_center": (v3_rc, (1, 5, 4, 8)),
            "dcnv4_remove_center": (v4, (2, 6, 5, 32))}


BLOCKS = _blocks()


def _core(block) -> Core:
    b = getattr(block, "block", block)
    return Core((b.kernel_size,) * 2, (b.stride,) * 2, (b.pad,) * 2, (b.dilation,) * 2, b.group, b.group_channels,
                b.offset_scale, bool(b.remove_center), version=3 if isinstance(b, DCNv3) else 4)


@pytest.mark.parametrize("name", BLOCKS)
def test_blocks_run_the_core_of_the_reference(name):
    block, shape = BLOCKS[name]
    image = torch.randn(shape)
    with torch.no_grad(), portable_cores(block):
        actual = block(image).numpy()
        if isinstance(block, DCNv3):
            core_in = block.core_inputs(image)
            out = block.output_proj
        else:
            N, H, W, C = shape
            core_in = block.block.core_inputs(image.reshape(N, H * W, C), (H, W))
            out = block.block.output_proj
        sampled = core_reference(_core(block), *(t.numpy() for t in core_in))
        expected = out(torch.from_numpy(sampled).float()).numpy()
    assert_close(actual, expected.astype(np.float64), rtol=1e-5)


EXPORTS = [("dynamo", 12), ("torchscript", 17), ("dynamo", 18)]
#: Each block through one exporter and opset by default, each exporter twice; all of them in the slow run.
COVERING = [("dcnv3", *EXPORTS[0]), ("dcnv3_pytorch_core_remove_center", *EXPORTS[1]),
            ("dcnv4_remove_center", *EXPORTS[2]), ("dcnv4_remove_center", *EXPORTS[1])]
EVERY = [(name, *e) for name in BLOCKS for e in EXPORTS if (name, *e) not in COVERING]


@pytest.mark.parametrize("name, exporter, opset", COVERING)
def test_blocks_export_to_standard_onnx_and_match_eager(name, exporter, opset):
    _export_and_compare(name, exporter, opset)


@pytest.mark.slow
@pytest.mark.parametrize("name, exporter, opset", EVERY)
def test_blocks_export_to_standard_onnx_and_match_eager_in_every_combination(name, exporter, opset):
    _export_and_compare(name, exporter, opset)


def _export_and_compare(name, exporter, opset):
    block, shape = BLOCKS[name]
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with portable_cores(block):
        model = export_module(block, exporter, opset, False, [image])
        with torch.no_grad():
            expected = block(torch.from_numpy(image)).numpy()
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert_close(run_onnxruntime(model, [image]), expected.astype(np.float64), rtol=1e-4)
    after = block.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_core_names_are_restored_on_exit():
    block, shape = BLOCKS["dcnv3"]
    with portable_cores(block):
        block(torch.randn(shape))
    with pytest.raises(RuntimeError, match="CUDA extension"):
        block(torch.randn(shape))


def test_a_model_without_the_modules_is_a_value_error():
    with pytest.raises(ValueError, match="DCNv3Function"):
        with portable_cores(torch.nn.Linear(2, 2)):
            pass
