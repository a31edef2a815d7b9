"""Where does an exported DCNv2 block run? The issue's block (Conv -> offset/mask predictor -> DCNv2 -> ReLU),
exported five ways, on every runtime and tool the tests know; prints pass/fail and the first error line.

    PYTHONPATH=$PWD python benchmarks/deploy_targets.py [--only RUNTIME ...] [--exports NAME ...]

The heavy runtimes run in the venvs that ``bash .ci/deploy`` builds (tests/runtimes.py: WORKER_PYTHONS);
one that is missing is reported as such. A pass is within 1e-4 of the output scale of float64 PyTorch.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import traceback

import numpy as np
import onnx

import dcn_onnxscript  # noqa: F401  (registers the portable translation)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from blocks import EXPORTS, DeployBlock, export, reference  # noqa: E402
from runtimes import WORKER_PYTHONS, run_runtime  # noqa: E402

SHAPE = (1, 3, 24, 20)
RTOL = 1e-4


def polygraphy_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``polygraphy surgeon sanitize --fold-constants`` of ``model``."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        source, folded = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, source)
        cli = "import sys; from polygraphy.tools._main import main; sys.exit(main())"
        command = ["surgeon", "sanitize", source, "--fold-constants", "-o", folded]
        done = subprocess.run([sys.executable, "-c", cli, *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return onnx.load(folded)


def onnx_tool_profile(model: onnx.ModelProto) -> str:
    import contextlib

    import onnx_tool

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()) as printed:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        dynamic = any(d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim)
        onnx_tool.model_profile(path, dynamic_shapes={model.graph.input[0].name: SHAPE} if dynamic else None)
    total = [line for line in printed.getvalue().splitlines() if line.startswith("Total")]
    return total[0] if total else "profiled"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="runtimes or tools to run (default: all)")
    parser.add_argument("--exports", nargs="*", default=list(EXPORTS), choices=list(EXPORTS))
    args = parser.parse_args()
    block = DeployBlock().eval()
    img = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    expected = reference(block, img)
    scale = max(1.0, float(np.abs(expected).max()))
    targets = ["onnxruntime", "openvino", *WORKER_PYTHONS, "polygraphy", "onnx_tool"]
    for name in args.exports:
        model = export(block, name, SHAPE)
        print(f"== {name}: {len(model.graph.node)} nodes, ops {sorted({n.op_type for n in model.graph.node})}")
        for target in args.only or targets:
            if target in WORKER_PYTHONS and not os.path.exists(WORKER_PYTHONS[target]):
                print(f"  {target:15s} SKIP (no venv: bash .ci/deploy)")
                continue
            try:
                if target == "onnx_tool":
                    print(f"  {target:15s} pass  {onnx_tool_profile(model)}")
                    continue
                runnable = polygraphy_folded(model) if target == "polygraphy" else model
                actual = run_runtime("onnxruntime" if target == "polygraphy" else target, runnable, [img])
                error = float(np.abs(actual.astype(np.float64) - expected).max()) / scale
                print(f"  {target:15s} {'pass' if error <= RTOL else 'WRONG'}  error {error:.2g}")
            except BaseException as error:  # noqa: BLE001 (a report of every failure, whatever it is)
                text = str(error).strip() or traceback.format_exc()
                lines = [line for line in text.splitlines() if line.strip()]
                print(f"  {target:15s} FAIL  {type(error).__name__}: {' | '.join(lines[-3:])[:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
