"""Tests of :mod:`dcn_onnxscript.rewrite.seed`: layers exported by deform_conv2d_onnx_exporter 1.2.0 (generated
over its options, at the opsets it writes), found, proven and rewritten, then compared with torchvision on
onnxruntime; after the graph tools users run on such files; look-alikes left alone; a file that mixes a seed
layer with the rest of a model and a native DeformConv; the command line's report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pathlib
import warnings

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx_ir as ir
import pytest
import torch
import torchvision

from dcn_onnxscript.__main__ import main
from dcn_onnxscript.rewrite import RewriteError, rewrite, seed
from dcn_onnxscript.rewrite.seed import SEED_KIND
from helpers import GRAPH_TOOLS, SeedCase, assert_close
from runtimes import run_onnxruntime

if importlib.util.find_spec("deform_conv2d_onnx_exporter") is None:  # imported by peers.import_dcoe (torch >= 2.9)
    pytest.skip("deform_conv2d_onnx_exporter is not installed", allow_module_level=True)


#: The opsets the seed's TorchScript exports are written at (its floor is 12).
OPSETS = (12, 16, 17)


def generated_case(index: int) -> SeedCase:
    """A random valid layer; the opsets go round so that every slice of three covers them all."""
    rng = np.random.default_rng(index)
    while True:
        pair = lambda low, high: tuple(int(v) for v in rng.integers(low, high + 1, 2))  # noqa: E731
        case = SeedCase(kernel=pair(1, 3), stride=pair(1, 2), padding=pair(0, 2), dilation=pair(1, 2),
                        groups=int(rng.choice([1, 2])), offset_groups=int(rng.choice([1, 2])),
                        mask=bool(rng.integers(2)), bias=bool(rng.integers(2)), opset=OPSETS[index % len(OPSETS)],
                        size=pair(5, 9))
        if min(case.out_size) >= 1:
            return case


MATRIX = [generated_case(index) for index in range(24)]
#: The default run's slice: the first three (one per opset); the rest are marked slow.
DEFAULT_CASES = 3


def in_channels(case: SeedCase) -> int:
    """The fewest (but two per group) input channels that the groups and the offset groups divide."""
    return 2 * int(np.lcm(case.groups, case.offset_groups))


class SeedLayer(torch.nn.Module):
    def __init__(self, case: SeedCase) -> None:
        super().__init__()
        self.conv = torchvision.ops.DeformConv2d(in_channels(case), 2 * case.groups, case.kernel, stride=case.stride,
                                                 padding=case.padding, dilation=case.dilation,
                                                 groups=case.groups, bias=case.bias)
        self.use_mask = case.mask

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask if self.use_mask else None)


def layer_inputs(case: SeedCase, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Random x, offset (a few pixels) and mask for the case's layer."""
    g = torch.Generator().manual_seed(seed)
    taps = case.kernel[0] * case.kernel[1] * case.offset_groups
    return (torch.randn(1, in_channels(case), *case.size, generator=g),
            torch.randn(1, 2 * taps, *case.out_size, generator=g) * 2,
            torch.rand(1, taps, *case.out_size, generator=g))


def export_seed(module: torch.nn.Module, inputs: tuple, opset: int, names: list[str], use_gathernd: bool = True,
                enable_openvino_patch: bool = False, dynamic_batch: bool = False) -> onnx.ModelProto:
    """``module`` exported by deform_conv2d_onnx_exporter 1.2.0's symbolic (TorchScript, static shapes), with
    its options (GatherND or GatherElements; the extra Reshape of its OpenVINO patch); ``dynamic_batch``: the
    inputs' batch declared dynamic, through BiRefNet's tutorial's patch (the seed's sizes stay static)."""
    from dcn_onnxscript.tools.bench import exports, peers

    dcoe = peers.import_dcoe()
    symbolic = dcoe.deform_conv2d_func(use_gathernd, enable_openvino_patch)
    buffer = io.BytesIO()
    patch = peers.tutorial_patch(dcoe) if dynamic_batch else contextlib.nullcontext()
    with warnings.catch_warnings(), patch, exports._only_symbolic(symbolic, opset):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=opset, input_names=names,
                          dynamic_axes={name: {0: "batch"} for name in names} if dynamic_batch else None)
    return onnx.load_from_string(buffer.getvalue())


