"""Conversion of whole models to another ONNX opset, decided from ONNX's own operator schemas.

torch.onnx's dynamo exporter builds every model asked for at opset 18 or below at opset 18 and converts it
down with ONNX's version converter. That converter has no down-adapter for many ops whose form did not
change (``Mul`` 14 → 13, ``Relu``, ``Sigmoid``, ``BatchNormalization`` ...) and fails on reduce ops whose
axes come as an input; torch then keeps the model at 18. The rewriter's ``--opset`` meets the same
converter.

:func:`convert_version` therefore converts every node of the default domain itself wherever the schemas of
:mod:`onnx.defs` tell how:

* the op's schema at the target opset is the one the node was written for (same ``since_version``):
  nothing to do;
* its inputs, outputs and attributes are the same at the target and only the accepted types changed: the
  node stays as it is if the target accepts its types;
* its form changed in a way whose older form is known: an input that the target takes as an attribute of
  the same name (``axes``, ``split``) moves there when it is a constant; an attribute the target lacks is
  dropped when it holds the value that reproduces the older behaviour (its default, unless
  :data:`_DEFAULT_CHANGED_MEANING` names another); ``Shape``'s ``start``/``end`` become a ``Slice``;
  ``Split``'s ``num_outputs`` goes (its count of outputs says it where the axis divides evenly, else the
  parts' sizes are written out); ``Pad``'s constant ``axes`` become pads of every axis; ``Softmax``-family
  ops, which before opset 13 coerced their input to 2-D at ``axis``, run on the last axis, between two
  ``Transpose`` nodes where ``axis`` is another; ``Reshape``'s ``allowzero=1`` goes (it only differs from 0
  where a shape holds a 0, which for a tensor that is not empty is an error); a string attribute whose
  default changed names its values anew (``GridSample``-20's ``linear``/``cubic`` are 16's
  ``bilinear``/``bicubic``): the node's value becomes the older name, read from the two schemas;
* the op does not exist at the target but ONNX defines it as a function of older ops (``CastLike``,
  ``LayerNormalization``, ``HardSwish`` ...): it is replaced by that function's body, converted in turn.

Constant subexpressions are folded first (onnxscript's constant folding, as torch's optimizer does after
the conversion): torch writes e.g. a reduce's axes as a ``Reshape`` of a constant, and only a constant can
become an attribute. Where a rule needs a type or rank that is unknown, ONNX's shape inference runs first.

The nodes it converts are kept out of ``convert``'s way (under :data:`HIDDEN_DOMAIN`). A node whose form
changed in a way these rules do not know (an attribute or input with no older form) goes to ``convert``
(ONNX's converter, or torch's conversion step), which may have an adapter for it; a node whose op is
younger than the target, whose types the target does not accept, or whose meaning changed, does not: ONNX's
converter relabels some of those without changing them (it gives a ``Softmax`` over a middle axis opset 12
as it is, which then computes something else). If the model does not reach the target, :class:`ValueError`
names each op that could not be converted, the opset and why. Nodes
already in :data:`HIDDEN_DOMAIN` (the lowerings' nodes written in the target opset's form) are put into the
default domain at the end, whichever the direction.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator, Optional

import numpy as np
import onnx
import onnx.defs
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import InlinePass, ShapeInferencePass

from dcn_onnxscript.lowering import table

#: The lowest opset the lowerings are written for.
MIN_OPSET = table.MIN_OPSET
#: The opset torch.onnx's dynamo exporter builds exports at 18 or below at (it converts afterwards).
BUILD_OPSET = 18
#: Nodes of this domain are kept from ``convert`` and put into the default domain after it.
HIDDEN_DOMAIN = "dcn_onnxscript.stable"
#: (op, attribute) -> the value that is the op's behaviour before the attribute existed, where that is not
#: the attribute's default (RoiAlign-16's default is "half_pixel"; RoiAlign-10 computes "output_half_pixel").
_DEFAULT_CHANGED_MEANING = {("RoiAlign", "coordinate_transformation_mode"): "output_half_pixel"}
#: The domain of ONNX function bodies while they are inlined, and the key of a body node's ``meta`` that
#: names the op it comes from.
_EXPANDED_DOMAIN = "dcn_onnxscript.expanded"
EXPANDED_FROM = "dcn_onnxscript.expanded_from"
#: Ops whose attribute ``axis`` meant "coerce to 2-D at axis" before opset 13: the same only on the last axis.
_COERCED_TO_2D = {"Softmax", "LogSoftmax", "Hardmax"}
_COERCED_UNTIL = 13
#: How a schema's description lists a string attribute's values, the default first ("Three interpolation
#: modes: linear (default), nearest and cubic.").
_LISTED_VALUES = re.compile(r"(\w+) \(default\), (\w+) and (\w+)")

Convert = Callable[[ir.Model, int], ir.Model]


def convert_version(model: ir.Model, target: int, convert: Convert) -> ir.Model:
    """``model`` at ONNX opset ``target``: the nodes this module can convert (see the module docstring)
    converted here, the rest by ``convert(model, target)``; :class:`ValueError` naming the ops that neither
    could convert."""
    source = default_opset(model)
    problems: dict[ir.Node, Problem] = {}
    if target < source:
        problems = _convert_down(model, source, target)
    if any(not problem.adaptable for problem in problems.values()):
        raise ValueError(_failure(source, target, source, problems))
    if problems or target > source:
        model.opset_imports[HIDDEN_DOMAIN] = 1
        try:
            model = convert(model, target)
        except Exception as error:  # noqa: BLE001  (converters raise assorted types)
            if not problems:
                raise
            raise ValueError(_failure(source, target, source, problems)) from error
    else:
        _set_default_opset(model, target)
    reached = default_opset(model)
    if reached != target:
        raise ValueError(_failure(source, target, reached, problems))
    for node in _all_nodes(model):
        if node.domain == HIDDEN_DOMAIN:
            node.domain = ""
    model.opset_imports.pop(HIDDEN_DOMAIN, None)
    for function in model.functions.values():
        function.opset_imports.pop(HIDDEN_DOMAIN, None)
    return model


def default_opset(model: ir.Model) -> int:
    """The model's ONNX (default domain) opset; :class:`ValueError` when it imports none."""
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise ValueError("the model imports no ONNX opset")
    return version


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a node is not valid at the target opset; ``adaptable``: whether an adapter of ``convert`` may
    know a form for it (a changed attribute or input, not a younger op, a type or a changed meaning)."""

    reason: str
    adaptable: bool = False


def _failure(source: int, target: int, reached: int, problems: dict[ir.Node, Problem]) -> str:
    reasons = sorted({f"{node.op_type}{_origin(node)}: {problem.reason}" for node, problem in problems.items()})
    listed = "; ".join(reasons) if reasons else "ONNX's version converter failed (see its message above)"
    return f"cannot convert the model from opset {source} to {target} (it stayed at {reached}): {listed}"


def _origin(node: ir.Node) -> str:
    origin = node.meta.get(EXPANDED_FROM)
    return f" (of {origin}'s function body)" if origin else ""


def _all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    for graph in (model.graph, *model.functions.values()):
        yield from ir.traversal.RecursiveGraphIterator(graph)


def _set_default_opset(model: ir.Model, version: int) -> None:
    for owner in (model, *model.functions.values()):
        owner.opset_imports.pop("ai.onnx", None)
        owner.opset_imports[""] = version


def _convert_down(model: ir.Model, source: int, target: int) -> dict[ir.Node, Problem]:
    """Convert every default-domain node it can to ``target`` and hide it; returns the others with the
    reason. Constants are folded and the function ops expanded first, then the form changes run (they may
    add nodes), and the checks on every node after them."""
    onnxscript.optimizer.fold_constants(model)
    if any(_needs_types(node, source, target) for node in _all_nodes(model)):
        # types for the function bodies, ranks for the Softmax rule (torch's exports have them). Only then:
        # onnx_ir's pass gives some sequence values a tensor type.
        ShapeInferencePass(check_type=False, strict_mode=False)(model)
    _expand_functions(model, source, target)
    for node in list(_all_nodes(model)):
        if node.domain in ("", "ai.onnx"):
            _to_older_form(node, source, target)
    problems = {}
    for node in _all_nodes(model):
        if node.domain not in ("", "ai.onnx"):
            continue
        problem = _problem(node, source, target)
        if problem is None:
            node.domain = HIDDEN_DOMAIN
        else:
            problems[node] = problem
    return problems


def _needs_types(node: ir.Node, source: int, target: int) -> bool:
    """Whether a rule needs the types or ranks of ``node``'s inputs, and one of them is unknown."""
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type, ""):
        return False
    written, older = _schemas(node, source, target)
    reads_shape = older is not None and (
        node.op_type in _COERCED_TO_2D and older.since_version < _COERCED_UNTIL
        or node.op_type in ("Split", "Pad") and older.since_version < written.since_version)
    unknown = any(value is not None and (value.type is None or value.shape is None) for value in node.inputs)
    return (older is None or reads_shape) and unknown


