"""Tests of :mod:`dcn_onnxscript.rewrite`: ONNX's DeformConv conformance cases rewritten and run on
onnxruntime, OpenVINO and tract; random native models against onnxruntime's own DeformConv kernel; mmcv's
nodes; subgraphs, local functions, external data; the command line in real subprocesses."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime
import pytest

from dcn_onnxscript.__main__ import main
from dcn_onnxscript.rewrite import RewriteError, rewrite, rewrite_model
from helpers import assert_close
from runtimes import RUNNERS, run_onnxruntime

# --- helpers ----------------------------------------------------------------------------------------


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output (the shared runners return the first only)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _all_op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of every node: main graph, subgraphs, local functions."""
    ir_model = ir.from_proto(model)
    graphs = [ir_model.graph, *ir_model.functions.values()]
    return {node.op_type for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph)}


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(array.dtype), array.shape)


def _single_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int = 22,
                       domains: dict[str, int] | None = None) -> onnx.ModelProto:
    """``node`` as a model whose inputs are ``feeds`` and whose output is a 4-D tensor of their type."""
    elem = oh.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype)
    graph = oh.make_graph([node], "g", [_value_info(n, a) for n, a in feeds.items()],
                          [oh.make_tensor_value_info(node.output[0], elem, [None] * 4)])
    imports = [oh.make_opsetid("", opset)] + [oh.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return oh.make_model(graph, opset_imports=imports)


def _random_case(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A native DeformConv model over random attributes (asymmetric pads, groups, offset groups, optional B
    and mask given as missing or empty-name inputs, float32/float64, opset 19/22) and random inputs."""
    rng = np.random.default_rng(seed)
    while True:
        group, offset_group = int(rng.choice([1, 2, 3])), int(rng.choice([1, 2, 4]))
        channels = int(np.lcm(group, offset_group) * rng.integers(1, 3))
        out_channels = group * int(rng.integers(1, 3))
        kernel, strides, dilations = (tuple(int(v) for v in rng.integers(1, hi, 2)) for hi in (4, 3, 3))
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        size = tuple(int(v) for v in rng.integers(3, 9, 2))
        out = [(size[i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
               for i in range(2)]
        if min(out) >= 1:
            break
    dtype = np.float64 if seed % 4 == 3 else np.float32
    batch, taps = int(rng.integers(1, 3)), kernel[0] * kernel[1]
    values = {
        "X": rng.standard_normal((batch, channels, *size)),
        "W": rng.standard_normal((out_channels, channels // group, *kernel)),
        "offset": rng.standard_normal((batch, 2 * offset_group * taps, *out)) * 2,
        "B": rng.standard_normal(out_channels),
        "mask": rng.random((batch, offset_group * taps, *out)),
    }
    names = ["X", "W", "offset", "B" if rng.integers(2) else "", "mask" if rng.integers(2) else ""]
    while not names[-1]:
        names.pop()
    feeds = {n: values[n].astype(dtype) for n in names if n}
    node = oh.make_node("DeformConv", names, ["Y"], kernel_shape=kernel, strides=strides, pads=pads,
                        dilations=dilations, group=group, offset_group=offset_group)
    return _single_node_model(node, feeds, opset=19 if seed % 2 else 22), feeds


# --- ONNX's conformance cases on three runtimes -----------------------------------------------------


@pytest.fixture(scope="module")
def conformance() -> list[tuple[str, onnx.ModelProto, list[np.ndarray], np.ndarray]]:
    """ONNX's DeformConv node test cases, rewritten: (name, model, inputs, expected output)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other ops' cases overflow on purpose while being collected
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases("DeformConv")
    rewritten = []
    for case in cases:
        (inputs, outputs), = case.data_sets
        rewritten.append((case.name, rewrite_model(case.model), list(inputs), outputs[0]))
    assert len(rewritten) >= 4
    return rewritten


def test_conformance_cases_rewritten_are_valid_and_free_of_deform_conv(conformance):
    for _, model, _, _ in conformance:
        onnx.checker.check_model(model, full_check=True)
        assert "DeformConv" not in _all_op_types(model)
        assert {o.domain for o in model.opset_import} == {""}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tract"])
def test_conformance_cases_match_expected_outputs(conformance, runtime):
    for name, model, inputs, expected in conformance:
        actual = RUNNERS[runtime](model, inputs)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5, err_msg=f"{name} on {runtime}")


# --- native DeformConv before and after -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(24))
def test_random_deform_conv_matches_onnxruntime_native_kernel(seed):
    model, feeds = _random_case(seed)
    expected = run_onnxruntime(model, list(feeds.values()))
    rewritten = rewrite_model(model)
    assert "DeformConv" not in _all_op_types(rewritten)
    actual = run_onnxruntime(rewritten, list(feeds.values()))
    assert_close(actual, expected, rtol=1e-12 if expected.dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("seed", [s for s in range(24) if s % 4 != 3][::2])  # float32: onnxruntime has
def test_random_deform_conv_rewritten_with_grid_sample_matches_native_kernel(seed):  # no float64 GridSample
    model, feeds = _random_case(seed)
    expected = run_onnxruntime(model, list(feeds.values()))
    rewritten = rewrite_model(model, impl="grid_sample")
    assert "GridSample" in _all_op_types(rewritten) and "DeformConv" not in _all_op_types(rewritten)
    actual = run_onnxruntime(rewritten, list(feeds.values()))
    assert_close(actual, expected, rtol=1e-12 if expected.dtype == np.float64 else 1e-5)


def test_rewrite_leaves_the_rest_of_the_model_alone():
    model, feeds = _random_case(0)
    relu = oh.make_node("Relu", ["Y"], ["Z"], name="after")
    model.graph.node.append(relu)
    model.graph.output[0].name = "Z"
    model.graph.node[0].name = "dcn"
    oh.set_model_props(model, {"author": "test"})
    model.doc_string, model.producer_name = "a model", "hand"
    rewritten = rewrite_model(model)
    assert rewritten.metadata_props == model.metadata_props
    assert (rewritten.doc_string, rewritten.producer_name) == ("a model", "hand")
    assert rewritten.graph.node[-1] == relu
    assert [i.name for i in rewritten.graph.input] == list(feeds)
    assert [o.name for o in rewritten.graph.output] == ["Z"]
    assert rewritten.opset_import == model.opset_import
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), run_onnxruntime(model, list(feeds.values())),
                 rtol=1e-5)