def seed_layer(case: SeedCase) -> tuple[SeedLayer, tuple[torch.Tensor, ...], onnx.ModelProto]:
    torch.manual_seed(sum(case.size))
    layer = SeedLayer(case).eval()
    inputs = layer_inputs(case)
    return layer, inputs, export_seed(layer, inputs, case.opset, ["x", "offset", "mask"])


def rewritten(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, object]:
    """The model rewritten, checked by onnx.checker (full check), and the rewrite's result."""
    result = rewrite(ir.from_proto(model), **options)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, result


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def feeds_for(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``values`` in the order of the model's inputs (a DCNv1 export has no mask input)."""
    return [values[value.name] for value in model.graph.input]


def assert_rewrites_and_matches(case: SeedCase, model: onnx.ModelProto, layer: SeedLayer, inputs: tuple,
                                rtol: float = 1e-4, **options) -> onnx.ModelProto:
    """One seed layer found and rewritten (``options`` of :func:`rewrite`), no GatherND left, and the result
    (on onnxruntime, random and far offsets) equal to torchvision's float64 layer."""
    proto, result = rewritten(model, **options)
    assert dict(result.counts) == {SEED_KIND: 1} and not result.notes, (result.counts, result.notes)
    assert "GatherND" not in op_types(proto)
    x, offset, mask = inputs
    far = offset.clone()
    far[..., ::3] = 50.0  # samples far outside the image contribute zero
    for offset_case in (offset, far):
        with torch.no_grad():
            expected = layer.double()(x.double(), offset_case.double(), mask.double()).numpy()
        layer.float()
        values = {"x": x.numpy(), "offset": offset_case.numpy(), "mask": mask.numpy()}
        actual = run_onnxruntime(proto, feeds_for(proto, {k: v.astype(_np_type(proto, k)) for k, v in values.items()}))
        assert_close(actual, expected, rtol=rtol)
    return proto


def _np_type(model: onnx.ModelProto, name: str):
    found = [v for v in model.graph.input if v.name == name]
    return oh.tensor_dtype_to_np_dtype(found[0].type.tensor_type.elem_type) if found else np.float32


@pytest.mark.parametrize("case", [pytest.param(case, id=str(case), marks=() if index < DEFAULT_CASES else
                                               pytest.mark.slow) for index, case in enumerate(MATRIX)])
def test_seed_layer_is_rewritten_and_matches_torchvision(case):
    """The default lowering and ``--impl native`` both equal torchvision with no GatherND left; ``native``
    writes one DeformConv in the layer's place. The default lowering's node count is not a promise: ``gather``
    (opset 12) takes a tap at a time and can have more nodes than the exporter's layer."""
    layer, inputs, model = seed_layer(case)
    assert "GatherND" in op_types(model)
    assert_rewrites_and_matches(case, model, layer, inputs)
    native = assert_rewrites_and_matches(case, model, layer, inputs, impl="native", opset=19)
    assert [n.op_type for n in native.graph.node] == ["DeformConv"]


@pytest.mark.parametrize("options", [dict(use_gathernd=False), dict(enable_openvino_patch=True), dict(batch=2),
                                     dict(dynamic_batch=True)],
                         ids=["GatherElements", "openvino-patch", "batch-2", "tutorial-patch-dynamic-batch"])
def test_seed_exporter_options_and_batches_are_rewritten(options):
    case = MATRIX[1]
    torch.manual_seed(1)
    layer = SeedLayer(case).eval()
    batch = options.pop("batch", 1)
    inputs = tuple(torch.cat([t * (1 + i) for i in range(batch)]) for t in layer_inputs(case))
    model = export_seed(layer, inputs, case.opset, ["x", "offset", "mask"], **options)
    assert_rewrites_and_matches(case, model, layer, inputs)


def test_the_layer_of_the_issue_shrinks_to_the_gather_lowering():
    """The 114-node layer of deform_conv2d_onnx_exporter (3x3, padding 1, mask, opset 12) becomes the gather
    lowering (opset 12 has no GridSample), a quarter smaller (83 nodes, constants included)."""
    case = SeedCase((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 12, (9, 8))
    layer, inputs, model = seed_layer(case)
    proto, result = rewritten(model)
    assert result.lowerings == {"gather"}
    assert len(proto.graph.node) < 0.75 * len(model.graph.node)
    converted = assert_rewrites_and_matches(case, model, layer, inputs, opset=17)  # the whole file converted
    assert "GridSample" in op_types(converted) and converted.opset_import[0].version == 17


def test_impl_native_writes_one_deform_conv_in_place_of_a_seed_layer():
    case = MATRIX[1]
    layer, inputs, model = seed_layer(case)
    with pytest.raises(RewriteError, match="needs opset >= 19"):
        rewrite(ir.from_proto(model), impl="native")
    proto = assert_rewrites_and_matches(case, model, layer, inputs, impl="native", opset=19)
    assert [n.op_type for n in proto.graph.node] == ["DeformConv"]
    assert proto.opset_import[0].version == 19


def test_a_refusal_leaves_the_seed_layers_as_they_were():
    """Nothing is half-rewritten: a lowering the opset cannot write, or another node that is refused (an
    mmdeploy node with ambiguous padding), stops the rewrite before any seed layer is replaced."""
    case = MATRIX[0]  # opset 12
    _, _, model = seed_layer(case)
    refused = onnx.ModelProto.FromString(model.SerializeToString())
    graph = refused.graph
    graph.node.append(oh.make_node("MMCVDeformConv2d", [graph.output[0].name, "mmcv_offset", "mmcv_weight"],
                                   ["mmcv_y"], domain="mmdeploy", padding=[1, 1, 2, 2]))
    for name in ("mmcv_offset", "mmcv_weight"):
        graph.input.append(oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    refused.opset_import.append(oh.make_opsetid("mmdeploy", 1))
    for source, options, message in ((model, dict(impl="grid_sample"), "needs opset >= 16"),
                                     (refused, {}, "ambiguous")):
        ir_model = ir.from_proto(source)
        with pytest.raises(RewriteError, match=message):
            rewrite(ir_model, **options)
        assert [n.op_type for n in ir_model.graph] == [n.op_type for n in source.graph.node]


def test_attributes_are_proven_among_candidates_where_the_grid_does_not_give_them():
    """Without the kernel grid's constant, every stride, padding and dilation that gives the output size is
    a candidate, and only the layer's own proves equal."""
    case = SeedCase((3, 2), (2, 1), (0, 2), (2, 1), 1, 2, True, True, 17, (11, 7))
    _, _, model = seed_layer(case)
    ir_model = ir.from_proto(model)
    prover = seed.Prover(ir_model)
    [region], notes = seed.find_regions(ir_model.graph, prover.rank)
    assert not notes
    region.p_grid = None
    options = seed.candidates(region, prover.shape(region.X, region), prover.shape(region.offset, region))
    truth = seed.Attributes(strides=case.stride, pads=(*case.padding, *case.padding), dilations=case.dilation,
                            group=1, offset_group=2)
    assert truth in options and len(options) > 1
    assert prover.prove(region, options) == truth
    wrong = [option for option in options if option != truth]
    with pytest.raises(seed.NotARegion, match=f"{len(wrong)} tried"):
        prover.prove(region, wrong)


def _look_alike(model: onnx.ModelProto) -> onnx.ModelProto:
    """The seed's layer with its kernel grid moved by a third of a pixel at one tap: the same structure,
    no deformable convolution of any attributes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    add = next(n for n in model.graph.node if n.op_type == "Add" and any("Reshape" in i for i in n.input))
    constant = next(n for n in model.graph.node if n.output[0] in add.input and n.op_type == "Constant")
    grid = onnx.numpy_helper.to_array(constant.attribute[0].t).copy()
    grid[0, 0, -1] += 1 / 3
    constant.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(grid))
    return model


def test_look_alike_region_is_left_as_it_was():
    case = SeedCase((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 16, (7, 6))
    layer, inputs, model = seed_layer(case)
    look_alike = _look_alike(model)
    proto, result = rewritten(look_alike)
    assert not result.counts
    assert len(result.notes) == 1 and result.notes[0].startswith("left as it was: seed region of GatherND")
    assert "compute what it does" in result.notes[0]
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in look_alike.graph.node]
    values = feeds_for(model, {"x": inputs[0].numpy(), "offset": inputs[1].numpy(), "mask": inputs[2].numpy()})
    np.testing.assert_array_equal(run_onnxruntime(proto, values), run_onnxruntime(look_alike, values))


class SeedBlock(torch.nn.Module):
    """conv -> offset and mask predicted from the same features -> DeformConv2d -> ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.offset = torch.nn.Conv2d(8, 18, 3, padding=1)
        self.mask = torch.nn.Conv2d(8, 9, 3, padding=1)
        self.deform = torchvision.ops.DeformConv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return torch.relu(self.deform(h, self.offset(h), torch.sigmoid(self.mask(h))))


def test_file_mixing_a_seed_layer_the_rest_of_a_model_and_a_native_deform_conv():
    """The seed's layer inside a block, followed by a native DeformConv: both are rewritten, the block's own
    convolutions stay, and the whole equals torchvision."""
    torch.manual_seed(0)
    block = SeedBlock().eval()
    x = torch.randn(1, 3, 10, 9)
    model = export_seed(block, (x,), 17, ["x"])
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    offset = (rng.standard_normal((1, 18, 10, 9)) * 2).astype(np.float32)
    graph = model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(weight, "native_weight"))
    graph.input.append(oh.make_tensor_value_info("native_offset", onnx.TensorProto.FLOAT, offset.shape))
    graph.node.append(oh.make_node("DeformConv", [graph.output[0].name, "native_weight", "native_offset"], ["y"],
                                   pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    graph.output.pop()
    graph.output.append(oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 10, 9]))
    model.opset_import[0].version = 19
    proto, result = rewritten(model)
    assert dict(result.counts) == {SEED_KIND: 1, "DeformConv": 1}, (result.counts, result.notes)
    assert not {"GatherND", "DeformConv"} & op_types(proto)
    assert sum(n.op_type == "Conv" and n.input[1].startswith(("stem", "offset", "mask")) for n in proto.graph.node) == 3
    with torch.no_grad():
        block.double()
        features = block(x.double())
        expected = torchvision.ops.deform_conv2d(features, torch.from_numpy(offset).double(),
                                                 torch.from_numpy(weight).double(), padding=1).numpy()
    assert_close(run_onnxruntime(proto, [x.numpy(), offset]), expected)


@pytest.mark.parametrize("tool", [pytest.param(name, marks=() if name == "onnxslim" else pytest.mark.slow)
                                  for name in GRAPH_TOOLS])
@pytest.mark.parametrize("index", [0, 4])
def test_seed_layer_after_graph_tools_is_rewritten(tool, index):
    case = MATRIX[index]
    layer, inputs, model = seed_layer(case)
    transform, rtol = GRAPH_TOOLS[tool]
    assert_rewrites_and_matches(case, transform(model), layer, inputs, rtol=rtol)


def shared_case(index: int) -> SeedCase:
    """A random layer whose output is the size of its input (stride 1, padding that keeps the size), with a
    mask: layers of it can read one offset and one mask and follow one another."""
    rng = np.random.default_rng(100 + index)
    kernel, dilation = (tuple(int(v) for v in rng.choice(values, 2)) for values in ([1, 3], [1, 2]))
    return SeedCase(kernel=kernel, stride=(1, 1), padding=tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation)),
                    dilation=dilation, groups=int(rng.choice([1, 2])), offset_groups=int(rng.choice([1, 2])),
                    mask=True, bias=bool(rng.integers(2)), opset=OPSETS[index % len(OPSETS)],
                    size=tuple(int(v) for v in rng.integers(5, 9, 2)))


