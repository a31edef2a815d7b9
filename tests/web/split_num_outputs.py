"""The smallest graph that shows onnxruntime-web's JSEP ``Split`` ignoring ``num_outputs`` (opset 18) at run time
(1.31.1): a ``Split`` given ``num_outputs`` and no sizes, of an input whose size along the split axis is
symbolic. ``python split_num_outputs.py [OUT.onnx]`` writes it (default ``split_num_outputs.onnx``).

    y0, y1 = Split(x, axis=0, num_outputs=2)        (x: a vector of symbolic length n)

JSEP's ``Split`` kernel fixes its part sizes when the session is created, from the sizes the graph declares
along the split axis; a symbolic size counts as 0 there, so both outputs are empty, without an error. The native
WebGPU EP and wasm split at run time and return the two halves. A ``Split`` whose sizes are written out (the
``split`` input), or whose input's size along the axis is static, is right on JSEP too.
"""

import sys

import onnx
from onnx import TensorProto, helper


def model() -> onnx.ModelProto:
    split = helper.make_node("Split", ["x"], ["y0", "y1"], axis=0, num_outputs=2)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [f"n_{y}"]) for y in ("y0", "y1")]
    graph = helper.make_graph([split], "split_num_outputs", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


if __name__ == "__main__":
    onnx.checker.check_model(model(), full_check=True)
    onnx.save(model(), sys.argv[1] if len(sys.argv) > 1 else "split_num_outputs.onnx")