def test_input_model_is_not_modified():
    model, _ = _random_case(1)
    before = model.SerializeToString()
    rewrite_model(model)
    assert model.SerializeToString() == before


def test_nodes_in_subgraphs_and_local_functions_are_rewritten():
    model, feeds = _random_case(2)
    dcn = model.graph.node[0]
    inputs = list(dcn.input)
    elem = model.graph.output[0].type.tensor_type.elem_type
    # an If whose branches each hold a DeformConv on outer-scope values
    branches = []
    for branch in ("then", "else"):
        node = oh.make_node("DeformConv", inputs, [f"Y_{branch}"], name=f"dcn_{branch}")
        node.attribute.extend(dcn.attribute)
        branches.append(oh.make_graph([node], branch, [], [oh.make_tensor_value_info(f"Y_{branch}", elem, [None] * 4)]))
    condition = oh.make_node("Constant", [], ["cond"], value=onnx.numpy_helper.from_array(np.array(True)))
    if_node = oh.make_node("If", ["cond"], ["Y_if"], then_branch=branches[0], else_branch=branches[1])
    # a model-local function holding a DeformConv, called once
    body = oh.make_node("DeformConv", [f"in{i}" if n else "" for i, n in enumerate(inputs)], ["out"])
    body.attribute.extend(dcn.attribute)
    function = oh.make_function("local", "block", [f"in{i}" for i, n in enumerate(inputs) if n], ["out"],
                                [body], [oh.make_opsetid("", model.opset_import[0].version)])
    call = oh.make_node("block", [n for n in inputs if n], ["Y_fn"], domain="local")
    model.graph.node.extend([condition, if_node, call])
    model.graph.output.extend([oh.make_tensor_value_info(n, elem, [None] * 4) for n in ("Y_if", "Y_fn")])
    model.functions.append(function)
    model.opset_import.append(oh.make_opsetid("local", 1))
    expected = _ort_outputs(model, feeds)

    result = rewrite(ir.from_proto(model))
    rewritten = ir.to_proto(result.model)
    assert result.counts == {"DeformConv": 4}
    assert "DeformConv" not in _all_op_types(rewritten)
    assert [f.name for f in rewritten.functions] == ["block"]
    onnx.checker.check_model(rewritten, full_check=True)
    for actual, reference in zip(_ort_outputs(rewritten, feeds), expected):
        assert_close(actual, reference, rtol=1e-5)