def _expand_functions(model: ir.Model, source: int, target: int) -> None:
    """Replace every default-domain node whose op the target lacks, and which ONNX defines as a function,
    by the function's body (for the node's attributes and input types), inlined; each node of a body
    remembers the op in ``meta[EXPANDED_FROM]`` for the error messages."""
    for number, node in enumerate(list(_all_nodes(model))):
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type, ""):
            continue
        written, older = _schemas(node, source, target)
        body = _function_body(node, written, source) if older is None else None
        if body is None:
            continue
        op_type = node.op_type
        body.domain, body.name, body.overload = _EXPANDED_DOMAIN, f"{op_type}_{number}", ""
        model.functions[body.identifier()] = body
        model.opset_imports[_EXPANDED_DOMAIN] = 1
        node.domain, node.op_type = _EXPANDED_DOMAIN, body.name
        before = set(_all_nodes(model))
        InlinePass(criteria=lambda function: function is body)(model)
        for new in set(_all_nodes(model)) - before:
            new.meta[EXPANDED_FROM] = op_type
        model.functions.pop(body.identifier(), None)  # the pass may have dropped it, unused
    model.opset_imports.pop(_EXPANDED_DOMAIN, None)


def _function_body(node: ir.Node, schema: onnx.defs.OpSchema, source: int) -> Optional[ir.Function]:
    """The body ONNX defines for ``node`` (the newest at or below ``source``), or ``None``."""
    if schema.has_context_dependent_function:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= source]
        if not versions or any(v is not None and not isinstance(v.type, ir.TensorType) for v in node.inputs):
            return None
        types = [onnx.helper.make_tensor_type_proto(int(v.dtype), None).SerializeToString() if v is not None
                 else onnx.TypeProto().SerializeToString() for v in node.inputs]
        proto = onnx.FunctionProto()
        proto.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            max(versions), ir.serde.serialize_node(node).SerializeToString(), types))
    elif schema.has_function:
        versions = [v for v in schema.function_opset_versions if v <= source]
        if not versions:
            return None
        proto = schema.get_function_with_opset_version(max(versions))
    else:
        return None
    written_at = max(versions)
    if any(onnx.defs.get_schema(n.op_type, written_at, n.domain).since_version !=
           onnx.defs.get_schema(n.op_type, source, n.domain).since_version for n in proto.node):
        return None  # a body op changed between the body's opset and the model's
    # a body lists every output of the op (LayerNormalization's Mean, InvStdDev) but defines the node's only
    del proto.output[len(node.outputs):]
    body = ir.serde.deserialize_function(proto)
    body.opset_imports[""] = source
    return body


