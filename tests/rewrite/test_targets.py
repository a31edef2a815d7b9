"""Tests of :mod:`dcn_onnxscript.rewrite.targets`: the ncnn patterns on random layers of every opset that has
``GridSample``, written by the lowering and by both exporters, checked and run on onnxruntime against the
model they came from; the command line's ``--for``. ncnn itself runs in ``.ci/deploy`` (the matrix's
``ncnn`` runtime applies the same rewrite before pnnx)."""

from __future__ import annotations

import argparse
import dataclasses
import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from core_models import core_model
from core_reference import generated_cases

import dcn_onnxscript  # noqa: F401  (registers the translation)
from dcn_onnxscript.__main__ import main
from dcn_onnxscript.lowering.dcnv3_grid_sample import parts
from dcn_onnxscript.rewrite import targets
from helpers import (
    Case,
    DeformConvLayer,
    assert_close,
    lowering_model,
    make_inputs,
    random_case,
    sweep_layer,
)
from runtimes import run_onnxruntime

#: Non-finite and huge offsets on which the guard and its ``Clip`` agree (NaN is where they differ).
FAR_OFFSETS = [np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38, 1e4, -1e4]


def _op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _far_offsets(offset: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``offset`` with about 20 % of its values infinite or far outside the image."""
    chosen = rng.random(offset.shape) < 0.2
    return np.where(chosen, rng.choice(FAR_OFFSETS, size=offset.shape), offset).astype(offset.dtype)


@pytest.mark.parametrize("seed", range(8))
def test_ncnn_writes_the_guard_as_clip_and_computes_the_same(seed: int):
    """On a random layer at a random opset from 16 (static or dynamic sizes), ``--for ncnn`` replaces the
    one guard by one ``Clip`` and gives onnxruntime's result of the model it came from, bit for bit, with
    infinite and far offsets mixed in."""
    rng = np.random.default_rng(seed)
    case, opset = random_case(rng), int(rng.integers(16, 24))
    arrays = case.arrays(rng)
    layer, static = sweep_layer(case, static=bool(seed % 2)), None
    if seed % 2:  # static sizes, as the exporters fill them in from static shapes
        static = {name: list(value.shape) for name, value in arrays.items()}
    original = lowering_model("grid_sample", layer, opset=opset, static_shapes=static, constants={"W": arrays["W"]})
    model = ir.from_proto(original)
    assert targets.for_target(model, "ncnn") == 1
    written = _op_types(model)
    assert not {"Less", "Abs"} & set(written)
    assert written.count("Where") == [n.op_type for n in original.graph.node].count("Where") - 1
    assert written.count("Clip") == 1
    if static:  # what ncnn gets: no select left (a dynamic layer's output positions pick rows or columns)
        assert "Where" not in written
    rewritten = ir.to_proto(model)
    onnx.checker.check_model(rewritten, full_check=True)
    arrays["offset"] = _far_offsets(arrays["offset"], rng)
    names = [i.name for i in original.graph.input]
    feeds = [arrays[name] for name in names]
    np.testing.assert_array_equal(run_onnxruntime(rewritten, feeds), run_onnxruntime(original, feeds))


@pytest.mark.parametrize("seed", range(6))
def test_ncnn_writes_the_cores_runs_one_point_per_grid_sample(seed: int):
    """A random DCNv3 or DCNv4 core (static sizes, batch 1 as ncnn runs) lowered by grid_sample at a random opset
    from 16 samples its points in runs: ``--for ncnn`` writes one ``GridSample`` per point of every chunk of groups,
    with no ``ReduceSum`` left (ncnn fails to extract the runs), and onnxruntime's result stays that of the model it
    came from, with infinite and far offsets mixed in."""
    rng = np.random.default_rng(seed)
    version = 3 + seed % 2
    case = dataclasses.replace(generated_cases(2, version=version, seed=seed)[1], batch=1)
    original = core_model(case, "grid_sample", int(rng.integers(16, 24)))
    runs = [n.op_type for n in original.graph.node].count("GridSample")
    model = ir.from_proto(original)
    assert targets.runs_as_points(model) == runs
    targets.for_target(model, "ncnn")
    written = _op_types(model)
    chunks, _ = parts(case.core)
    assert written.count("GridSample") == len(chunks) * case.core.points and "ReduceSum" not in written
    rewritten = ir.to_proto(model)
    onnx.checker.check_model(rewritten, full_check=True)
    inputs = case.inputs(seed=seed)
    inputs[1] = _far_offsets(inputs[1], rng)
    if version == 4:  # offsets only, not DCNv4's masks
        masks = np.arange(inputs[1].shape[-1]) % (3 * case.core.points) >= 2 * case.core.points
        inputs[1][..., masks] = case.inputs(seed=seed)[1][..., masks]
    assert_close(run_onnxruntime(rewritten, inputs), run_onnxruntime(original, inputs), rtol=1e-6)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_ncnn_finds_the_guard_in_both_exporters_models(dynamo: bool):
    """Each exporter writes the guard's constant its own way (TorchScript: one ``Constant`` per use): one
    guard per layer is found either way."""
    case = Case(offset_groups=2)
    module = DeformConvLayer(case).eval()
    inputs = tuple(torch.from_numpy(a) for a in make_inputs(case))
    buffer = io.BytesIO()
    torch.onnx.export(module, inputs, buffer, dynamo=dynamo, opset_version=17, external_data=False)
    model = ir.from_proto(onnx.load_from_string(buffer.getvalue()))
    assert targets.for_target(model, "ncnn") == 1
    assert "Where" not in _op_types(model)


def _constant_gathers(model: onnx.ModelProto) -> list[str]:
    """The output of every ``Gather`` at constant indices."""
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    return [n.output[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] in constants]


@pytest.mark.parametrize("seed", range(4))
def test_ncnn_writes_constant_gathers_as_split_and_concat(seed: int):
    """pnnx writes a ``Gather`` at constant indices (the DCNv3/DCNv4 cores' channel picks, the gather
    lowering's corner picks) as something ncnn cannot run: ``--for ncnn`` writes each one (along an axis of
    static size: pnnx fixes the sizes) as a ``Split`` and a ``Concat`` and gives onnxruntime's result of the
    model it came from, bit for bit; the gather lowering's comparisons (its index arithmetic, not the guard)
    stay. A random static layer at a random opset."""
    rng = np.random.default_rng(seed)
    case, opset = random_case(rng), int(rng.integers(12, 24))
    arrays = case.arrays(rng)
    static = {name: list(value.shape) for name, value in arrays.items()}
    layer = sweep_layer(case, static=True)
    original = lowering_model("gather", layer, opset=opset, static_shapes=static, constants={"W": arrays["W"]})
    picks = _constant_gathers(original)
    model = ir.from_proto(original)
    assert targets.for_target(model, "ncnn") == len(picks) > 0
    rewritten = ir.to_proto(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert not _constant_gathers(rewritten)
    for op_type in ("Greater", "Where", "Equal"):
        assert _op_types(model).count(op_type) == [n.op_type for n in original.graph.node].count(op_type)
    feeds = [arrays[i.name] for i in original.graph.input]
    np.testing.assert_array_equal(run_onnxruntime(rewritten, feeds), run_onnxruntime(original, feeds))


def test_unknown_target_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown target 'tensorrt'; choose from ncnn"):
        targets.for_target(ir.from_proto(lowering_model("grid_sample", sweep_layer(random_case(
            np.random.default_rng(0))))), "tensorrt")


def test_command_line_for_ncnn(tmp_path, capsys):
    """``rewrite IN OUT --for ncnn`` on an exported model says what it wrote, and the file holds the Clip."""
    case = Case()
    inputs = tuple(torch.from_numpy(a) for a in make_inputs(case))
    torch.onnx.export(DeformConvLayer(case).eval(), inputs, tmp_path / "layer.onnx", dynamo=False,
                      opset_version=17)
    assert main(["rewrite", str(tmp_path / "layer.onnx"), str(tmp_path / "ncnn.onnx"), "--for", "ncnn"]) == 0
    assert "1 pattern(s) written for ncnn" in capsys.readouterr().out
    assert "Clip" in {node.op_type for node in onnx.load(tmp_path / "ncnn.onnx").graph.node}


@pytest.mark.parametrize("seed", range(4))
def test_opencv4_writes_static_grid_samples_as_gathers_and_computes_the_same(seed: int):
    """On a random static layer at a random opset from 16, ``--for opencv4`` leaves no ``GridSample`` and
    matches onnxruntime's result of the model it came from, with hostile offsets (NaN, ±Inf, far) mixed in."""
    rng = np.random.default_rng(seed)
    case, opset = random_case(rng), int(rng.integers(16, 24))
    arrays = case.arrays(rng)
    static = {name: list(value.shape) for name, value in arrays.items()}
    layer = sweep_layer(case, static=True)
    original = lowering_model("grid_sample", layer, opset=opset, static_shapes=static, constants={"W": arrays["W"]})
    model = ir.from_proto(original)
    samplers = [node.op_type for node in original.graph.node].count("GridSample")
    assert targets.for_target(model, "opencv4") == samplers > 0
    rewritten = ir.to_proto(model)
    assert "GridSample" not in {node.op_type for node in rewritten.graph.node}
    onnx.checker.check_model(rewritten, full_check=True)
    arrays["offset"] = _far_offsets(arrays["offset"], rng)
    arrays["offset"].flat[::7] = np.nan
    feeds = [arrays[i.name] for i in original.graph.input]
    expected = run_onnxruntime(original, feeds)
    np.testing.assert_allclose(run_onnxruntime(rewritten, feeds), expected, rtol=1e-5,
                               atol=1e-5 * max(1.0, float(np.abs(expected).max())))



def _tables_read_at_computed_indices(model: onnx.ModelProto) -> list[str]:
    """The data input of every ``Gather`` whose indices are computed in the graph, once per such node."""
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    return [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] not in constants]