@pytest.mark.parametrize("attribute, value, message", [
    ("kernel_shape", [9, 9], "differs from the weight's kernel"),
    ("pads", [0, 0, -1, 0], "pads must be non-negative"),
    ("offset_group", 0, "offset_groups must be a positive integer"),
    ("dilations", [1, 1, 1], "only 2-D"),
])
def test_deform_conv_attributes_the_function_cannot_express_are_refused(attribute, value, message):
    model, _ = _random_case(11)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != attribute]
    del node.attribute[:]
    node.attribute.extend([*kept, oh.make_attribute(attribute, value)])
    with pytest.raises(RewriteError, match=message):
        rewrite_model(model)


def test_local_function_at_another_opset_is_rewritten_in_its_own_opset():
    model, feeds = _random_case(12)
    body = model.graph.node[0]
    own = 19 if model.opset_import[0].version == 22 else 22
    model.functions.append(oh.make_function("local", "block", list(body.input), list(body.output), [body],
                                            [oh.make_opsetid("", own)]))
    rewritten = rewrite_model(model)
    assert [o.version for o in rewritten.functions[0].opset_import if o.domain == ""] == [own]
    assert "DeformConv" not in _all_op_types(rewritten)


def test_progress_is_reported():
    messages = []
    rewrite(ir.from_proto(_random_case(3)[0]), progress=messages.append)
    assert messages == ["replaced 1/1 deformable convolutions"]


# --- mmcv / mmdeploy nodes --------------------------------------------------------------------------


def _mmcv_reference(rng, modulated: bool, bias: bool, pad=(2, 1), stride=(2, 1), dilation=(1, 2)):
    """Inputs of a grouped mmcv node (by default strided, dilated and with pad_h != pad_w) and the output
    of its native-DeformConv twin on onnxruntime."""
    group, deform_groups, kernel = 2, 2, (3, 3)
    X = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    out = [(X.shape[2 + i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2)]
    values = {
        "x": X, "w": rng.standard_normal((6, 2, *kernel)).astype(np.float32),
        "off": (rng.standard_normal((2, 2 * deform_groups * 9, *out)) * 2).astype(np.float32),
        "mask": rng.random((2, deform_groups * 9, *out)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
    }
    native = oh.make_node("DeformConv", ["x", "w", "off", "b" if bias else "", "mask" if modulated else ""],
                          ["y"], strides=stride, pads=[*pad, *pad], dilations=dilation, group=group,
                          offset_group=deform_groups)
    feeds = {k: v for k, v in values.items() if (modulated or k != "mask") and (bias or k != "b")}
    expected = run_onnxruntime(_single_node_model(native, feeds), list(feeds.values()))
    attributes = dict(stride=list(stride), dilation=list(dilation), groups=group, deform_groups=deform_groups)
    return feeds, expected, attributes, pad


@pytest.mark.parametrize("domain", ["mmcv", "mmdeploy"])
@pytest.mark.parametrize("bias", [True, False])
def test_mmcv_modulated_deform_conv_matches_deform_conv(domain, bias):
    feeds, expected, attributes, pad = _mmcv_reference(np.random.default_rng(7), modulated=True, bias=bias)
    node = oh.make_node("MMCVModulatedDeformConv2d", ["x", "off", "mask", "w"] + (["b"] if bias else []),
                        ["y"], domain=domain, padding=list(pad), **attributes)
    result = rewrite(ir.from_proto(_single_node_model(node, feeds, opset=18, domains={domain: 1})))
    assert result.summary() == f"rewrote 1 node: {domain}::MMCVModulatedDeformConv2d x1"
    rewritten = ir.to_proto(result.model)
    assert {o.domain for o in rewritten.opset_import} == {""}
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), expected, rtol=1e-5)


