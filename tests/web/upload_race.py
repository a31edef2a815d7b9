"""The smallest graph we found that shows onnxruntime-web's JSEP upload race (1.31.1): a tensor computed on the
CPU EP is uploaded with ``queue.writeBuffer`` into a GPU buffer that onnxruntime's memory planner just took
back from a kernel whose commands are recorded but not yet submitted; when they are, that kernel overwrites
the upload. ``python upload_race.py [OUT.onnx]`` writes it (default ``upload_race.onnx``).

    y = Relu(Sigmoid(x)) + Min(x, N)        (N: x's batch size, so y = Relu(Sigmoid(x)) + Min(x, 1) for N = 1)

JSEP runs Sigmoid and Relu on the GPU, and Shape, Cast and Min on the CPU (it has no Min kernel). Sigmoid's
output ``t`` is dead once Relu is recorded, and the planner gives its buffer (x's symbolic shape, as ``m``
has) to the upload of Min's output ``m``, which ``queue.writeBuffer`` performs at once. Sigmoid then runs
into it: JSEP returns Relu(Sigmoid(x)) + Sigmoid(x). ``Shape(v)`` only orders Min after Relu (it reads no
data); the sizes are symbolic so that it is not folded away.
"""

import sys

import onnx
from onnx import TensorProto, helper


def model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["t"]),  # GPU: t's buffer written when the commands are submitted
        helper.make_node("Relu", ["t"], ["v"]),  # GPU: t's last use, its buffer is free for the planner
        helper.make_node("Shape", ["v"], ["n"], start=0, end=1),  # CPU: runs after Relu, reads no data
        helper.make_node("Cast", ["n"], ["k"], to=TensorProto.FLOAT),  # CPU
        helper.make_node("Min", ["x", "k"], ["m"]),  # CPU (no JSEP kernel): m is uploaded into t's buffer
        helper.make_node("Add", ["v", "m"], ["y"]),  # GPU: reads what Sigmoid wrote over m
    ]
    dims = ["N", "C", "H", "W"]
    graph = helper.make_graph(nodes, "upload_race", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


if __name__ == "__main__":
    onnx.checker.check_model(model(), full_check=True)
    onnx.save(model(), sys.argv[1] if len(sys.argv) > 1 else "upload_race.onnx")