@pytest.mark.parametrize("seed", range(6))
def test_rknn_gathers_each_table_once_and_computes_the_same(seed: int):
    """On a random gather-lowering layer at a random opset, static or dynamic (which rknn-toolkit2 builds at the
    sizes it is loaded with), ``--for rknn`` leaves one ``Gather`` at computed indices per tensor it reads
    (rknn-toolkit2 merges any two, keeping one's indices), merges away all the others, writes the integer
    clamps as ``Max``/``Min`` (its build crashes on INT32 ``Greater``) and the sum over taps as ``Concat`` +
    ``ReduceSum`` (a chain of ``Add`` nodes fails its constant folding at few positions), and matches
    onnxruntime's result of the model it came from (the sum in another order), with hostile offsets (NaN, ±Inf,
    far) mixed in; a dynamic layer at its own size and at a larger one."""
    rng = np.random.default_rng(seed)
    case, opset = random_case(rng), int(rng.integers(12, 24))
    arrays = case.arrays(rng)
    layer, static, sizes = sweep_layer(case, static=bool(seed % 2)), None, [case]
    if seed % 2:  # static sizes, as the exporters fill them in from static shapes
        static = {name: list(value.shape) for name, value in arrays.items()}
    else:
        sizes.append(dataclasses.replace(case, height=case.height + 3, width=case.width + 2))
    original = lowering_model("gather", layer, opset=opset, static_shapes=static, constants={"W": arrays["W"]})
    tables = _tables_read_at_computed_indices(original)
    model = ir.from_proto(original)
    merged, clamps = len(tables) - len(set(tables)), 2
    sums = int(len(tables) >= 3)  # the taps' products: one sum per conv group when there are 3 or more
    assert targets.for_target(model, "rknn") >= merged + clamps + sums and merged > 0
    rewritten = ir.to_proto(model)
    left = _tables_read_at_computed_indices(rewritten)
    assert len(left) == len(set(left)) == len(set(tables))
    written = [n.op_type for n in rewritten.graph.node]
    assert written.count("Max") == written.count("Min") == 1
    assert written.count("Greater") == 1  # the float cut of far offsets
    assert written.count("ReduceSum") - [n.op_type for n in original.graph.node].count("ReduceSum") >= sums
    onnx.checker.check_model(rewritten, full_check=True)
    for sized in sizes:
        arrays = dict(sized.arrays(rng), W=arrays["W"])
        arrays["offset"] = _far_offsets(arrays["offset"], rng)
        arrays["offset"].flat[::7] = np.nan
        feeds = [arrays[i.name] for i in original.graph.input]
        expected = run_onnxruntime(original, feeds)
        np.testing.assert_allclose(run_onnxruntime(rewritten, feeds), expected, rtol=1e-5,
                                   atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_command_line_offers_every_target():
    """``--for`` writes its choices out (its ``--help`` imports no onnx_ir): they are :data:`targets.TARGETS`."""
    from dcn_onnxscript.rewrite import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "target"]
    assert tuple(action.choices) == targets.TARGETS
