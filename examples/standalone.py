"""Using the deformable convolution without torch.onnx: eagerly on numpy arrays, inside another onnxscript
function, and as FunctionProtos added to a hand-built ONNX model. ``python examples/standalone.py`` runs
all three and checks them against each other."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper
from onnxscript import FLOAT, script
from onnxscript import opset18 as op

from dcn_onnxscript import DOMAIN, deform_conv2d, function_protos

#: Every attribute spelled out: onnx.reference.ReferenceEvaluator ignores a FunctionProto's attribute
#: defaults, so a node calling the function must set each one.
ATTRIBUTES = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, offset_group=1)


def example_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """A 3x3 DCNv2 layer on a (1, 4, 8, 8) image, padding 1: X, W, offset, B, mask as float32."""
    rng = np.random.default_rng(seed)
    return {
        "X": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "W": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
        "offset": (2 * rng.standard_normal((1, 18, 8, 8))).astype(np.float32),
        "B": rng.standard_normal(6).astype(np.float32),
        "mask": rng.uniform(0, 1, (1, 9, 8, 8)).astype(np.float32),
    }


# 1. Eager: the ONNX function called on numpy arrays (onnxscript evaluates it op by op).
def eager(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return deform_conv2d(inputs["X"], inputs["W"], inputs["offset"], inputs["B"], inputs["mask"],
                         **ATTRIBUTES)


# 2. Inside another script function, which becomes a model with to_model_proto().
@script()
def deform_block(X: FLOAT[1, 4, 8, 8], W: FLOAT[6, 4, 3, 3], offset: FLOAT[1, 18, 8, 8], B: FLOAT[6],
                 mask: FLOAT[1, 9, 8, 8]) -> FLOAT[1, 6, 8, 8]:
    return op.Relu(deform_conv2d(X, W, offset, B, mask, strides=[1, 1], pads=[1, 1, 1, 1],
                                 dilations=[1, 1], group=1, offset_group=1))


def block_model() -> onnx.ModelProto:
    # deform_conv2d is one self-contained FunctionProto, which the model carries along.
    return deform_block.to_model_proto()


# 3. The FunctionProtos added to any ONNX model: one node of domain DOMAIN calls deform_conv2d.
def hand_built_model() -> onnx.ModelProto:
    names = ["X", "W", "offset", "B", "mask"]
    shapes = {name: list(value.shape) for name, value in example_inputs().items()}
    node = helper.make_node("deform_conv2d", names, ["Y"], domain=DOMAIN, **ATTRIBUTES)
    graph = helper.make_graph(
        [node], "deform_conv2d_graph",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in names],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 6, 8, 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
        functions=function_protos(deform_conv2d),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def main() -> None:
    inputs = example_inputs()
    y_eager = eager(inputs)
    y_block = run(block_model(), inputs)
    y_model = run(hand_built_model(), inputs)
    print(f"eager output            {y_eager.shape}")
    print(f"in a script function    max |Relu(eager) - onnxruntime| = "
          f"{np.abs(np.maximum(y_eager, 0) - y_block).max():.2g}")
    print(f"FunctionProtos in model max |eager - onnxruntime| = {np.abs(y_eager - y_model).max():.2g}")


if __name__ == "__main__":
    main()