def _schemas(node: ir.Node, source: int, target: int) -> tuple[onnx.defs.OpSchema, Optional[onnx.defs.OpSchema]]:
    """The node's schema as written (at ``source``) and at ``target`` (``None`` where the op does not exist)."""
    written = onnx.defs.get_schema(node.op_type, source, "")
    try:
        older = onnx.defs.get_schema(node.op_type, target, "")
    except onnx.defs.SchemaError:
        older = None
    return written, older


def _to_older_form(node: ir.Node, source: int, target: int) -> None:
    """Rewrite ``node`` into its form at ``target`` where its schema changed in a known way (see the module
    docstring); what cannot be rewritten is left for :func:`_problem` to name."""
    if not onnx.defs.has(node.op_type, ""):
        return
    written, older = _schemas(node, source, target)
    if older is None or older.since_version == written.since_version:
        return
    if node.op_type == "Shape" and older.since_version < 15:
        _shape_then_slice(node)
        return
    if node.op_type == "Split" and "num_outputs" not in older.attributes and "num_outputs" in node.attributes:
        _explicit_split(node)
    if node.op_type == "Pad" and len(node.inputs) > older.max_input:
        _pads_of_every_axis(node)
    if node.op_type == "Reshape" and "allowzero" not in older.attributes:
        node.attributes.pop("allowzero", None)
    if node.op_type in _COERCED_TO_2D and older.since_version < _COERCED_UNTIL <= written.since_version:
        _on_last_axis(node)
    _inputs_to_attributes(node, written, older)
    _drop_default_attributes(node, written, older)
    _older_value_names(node, written, older)