@pytest.mark.parametrize("style", ["mmcv", "mmdeploy"])
def test_mmcv_deform_conv_matches_deform_conv(style):
    feeds, expected, attributes, pad = _mmcv_reference(np.random.default_rng(8), modulated=False, bias=False)
    if style == "mmcv":  # mmcv's own symbolic: 2-value padding, plus bias and im2col_step
        extra = dict(padding=list(pad), bias=0, im2col_step=32)
    else:  # mmdeploy's: [pad_h, pad_h, pad_w, pad_w] ... read as [pad_h, pad_w] by its kernels
        extra = dict(padding=[pad[0], pad[1], pad[1], pad[1]])
    node = oh.make_node("MMCVDeformConv2d", ["x", "off", "w"], ["y"], domain=style, **attributes, **extra)
    rewritten = rewrite_model(_single_node_model(node, feeds, opset=19, domains={style: 1}))
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), expected, rtol=1e-5)


def test_mmcv_scalar_attributes_mean_both_axes():
    feeds, expected, attributes, _ = _mmcv_reference(np.random.default_rng(12), modulated=True, bias=True,
                                                     pad=(1, 1), stride=(2, 2), dilation=(2, 2))
    attributes.update(stride=2, dilation=2)
    node = oh.make_node("MMCVModulatedDeformConv2d", ["x", "off", "mask", "w", "b"], ["y"], domain="mmcv",
                        padding=1, **attributes)
    rewritten = rewrite_model(_single_node_model(node, feeds, opset=19, domains={"mmcv": 1}))
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), expected, rtol=1e-5)


@pytest.mark.parametrize("attributes, message", [
    (dict(padding=[2, 2, 1, 1]), "ambiguous"),
    (dict(padding=[1, 1], bias=1), "bias=1"),
    (dict(padding=[1, 1], groups=0), "groups must be a positive integer"),
    (dict(padding=[1, 1], stride=[1, 1, 1]), "only 2-D"),
])
def test_mmcv_attributes_the_function_cannot_express_are_refused(attributes, message):
    feeds, _, base, _ = _mmcv_reference(np.random.default_rng(9), modulated=False, bias=False)
    node = oh.make_node("MMCVDeformConv2d", ["x", "off", "w"], ["y"], domain="mmcv", **{**base, **attributes})
    with pytest.raises(RewriteError, match=message):
        rewrite_model(_single_node_model(node, feeds, opset=19, domains={"mmcv": 1}))


def test_opset_below_the_lowest_needs_conversion():
    feeds, expected, attributes, pad = _mmcv_reference(np.random.default_rng(10), modulated=True, bias=True)
    node = oh.make_node("MMCVModulatedDeformConv2d", ["x", "off", "mask", "w", "b"], ["y"], domain="mmcv",
                        padding=list(pad), **attributes)
    model = _single_node_model(node, feeds, opset=11, domains={"mmcv": 1})
    with pytest.raises(RewriteError, match="needs opset >= 12, got opset 11"):
        rewrite_model(model)
    rewritten = rewrite_model(model, opset=12)
    assert rewritten.opset_import[0].version == 12
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), expected, rtol=1e-5)


@pytest.mark.parametrize("opset", [12, 13, 14, 15, 16, 17])
def test_opset_conversion_down_to_every_opset_of_the_exporter(opset):
    """The rewriter reaches the exporter's opsets (12 … ) through the same opset lowering."""
    model, feeds = _random_case(4)  # opset 22
    rewritten = rewrite_model(model, opset=opset)
    assert rewritten.opset_import[0].version == opset
    onnx.checker.check_model(rewritten, full_check=True)
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), run_onnxruntime(model, list(feeds.values())),
                 rtol=1e-5)


