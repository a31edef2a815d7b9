"""Where onnxruntime's session creation goes: seconds per graph optimization level, and at the default level
(ORT_ENABLE_ALL) without the blocked-layout (NCHWc) convolution rewrite, for the ONNX models given.

Each measurement is a fresh process holding only onnxruntime (the median of ``--repeat`` of them), as
``python -m dcn_onnxscript bench`` times session creation. With ``--latency`` it also prints the median
latency with and without that rewrite (random inputs of the models' shapes; symbolic sizes become
``--size``), which is what the rewrite buys at run time. Export the models first, for example:

    python examples/dcn_resnet50.py --native --output native.onnx
    python examples/dcn_resnet50.py --output portable.onnx
    python benchmarks/session_levels.py native.onnx portable.onnx --latency
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import onnxruntime

from dcn_onnxscript.tools.bench import measuring

#: Session configurations: name -> (graph optimization level, optimizers disabled).
CONFIGS = {
    "none": ("ORT_DISABLE_ALL", ""),
    "basic": ("ORT_ENABLE_BASIC", ""),
    "extended": ("ORT_ENABLE_EXTENDED", ""),
    "all": ("ORT_ENABLE_ALL", ""),
    "all without NCHWc": ("ORT_ENABLE_ALL", "NchwcTransformer"),
}

#: The fresh process: argv = model path, level name, disabled optimizers (comma-separated or empty).
_WORKER = """
import sys, time, onnxruntime
options = onnxruntime.SessionOptions()
options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, sys.argv[2])
options.log_severity_level = 3
disabled = [name for name in sys.argv[3].split(",") if name]
start = time.perf_counter()
onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
print(time.perf_counter() - start)
"""


def session_seconds(path: pathlib.Path, level: str, disabled: str, repeat: int) -> float:
    """Median seconds of ``InferenceSession`` creation over ``repeat`` fresh processes."""
    times = [float(subprocess.run([sys.executable, "-c", _WORKER, str(path), level, disabled], check=True,
                                  capture_output=True, text=True).stdout) for _ in range(repeat)]
    return statistics.median(times)


def random_feeds(session: onnxruntime.InferenceSession, size: int) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs; symbolic dimensions become 1 for the batch, ``size`` for the rest."""
    generator = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if i == 0 else size) for i, d in enumerate(value.shape)]
        feeds[value.name] = generator.standard_normal(shape, dtype=np.float32)
    return feeds


def latency_ms(path: pathlib.Path, disabled: str, size: int, repeat: int, threads: int) -> float:
    """Median milliseconds of one run at ORT_ENABLE_ALL with ``disabled`` optimizers off (the bench's session
    options otherwise)."""
    session = measuring.session(path, threads, [d for d in disabled.split(",") if d])
    feeds = random_feeds(session, size)
    return 1e3 * measuring.interleaved_medians({"run": lambda: session.run(None, feeds)}, repeat)["run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=pathlib.Path, help="ONNX files")
    parser.add_argument("--repeat", type=int, default=7, help="fresh processes (and latency runs) per figure")
    parser.add_argument("--latency", action="store_true", help="also time runs with and without NCHWc")
    parser.add_argument("--size", type=int, default=224, help="size of symbolic input dimensions but the first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the latency sessions")
    args = parser.parse_args(argv)
    print(f"onnxruntime {onnxruntime.__version__}; session creation, median of {args.repeat} fresh processes (s)")
    print("| model | " + " | ".join(CONFIGS) + (" | ms, all | ms, all without NCHWc |" if args.latency else " |"))
    print("| --- |" + " ---: |" * (len(CONFIGS) + 2 * args.latency))
    for path in args.models:
        cells = [f"{session_seconds(path, level, disabled, args.repeat):.3f}" for level, disabled in CONFIGS.values()]
        if args.latency:
            cells += [f"{latency_ms(path, disabled, args.size, args.repeat * 3, args.threads):.2f}"
                      for disabled in ("", "NchwcTransformer")]
        print(f"| {path.name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
