"""Where the lowerings' nodes go: one small interface over the two graph builders that receive them.

The lowerings (:mod:`dcn_onnxscript.lowering.gather`, :mod:`dcn_onnxscript.lowering.grid_sample`) are plain
Python that call ``op.Gather(...)``, ``op.MatMul(...)``, ... on an :class:`Emitter`. The same code therefore
writes nodes into the TorchScript exporter's graph (``g.op``) and into an ``onnx_ir`` graph that the
rewriter edits (which is also how dynamo exports are lowered, at their conversion step). Inputs may be
graph values or numpy arrays (emitted as ``Constant`` nodes); attributes are Python ints, floats, strings or
lists of them, or numpy arrays for tensor attributes.

Every op the lowerings use has one form from opset 12 to the newest (GridSample: 16; its mode names
change at 20, which :mod:`dcn_onnxscript.lowering.grid_sample` reads from ``op.opset``). Wide splits and
joins go through :meth:`Emitter.split` and :meth:`Emitter.concat`, which write trees: no node binds more
than WebGPU's :data:`STORAGE_BUFFERS`, whatever the kernel size.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx_ir as ir

#: Storage buffers a WebGPU shader stage is guaranteed (the default ``maxStorageBuffersPerShaderStage``,
#: which onnxruntime-web's JSEP asks the device for): a kernel binds one per input and output, so a node with
#: more inputs and outputs than this fails to compile, and the session returns garbage.
STORAGE_BUFFERS = 8
#: A ``Split``'s outputs beside its data and its sizes input.
SPLIT_OUTPUTS = STORAGE_BUFFERS - 2
#: A ``Concat``'s inputs beside its output.
CONCAT_INPUTS = STORAGE_BUFFERS - 1


def _runs(parts: int, fanout: int) -> list[int]:
    """How the top node of a tree of nodes of at most ``fanout`` outputs (``Split``) or inputs (``Concat``)
    groups ``parts`` parts into consecutive runs, with as few nodes in the whole tree as can be: each node adds
    fanout - 1 values, so ⌈(parts - 1) / (fanout - 1)⌉. Every run has 1 + (fanout - 1)·j parts (j = 0: a
    single part), a size whose subtree fills all its nodes; e.g. 9 parts, fanout 6 -> [6, 1, 1, 1] (two
    Splits), 49 -> [16, 11, 11, 11] (ten)."""
    if parts <= fanout:
        return [1] * parts
    step = fanout - 1  # what one more node adds
    count = (parts - 2) % step + 2  # runs of 1 + step·j parts each: count ≡ parts (mod step)
    units, larger = divmod((parts - count) // step, count)
    return [1 + step * (units + (i < larger)) for i in range(count)]


def _consecutive(items: list, lengths: list[int]) -> list[list]:
    """``items`` cut into consecutive runs of ``lengths``."""
    bounds = np.cumsum([0, *lengths])
    return [items[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


class Emitter:
    """Writes ONNX nodes of one opset; ``op.Add(a, b)`` and ``op.Gather(a, b, axis=0)`` return the output
    value, ``op.Split(x, axis=1, outputs=3)`` the list of its three outputs.

    Subclasses implement :meth:`_node` and :meth:`_constant`.
    """

    def __init__(self, opset: int) -> None:
        self.opset = opset

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, outputs=1, **attributes: self.emit(op_type, inputs, attributes, outputs)

    def emit(self, op_type: str, inputs: Sequence[Any], attributes: dict[str, Any], outputs: int = 1) -> Any:
        """One node with ``outputs`` outputs (a value, or a list of them for more than one); numpy inputs
        become constants, numpy attributes tensors."""
        inputs = [self._constant(x) if isinstance(x, np.ndarray) else x for x in inputs]
        attributes = {k: self._tensor(v) if isinstance(v, np.ndarray) else v for k, v in attributes.items()}
        return self._node(op_type, inputs, attributes, outputs)

    def constant(self, array: np.ndarray) -> Any:
        """``array`` as a value of the graph (where a numpy input would not do: a call of another builder)."""
        return self._constant(array)

    def split(self, value: Any, parts: int, size: int, axis: int) -> list:
        """``value``, of static ``size`` along ``axis``, cut into ``parts`` equal parts: a tree of ``Split``
        nodes of at most :data:`SPLIT_OUTPUTS` outputs each (WebGPU: :data:`STORAGE_BUFFERS`), every one with
        the sizes of its parts written out (an input from opset 13, an attribute before). Neither
        ``num_outputs`` (opset 18) nor the count of outputs alone: pnnx reads both as a split of unknown
        sizes and writes an ncnn ``Slice`` without slices, which crashes ncnn."""
        return self.split_sizes(value, [size // parts] * parts, axis)

    def split_sizes(self, value: Any, sizes: Sequence[int], axis: int) -> list:
        """``value`` cut into parts of static ``sizes`` along ``axis``, as :meth:`split` writes them."""
        return self._split_tree(value, list(sizes), axis)

    def _split_tree(self, value: Any, sizes: list[int], axis: int) -> list:
        """``value`` cut into parts of ``sizes`` along ``axis``: one ``Split`` into runs of consecutive parts
        (:func:`_runs`), each run cut further the same way."""
        if len(sizes) == 1:
            return [value]
        runs = _consecutive(sizes, _runs(len(sizes), SPLIT_OUTPUTS))
        heads = self._split_node(value, [sum(r) for r in runs], axis)
        return [part for head, r in zip(heads, runs) for part in self._split_tree(head, r, axis)]

    def _split_node(self, value: Any, sizes: list[int], axis: int) -> list:
        if self.opset >= 13:
            return list(self.emit("Split", [value, np.array(sizes, dtype=np.int64)], {"axis": axis}, len(sizes)))
        return list(self.emit("Split", [value], {"axis": axis, "split": sizes}, len(sizes)))

    def concat(self, values: Sequence[Any], axis: int) -> Any:
        """``values`` joined along ``axis``: a tree of ``Concat`` nodes of at most :data:`CONCAT_INPUTS`
        inputs each (WebGPU: :data:`STORAGE_BUFFERS`), runs of consecutive values joined first (:func:`_runs`)."""
        values = list(values)
        if len(values) == 1:
            return values[0]
        runs = _consecutive(values, _runs(len(values), CONCAT_INPUTS))
        return self.emit("Concat", [self.concat(run, axis) for run in runs], {"axis": axis})

    def squeeze(self, value: Any) -> Any:
        """``value`` of shape (1,) as a scalar: a ``Squeeze`` (its axes an input from opset 13, an attribute
        before), not a ``Reshape`` to (), which the OpenVINO execution provider leaves to the CPU."""
        if self.opset >= 13:
            return self.emit("Squeeze", [value, np.array([0], dtype=np.int64)], {})
        return self.emit("Squeeze", [value], {"axes": [0]})

    def known(self, value: Any) -> Optional[np.ndarray]:
        """``value``'s contents when they are known at build time (a numpy array, an initializer or a
        constant), else ``None``: steps on weights fold them instead of writing nodes."""
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, ir.Value):
            tensor = ir.convenience.get_const_tensor(value)
            return None if tensor is None else tensor.numpy()
        return None

    def _node(self, op_type: str, inputs: list, attributes: dict[str, Any], outputs: int) -> Any:
        raise NotImplementedError

    def _constant(self, array: np.ndarray) -> Any:
        raise NotImplementedError

    def _tensor(self, array: np.ndarray) -> Any:
        """A tensor attribute's value in the builder's form."""
        return ir.tensor(array)


class TapeEmitter(Emitter):
    """Writes into an ``onnx_ir`` :class:`~onnx_ir.tape.Tape`; the rewriter inserts ``tape.nodes`` and
    registers ``tape.initializers``. Constants become initializers named ``prefix``/k, or ``Constant``
    nodes with ``initializers=False`` (inside a function, which cannot hold initializers)."""

    def __init__(self, opset: int, prefix: str = "dcn", initializers: bool = True) -> None:
        super().__init__(opset)
        self.tape = ir.tape.Tape()
        self.prefix = prefix
        self.initializers = initializers

    def _node(self, op_type: str, inputs: list, attributes: dict[str, Any], outputs: int) -> Any:
        if outputs > 1:
            return self.tape.op_multi_out(op_type, inputs, attributes, num_outputs=outputs)
        return self.tape.op(op_type, inputs, attributes)

    def _constant(self, array: np.ndarray) -> ir.Value:
        if self.initializers:
            return self.tape.initializer(ir.tensor(array), name=f"{self.prefix}/c{len(self.tape.initializers)}")
        return self.tape.op("Constant", [], {"value": ir.tensor(array)})
