"""ONNX models of one core call, written by :func:`dcn_onnxscript.lowering.dcnv3.lower` through an onnx_ir tape (for
the lowering's tests and the deployment targets' rewrites of it)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from core_reference import CoreCase

from dcn_onnxscript.lowering import dcnv3 as lowering
from dcn_onnxscript.lowering.emitter import TapeEmitter
from dcn_onnxscript.lowering.layer import Layer

_TYPES = {np.float16: onnx.TensorProto.FLOAT16, np.float32: onnx.TensorProto.FLOAT, np.float64: onnx.TensorProto.DOUBLE}
def core_model(case: CoreCase, impl: str, opset: int, dtype=np.float32, static: bool = True) -> onnx.ModelProto:
    """A model of one core call written by :func:`lowering.lower`: inputs input, offset[, mask]."""
    core, onnx_type = case.core, _TYPES[dtype]
    N, (H, W), (Ho, Wo) = case.batch, case.size, case.output_size
    shapes = {"input": [N, H, W, core.channels], "offset": [N, Ho, Wo, case.offset_channels()],
              "mask": [N, Ho, Wo, core.group * core.points]}
    names = ["input", "offset", "mask"][:3 if core.version == 3 else 2]
    values = {n: ir.Value(name=n, type=ir.TensorType(ir.DataType(onnx_type)),
                          shape=ir.Shape(shapes[n] if static else [f"{n}{i}" for i in range(4)])) for n in names}
    layer: Layer = lowering.layer(core, onnx_type, N if static else None, (H, W) if static else (None, None),
                                  (Ho, Wo) if static else (None, None))
    op = TapeEmitter(opset, initializers=False)
    Y = lowering.lower(op, core, layer, values["input"], values["offset"], values.get("mask", values["offset"]),
                       impl)
    Y.name, Y.type, Y.shape = "Y", ir.TensorType(ir.DataType(onnx_type)), ir.Shape(["N", "Ho", "Wo", "C"])
    graph = ir.Graph([values[n] for n in names], [Y], nodes=op.tape.nodes, opset_imports={"": opset}, name="core")
    return ir.to_proto(ir.Model(graph, ir_version=8))
