"""What every standalone function is written with: the domain's opset object and the type annotations."""

from __future__ import annotations

from typing import TypeVar, Union

from onnxscript import BFLOAT16, DOUBLE, FLOAT, FLOAT16, INT64
from onnxscript.values import Opset

from dcn_onnxscript.lowering.script.protos import DOMAIN, DOMAIN_VERSION

dcn = Opset(DOMAIN, DOMAIN_VERSION)

T = TypeVar("T", bound=Union[FLOAT16, FLOAT, DOUBLE, BFLOAT16])
#: A size read with ``Shape``: a 1-element INT64 tensor.
Dim = INT64[1]
#: An INT64 tensor of any shape.
Ints = INT64[...]
#: A float32 tensor of any shape. (A bare ``FLOAT`` annotation would declare a scalar.)
Floats = FLOAT[...]