def test_opset_conversion_below_functions_opset():
    model, feeds = _random_case(4)  # opset 22
    rewritten = rewrite_model(model, opset=16)
    assert rewritten.opset_import[0].version == 16
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), run_onnxruntime(model, list(feeds.values())),
                 rtol=1e-5)


def test_opset_conversion_that_onnx_cannot_do_is_a_clear_error():
    with pytest.raises(RewriteError, match="opset must be >= 12 for deformable convolutions, got 9"):
        rewrite_model(_random_case(4)[0], opset=9)


def test_unknown_implementation_is_refused():
    with pytest.raises(RewriteError, match="unknown implementation 'nope'; choose from auto, gather, grid_sample, "
                                           "native"):
        rewrite_model(_random_case(5)[0], impl="nope")


@pytest.mark.parametrize("opset", [11, 19])
def test_impl_native_writes_onnx_deform_conv_in_place_of_mmcv_nodes(opset):
    """From any opset the model is converted to (here 19): one DeformConv with the mmcv node's attributes."""
    feeds, expected, attributes, pad = _mmcv_reference(np.random.default_rng(13), modulated=True, bias=True)
    node = oh.make_node("MMCVModulatedDeformConv2d", ["x", "off", "mask", "w", "b"], ["y"], domain="mmcv",
                        padding=list(pad), **attributes)
    model = _single_node_model(node, feeds, opset=opset, domains={"mmcv": 1})
    if opset < 19:
        with pytest.raises(RewriteError, match="impl='native' writes ONNX DeformConv, which needs opset >= 19"):
            rewrite(ir.from_proto(model), impl="native")
    result = rewrite(ir.from_proto(model), impl="native", opset=19)
    assert result.lowerings == {"native"} and result.summary() == "rewrote 1 node: mmcv::MMCVModulatedDeformConv2d x1"
    rewritten = ir.to_proto(result.model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node] == ["DeformConv"]
    assert [(o.domain, o.version) for o in rewritten.opset_import] == [("", 19)]
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), expected, rtol=1e-6)


def test_impl_native_leaves_native_deform_conv_as_it_is():
    model, _ = _random_case(4)  # opset 22
    result = rewrite(ir.from_proto(model), impl="native")
    assert not result.counts and _all_op_types(ir.to_proto(result.model)) == {"DeformConv"}


def test_gather_refuses_an_image_of_2_to_the_31_pixels():
    """A ``DeformConv`` whose static input X holds N·H·W = 2^31 pixels is refused by the gather lowering (INT32
    rows) with a ``ValueError`` naming X and its sizes, before anything is written (no input data needed)."""
    X, Y = [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2, 1, 2**15, 2**15]) for name in ("X", "Y")]
    offset = oh.make_tensor_value_info("offset", onnx.TensorProto.FLOAT, [2, 2, 2**15, 2**15])
    weight = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "W")
    graph = oh.make_graph([oh.make_node("DeformConv", ["X", "W", "offset"], ["Y"], kernel_shape=[1, 1])], "huge",
                          [X, offset], [Y], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 19)])
    with pytest.raises(ValueError, match=r"input \(X\) of batch N=2, height H=32768, width W=32768 holds "
                                         r"N·H·W = 2147483648 pixels.*INT32"):
        rewrite_model(model, impl="gather")