def _shape_then_slice(node: ir.Node) -> None:
    """``Shape(x, start, end)`` (opset 15) as ``Slice(Shape(x), start, end)``."""
    start, end = node.attributes.get("start"), node.attributes.get("end")
    if start is None and end is None:
        return
    bounds = [start.as_int() if start is not None else 0, end.as_int() if end is not None else 2**62]
    shape = ir.node("Shape", [node.inputs[0]])
    constants = [ir.node("Constant", [], {"value": ir.tensor([b], dtype=ir.DataType.INT64)}) for b in bounds]
    sliced = ir.node("Slice", [shape.outputs[0], constants[0].outputs[0], constants[1].outputs[0]])
    graph = node.graph
    graph.insert_before(node, [shape, *constants, sliced])
    sliced.outputs[0].name = node.outputs[0].name
    node.outputs[0].replace_all_uses_with(sliced.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _explicit_split(node: ir.Node) -> None:
    """``Split(num_outputs=n)`` (opset 18) without the attribute: where the axis's size is known and n does
    not divide it (opset 18 makes the last part smaller), with the parts' sizes as a ``split`` input (the
    input-to-attribute rule moves it for opset 11); where the size is unknown it stays for :func:`_problem`."""
    shape = node.inputs[0].shape
    parts = node.attributes.get_int("num_outputs")
    axis = node.attributes.get_int("axis", 0)
    size = shape[axis] if shape is not None else None
    if not isinstance(size, int):
        return
    node.attributes.pop("num_outputs")
    if size % parts:
        step = -(-size // parts)
        sizes = ir.node("Constant", [], {"value": ir.tensor([step] * (parts - 1) + [size - step * (parts - 1)],
                                                              dtype=ir.DataType.INT64)})
        node.graph.insert_before(node, [sizes])
        node.resize_inputs(2)
        node.replace_input_with(1, sizes.outputs[0])


def _pads_of_every_axis(node: ir.Node) -> None:
    """``Pad(data, pads, constant_value, axes)`` (opset 18) with constant pads and axes, on data of known
    rank, as pads of every axis (zeros for the others)."""
    pads, axes = (ir.convenience.get_const_tensor(v) if v is not None else None for v in node.inputs[1:4:2])
    shape = node.inputs[0].shape
    if pads is None or axes is None or shape is None:
        return
    rank, begin_end = len(shape), pads.numpy().reshape(2, -1)
    every = np.zeros((2, rank), dtype=np.int64)
    every[:, axes.numpy() % rank] = begin_end
    full = ir.node("Constant", [], {"value": ir.tensor(every.reshape(-1))})
    node.graph.insert_before(node, [full])
    node.replace_input_with(1, full.outputs[0])
    node.resize_inputs(3)


def _on_last_axis(node: ir.Node) -> None:
    """A Softmax-family node of an input of known rank made to work on its last axis, with the axis written
    out (its default was 1 before opset 13): between ``Transpose`` nodes that swap ``axis`` and the last
    axis where ``axis`` is another. With an unknown rank it stays as it is and :func:`_problem` names it."""
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return
    rank = len(shape)
    axis = node.attributes.get_int("axis", -1) % rank
    node.attributes["axis"] = ir.AttrInt64("axis", rank - 1)
    if axis == rank - 1:
        return
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    before = ir.node("Transpose", [node.inputs[0]], {"perm": perm})
    before.outputs[0].type, before.outputs[0].shape = node.inputs[0].type, ir.Shape([shape[p] for p in perm])
    node.replace_input_with(0, before.outputs[0])
    after = ir.node("Transpose", [node.outputs[0]], {"perm": perm})
    node.graph.insert_before(node, [before])
    node.graph.insert_after(node, [after])
    result, name = node.outputs[0], node.outputs[0].name
    after.outputs[0].type, after.outputs[0].shape = result.type, result.shape
    result.replace_all_uses_with(after.outputs[0], replace_graph_outputs=True)
    after.replace_input_with(0, result)
    result.shape = before.outputs[0].shape
    result.name, after.outputs[0].name = f"{name}_last_axis", name


def _inputs_to_attributes(node: ir.Node, written: onnx.defs.OpSchema, older: onnx.defs.OpSchema) -> None:
    """Inputs that ``older`` takes as attributes of the same name (``axes``, ``split``), when constant and
    last among the given inputs."""
    older_inputs = {formal.name for formal in older.inputs}
    for index, formal in reversed(list(enumerate(written.inputs))):
        if formal.name not in older.attributes or formal.name in older_inputs or index >= len(node.inputs):
            continue
        value = node.inputs[index]
        constant = ir.convenience.get_const_tensor(value) if value is not None else None
        if value is not None and (constant is None or any(v is not None for v in node.inputs[index + 1:])):
            return
        if constant is not None:
            node.attributes[formal.name] = ir.AttrInt64s(formal.name, [int(v) for v in constant.numpy().ravel()])
        node.resize_inputs(index)


def _drop_default_attributes(node: ir.Node, written: onnx.defs.OpSchema, older: onnx.defs.OpSchema) -> None:
    """Attributes ``older`` lacks, removed where they hold ``written``'s default (the older behaviour)."""
    for name in [name for name in node.attributes if name not in older.attributes]:
        declared = written.attributes.get(name)
        if declared is None:
            continue
        if (node.op_type, name) in _DEFAULT_CHANGED_MEANING:
            older_behaviour = _DEFAULT_CHANGED_MEANING[(node.op_type, name)]
        elif declared.default_value.type:
            older_behaviour = onnx.helper.get_attribute_value(declared.default_value)
        else:
            continue
        if _same_value(node.attributes[name], older_behaviour):
            node.attributes.pop(name)


def _older_value_names(node: ir.Node, written: onnx.defs.OpSchema, older: onnx.defs.OpSchema) -> None:
    """String attributes whose values ``older`` names otherwise (:func:`_renamed_values`) set to its name."""
    for name, attribute in node.attributes.items():
        if attribute.type == ir.AttributeType.STRING and name in older.attributes:
            renamed = _renamed_values(written, older, name)
            if attribute.value in renamed:
                node.attributes[name] = ir.AttrString(name, renamed[attribute.value])


def _renamed_values(written: onnx.defs.OpSchema, older: onnx.defs.OpSchema, name: str) -> dict[str, str]:
    """The values of string attribute ``name`` that ``written`` names otherwise than ``older``: empty where the
    default stayed; else the default's two names and the other values its description lists in the same
    place (GridSample 20 -> 16: {"linear": "bilinear", "cubic": "bicubic"})."""
    new, old = written.attributes[name], older.attributes[name]
    if not (new.default_value.type == old.default_value.type == onnx.AttributeProto.STRING):
        return {}
    new_default, old_default = new.default_value.s.decode(), old.default_value.s.decode()
    if new_default == old_default:
        return {}
    renamed = {new_default: old_default}
    listed_new, listed_old = _LISTED_VALUES.search(new.description), _LISTED_VALUES.search(old.description)
    if listed_new and listed_old and listed_new.group(1) == new_default and listed_old.group(1) == old_default:
        renamed.update(zip(listed_new.groups(), listed_old.groups()))
    return renamed


def _same_value(attribute: ir.Attr, default) -> bool:
    value = attribute.value
    if isinstance(default, bytes):
        default = default.decode()
    if isinstance(value, (list, tuple)) or isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _problem(node: ir.Node, source: int, target: int) -> Optional[Problem]:
    """Why ``node`` is not valid at ``target`` as it stands, or ``None``."""
    if not onnx.defs.has(node.op_type, ""):
        return Problem(f"not an ONNX op of opset {source}")
    written, older = _schemas(node, source, target)
    if older is None:
        first = min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
                    if s.name == node.op_type and s.domain == "")
        return Problem(f"exists from opset {first} on")
    if older.since_version == written.since_version:
        return None
    if node.op_type in _COERCED_TO_2D and older.since_version < _COERCED_UNTIL <= written.since_version:
        shape = node.inputs[0].shape
        if shape is None or node.attributes.get_int("axis", -1) != len(shape) - 1:
            return Problem(f"on an input of unknown rank, its axis means another computation before opset "
                           f"{_COERCED_UNTIL}")
    for (op_type, name), older_behaviour in _DEFAULT_CHANGED_MEANING.items():
        if node.op_type == op_type and name not in older.attributes and name not in node.attributes:
            return Problem(f"its default {name} is not opset {target}'s behaviour ({older_behaviour})")
    for name in node.attributes:
        if name not in older.attributes:
            return Problem(f"attribute {name!r} = {node.attributes[name].value!r} has no opset-{target} form",
                           adaptable=True)
    for name, declared in older.attributes.items():
        if declared.required and name not in node.attributes:
            return Problem(f"attribute {name!r} is required at opset {target}", adaptable=True)
    given = len(node.inputs)
    while given and node.inputs[given - 1] is None:
        given -= 1
    if not older.min_input <= given <= older.max_input:
        return Problem(f"{given} inputs, opset {target} takes {older.min_input} to {older.max_input}",
                       adaptable=True)
    if not older.min_output <= len(node.outputs) <= older.max_output:
        return Problem(f"{len(node.outputs)} outputs, opset {target} gives {older.min_output} to "
                       f"{older.max_output}", adaptable=True)
    return _type_problem(node, older, target)


def _type_problem(node: ir.Node, schema: onnx.defs.OpSchema, target: int) -> Optional[Problem]:
    """Which input or output has a type ``schema`` does not accept (unknown types pass)."""
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for values, formals in ((node.inputs, schema.inputs), (node.outputs, schema.outputs)):
        for index, value in enumerate(values):
            type_string = _type_string(value.type) if value is not None else None
            if type_string is None or not formals:
                continue
            formal = formals[min(index, len(formals) - 1)]
            if type_string not in constraints.get(formal.type_str, {formal.type_str}):
                return Problem(f"{formal.name} of type {type_string} is not accepted at opset {target}")
    return None


def _type_string(value_type) -> Optional[str]:
    """A value's type as ONNX's schemas spell it (``tensor(float)``, ``seq(tensor(int64))``, ...)."""
    if isinstance(value_type, ir.TensorType):
        return f"tensor({value_type.dtype.name.lower()})"
    for kind, spelling in ((ir.SequenceType, "seq"), (ir.OptionalType, "optional")):
        if isinstance(value_type, kind):
            inner = _type_string(value_type.elem_type)
            return None if inner is None else f"{spelling}({inner})"
    return None