class SharedOffsetLayers(torch.nn.Module):
    """Seed layers that read one offset and one mask: two in a chain, or three (one, then two branches on its
    output, summed)."""

    def __init__(self, case: SeedCase, layers: int) -> None:
        super().__init__()
        channels = in_channels(case)
        self.layers = torch.nn.ModuleList(
            torchvision.ops.DeformConv2d(channels, channels, case.kernel, padding=case.padding,
                                         dilation=case.dilation, groups=case.groups, bias=case.bias)
            for _ in range(layers))

    def forward(self, x, offset, mask):
        y = self.layers[0](x, offset, mask)
        if len(self.layers) == 2:
            return self.layers[1](y, offset, mask)
        return self.layers[1](y, offset, mask) + self.layers[2](y, offset, mask)


#: The graph tools that merge what the layers compute alike from the offset and the mask.
MERGING_TOOLS = ("onnxsim", "onnxslim")


@pytest.mark.parametrize("tool", [pytest.param(name, marks=() if name == "onnxsim" else pytest.mark.slow)
                                  for name in GRAPH_TOOLS])
@pytest.mark.parametrize("layers", [2, 3])
def test_layers_sharing_offset_and_mask_after_graph_tools_are_each_rewritten(tool, layers):
    """Where layers read one offset and one mask, onnxsim and onnxslim merge their index and weight nodes (and,
    for branches on one input, their Pad and samplers): each layer is still found by the Conv it feeds, proven
    and rewritten, and the whole equals torchvision."""
    case = shared_case(layers + list(GRAPH_TOOLS).index(tool))
    torch.manual_seed(layers)
    model_layers = SharedOffsetLayers(case, layers).eval()
    inputs = layer_inputs(case)
    transform, rtol = GRAPH_TOOLS[tool]
    model = transform(export_seed(model_layers, inputs, case.opset, ["x", "offset", "mask"]))
    if tool in MERGING_TOOLS:
        assert sum(n.op_type == "Floor" for n in model.graph.node) == 1, "the tool merged no index nodes"
    proto, result = rewritten(model)
    assert dict(result.counts) == {SEED_KIND: layers} and not result.notes, (result.counts, result.notes)
    assert "GatherND" not in op_types(proto)
    x, offset, mask = inputs
    with torch.no_grad():
        expected = model_layers.double()(x.double(), offset.double(), mask.double()).numpy()
    values = {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()}
    assert_close(run_onnxruntime(proto, feeds_for(proto, values)), expected, rtol=rtol)