# --- the command line, run for real -----------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcn_onnxscript", "rewrite", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Prepare the files and run the command-line scenarios, the subprocesses side by side (each pays the
    import of torch). Returns scenario -> (returncode, stdout, stderr), the folder, the feeds, the weights
    and the expected output."""
    folder = tmp_path_factory.mktemp("cli")
    model, feeds = _random_case(6)
    onnx.save(model, folder / "model.onnx")
    onnx.save(model, folder / "inplace.onnx")
    # W as external data
    weights = {"W": feeds.pop("W")}
    graph_inputs = [i for i in model.graph.input if i.name != "W"]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weights["W"], "W"))
    table = np.arange(1000, dtype=np.float32)  # an unused initializer, large enough to stay external
    model.graph.initializer.append(onnx.numpy_helper.from_array(table, "table"))
    onnx.save(model, folder / "external.onnx", save_as_external_data=True, location="external.weights",
              size_threshold=0)
    (folder / "not_onnx.onnx").write_text("this is not a model\n")
    model_3d, _ = _random_case(6)
    for attribute in model_3d.graph.node[0].attribute:
        if attribute.name == "strides":
            attribute.ints.append(1)
    onnx.save(model_3d, folder / "conv3d.onnx")
    runs = {
        "check": _cli(str(folder / "model.onnx"), str(folder / "out.onnx"), "--check"),
        "external": _cli(str(folder / "external.onnx"), str(folder / "external_out.onnx"), "--check",
                         "--opset", "19"),
        "not_onnx": _cli(str(folder / "not_onnx.onnx"), str(folder / "never1.onnx")),
        "conv3d": _cli(str(folder / "conv3d.onnx"), str(folder / "never2.onnx")),
        "in_place": _cli(str(folder / "inplace.onnx"), "--in-place", "--opset", "19"),
    }
    results = {}
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (process.returncode, stdout, stderr)
    # argument errors go through the same main() in this process, sparing two imports of torch
    for name, args in {"same_file": [folder / "model.onnx", folder / "model.onnx"],
                       "bad_impl": [folder / "model.onnx", folder / "never3.onnx", "--impl", "nope"]}.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["rewrite", *map(str, args)])
        results[name] = (code, stdout.getvalue(), stderr.getvalue())
    expected = _ort_outputs(onnx.load(folder / "model.onnx"), {**feeds, **weights})[0]
    return results, folder, feeds, weights, expected


def test_cli_rewrites_and_checks(cli):
    results, folder, feeds, weights, expected = cli
    code, stdout, stderr = results["check"]
    assert code == 0, stderr
    assert "check: onnx.checker (full_check) passed" in stdout
    assert "check: onnxruntime, original vs rewritten" in stdout
    assert stdout.strip().splitlines()[-1].startswith("rewrote 1 node: DeformConv x1 (impl grid_sample, opset ")
    actual = _ort_outputs(onnx.load(folder / "out.onnx"), {**feeds, **weights})[0]
    assert_close(actual, expected, rtol=1e-5)


def test_cli_keeps_external_data_external_through_an_opset_conversion(cli):
    results, folder, feeds, _, expected = cli
    code, stdout, stderr = results["external"]
    assert code == 0, stderr
    assert (folder / "external_out.onnx.data").is_file()
    bare = onnx.load(folder / "external_out.onnx", load_external_data=False)
    assert bare.opset_import[0].version == 19
    (table,) = [t for t in bare.graph.initializer if t.name == "table"]
    assert onnx.external_data_helper.uses_external_data(table)
    full = onnx.load(folder / "external_out.onnx")
    (table,) = [t for t in full.graph.initializer if t.name == "table"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(table), np.arange(1000, dtype=np.float32))
    assert_close(_ort_outputs(onnx.load(folder / "external_out.onnx"), feeds)[0], expected, rtol=1e-5)


@pytest.mark.parametrize("scenario, message, never", [
    ("not_onnx", "not an ONNX model", "never1.onnx"),
    ("conv3d", "only 2-D deformable convolution", "never2.onnx"),
    ("same_file", "is the input; pass --in-place", None),
    ("bad_impl", "unknown implementation 'nope'", "never3.onnx"),
])
def test_cli_errors_are_one_line_and_write_nothing(cli, scenario, message, never):
    results, folder, *_ = cli
    code, stdout, stderr = results[scenario]
    assert code != 0
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ") and message in stderr
    if never:
        assert not (folder / never).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert "DeformConv" in _all_op_types(onnx.load(folder / "model.onnx"))  # the input is untouched


def test_cli_in_place_overwrites_the_input(cli):
    results, folder, feeds, weights, expected = cli
    code, stdout, stderr = results["in_place"]
    assert code == 0, stderr
    rewritten = onnx.load(folder / "inplace.onnx")
    assert "DeformConv" not in _all_op_types(rewritten)
    assert rewritten.opset_import[0].version == 19
    assert_close(_ort_outputs(rewritten, {**feeds, **weights})[0], expected, rtol=1e-5)


def _main(*args) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["rewrite", *map(str, args)])
    return code, stdout.getvalue(), stderr.getvalue()


def test_cli_output_folder_that_does_not_exist_is_named_as_given(tmp_path):
    model, _ = _random_case(6)
    onnx.save(model, tmp_path / "in.onnx")
    code, _, stderr = _main(tmp_path / "in.onnx", tmp_path / "no" / "such" / "dir" / "out.onnx")
    assert code == 1
    assert stderr == f"error: {tmp_path / 'no' / 'such' / 'dir'}: no such folder (for the output " \
                     f"{tmp_path / 'no' / 'such' / 'dir' / 'out.onnx'})\n"


def test_cli_model_with_nothing_to_rewrite_says_so(tmp_path):
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), tmp_path / "relu.onnx")
    code, stdout, _ = _main(tmp_path / "relu.onnx", tmp_path / "copy.onnx")
    assert code == 0
    assert stdout.startswith(f"nothing to rewrite: {tmp_path / 'relu.onnx'} holds no DeformConv")
    assert (tmp_path / "copy.onnx").is_file()


@pytest.mark.parametrize("impl", ["gather", "grid_sample"])
def test_folded_weights_leave_no_dead_initializer_behind(impl):
    """The lowerings fold W and B into their own initializers: the replaced node's W and B go (nothing
    reads them), an initializer the model did not use before stays."""
    model, feeds = _random_case(0)
    for name in ("W", "B"):
        if name in feeds:
            model.graph.initializer.append(onnx.numpy_helper.from_array(feeds.pop(name), name))
            kept = [i for i in model.graph.input if i.name != name]
            del model.graph.input[:]
            model.graph.input.extend(kept)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unrelated"))
    rewritten = rewrite_model(model, impl=impl)
    read = {name for node in rewritten.graph.node for name in node.input}
    assert {i.name for i in rewritten.graph.initializer} - read == {"unrelated"}
    assert_close(run_onnxruntime(rewritten, list(feeds.values())), run_onnxruntime(model, list(feeds.values())),
                 rtol=1e-5)



def _unary(nodes: list) -> onnx.ModelProto:
    """x (2, 64) -> ``nodes`` -> y (float32)."""
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 64])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


#: Stand-ins for a rewritten model whose original computes |x|: each equals |x| where x > 0 and differs where
#: x < 0, by a finite value, by NaN or by +Inf.
_UNLIKE_ABS = {
    "finite": [oh.make_node("Relu", ["x"], ["y"])],
    "NaN": [oh.make_node("Sqrt", ["x"], ["r"]), oh.make_node("Mul", ["r", "r"], ["y"])],
    "Inf": [oh.make_node("Abs", ["x"], ["a"]), oh.make_node("Sign", ["x"], ["s"]), oh.make_node("Relu", ["s"], ["d"]),
            oh.make_node("Div", ["a", "d"], ["y"])],
}


@pytest.mark.parametrize("difference", list(_UNLIKE_ABS))
def test_check_fails_where_the_rewritten_output_is_not_finite_and_the_original_is(tmp_path, difference):
    """--check compares on random inputs: a rewritten output that is NaN or infinite where the original's is
    finite fails as a finite difference does (NaN is not skipped); the original against itself passes."""
    from dcn_onnxscript.rewrite.command import _check

    onnx.save(_unary([oh.make_node("Abs", ["x"], ["y"])]), tmp_path / "original.onnx")
    onnx.save(_unary(_UNLIKE_ABS[difference]), tmp_path / "rewritten.onnx")
    with pytest.raises(RewriteError, match="outputs differ"):
        _check(tmp_path / "original.onnx", tmp_path / "rewritten.onnx", tolerance=1e-4, seed=0)
    report = _check(tmp_path / "original.onnx", tmp_path / "original.onnx", tolerance=1e-4, seed=0)
    assert report[-1].startswith("check: onnxruntime, original vs rewritten")