def _run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["rewrite", *args])
    return code, out.getvalue()


def test_command_line_reports_seed_layers_and_regions_left_as_they_were(tmp_path):
    case = SeedCase((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True, 12, (9, 8))
    _, _, model = seed_layer(case)
    onnx.save(model, tmp_path / "seed.onnx")
    onnx.save(_look_alike(model), tmp_path / "look_alike.onnx")
    code, out = _run_cli(str(tmp_path / "seed.onnx"), str(tmp_path / "out.onnx"), "--check")
    assert code == 0, out
    assert f"rewrote 1 node: {SEED_KIND} x1 (impl gather, opset 12) -> " in out
    code, out = _run_cli(str(tmp_path / "seed.onnx"), str(tmp_path / "native.onnx"), "--impl", "native", "--opset",
                         "19", "--check")
    assert code == 0 and f"rewrote 1 node: {SEED_KIND} x1 (impl native, opset 19) -> " in out, out
    code, out = _run_cli(str(tmp_path / "look_alike.onnx"), str(tmp_path / "same.onnx"))
    assert code == 0, out
    first, second = out.strip().splitlines()
    assert first.startswith("left as it was: seed region of GatherND ") and second.startswith("nothing to rewrite")


@pytest.mark.parametrize("index", [0, 5])
def test_fork_layers_are_rewritten(index):
    """The fork (github nusu-github/deform_conv2d_onnx_exporter: onnxscript, dynamo, opset 18, static shapes)
    writes the same region; run where a checkout is named by DCN_BENCH_FORK, as for bench."""
    from dcn_onnxscript.tools.bench import FORK_ENV, peers

    if not os.environ.get(FORK_ENV):
        pytest.skip(f"no checkout of the fork ({FORK_ENV})")
    translation = peers.load_fork(pathlib.Path(os.environ[FORK_ENV])).create_deform_conv2d_custom_op()
    case = MATRIX[index]
    torch.manual_seed(0)
    layer = SeedLayer(case).eval()
    inputs = layer_inputs(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(layer, inputs, dynamo=True, opset_version=18, verbose=False,
                                    custom_translation_table={torch.ops.torchvision.deform_conv2d.default: translation})
    assert "GatherND" in op_types(program.model_proto)
    assert_rewrites_and_matches(case, program.model_proto, layer, inputs)


def test_seed_file_with_external_data_is_proven_and_rewritten(tmp_path):
    """The proof runs the region from memory: onnxruntime reads no external data of a model made from bytes."""
    case = MATRIX[2]
    layer, inputs, model = seed_layer(case)
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    result = rewrite(ir.load(tmp_path / "external.onnx"))
    assert dict(result.counts) == {SEED_KIND: 1} and not result.notes, result.notes
