"""onnxruntime's CUDA execution provider: every export path of ``python -m dcn_onnxscript bench`` (the
lowerings at torch's default opset, dynamo at opset 17, TorchScript at 17 and 13, the standalone function)
against native DeformConv, float32 and float16, on the single layers L1–L3 and the DCNv2 ResNet-50.

Needs a CUDA GPU and onnxruntime-gpu; prints one table (median ms of ``--repeat`` runs after warm-up,
I/O bound to the device so that copies are not timed, and the max |difference| from native). Run:

    python benchmarks/cuda_ep.py [--repeat 50] [--layers L1 L2 L3] [--no-resnet] [--rows ...]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnxruntime
import torch

from dcn_onnxscript.tools.bench import cases, catalog, exports

#: The bench's export paths timed here (its peers need their checkouts), native last: the ratios' base.
ROWS = ("grid_sample", "gather", "dynamo-17", "torchscript-17", "torchscript-13", "function", catalog.NATIVE)
#: The bench's layer cases, without its smoke-test one.
LAYERS = [name for name in catalog.LAYERS if name != "tiny"]


def layer_case(name: str, dtype: torch.dtype):
    """The bench's layer ``name`` (modulated 3x3, padding 1, bias) and its inputs, in ``dtype``."""
    layer = catalog.LAYERS[name]
    torch.manual_seed(0)
    model = cases.LayerModule(layer.channels).eval().to(dtype)
    return model, tuple(a.to(dtype) for a in cases.layer_inputs(layer, seed=0))


def resnet_case(dtype: torch.dtype):
    """The DCNv2 ResNet-50 of examples/dcn_resnet50.py on a 1x3x224x224 image, in ``dtype``."""
    model = cases.load_example().build_model(seed=0).to(dtype)
    return model, (cases.image(224, seed=0).to(dtype),)


def export(name: str, model, inputs, row: str, file: pathlib.Path) -> None:
    """Export ``model`` along the bench's path ``row`` (static shapes) to ``file``."""
    case = cases.Case(name, model, inputs, dynamic=False, paths={row: catalog.PATHS[row]})
    exports.export(catalog.PATHS[row], case, file, argparse.Namespace(fork=None))


def time_session(path: pathlib.Path, feeds: dict, repeat: int, provider: str):
    session = onnxruntime.InferenceSession(str(path), providers=[provider])
    assert session.get_providers()[0] == provider, session.get_providers()
    device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, onnxruntime.OrtValue.ortvalue_from_numpy(value, device, 0))
    binding.bind_output(session.get_outputs()[0].name, device)
    for _ in range(5):
        session.run_with_iobinding(binding)
    times = []
    for _ in range(repeat):
        binding.synchronize_inputs()
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3, binding.copy_outputs_to_cpu()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--layers", nargs="*", default=LAYERS)
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS,
                        help="export paths (native, the ratios' base, always runs)")
    parser.add_argument("--provider", default="CUDAExecutionProvider", help="(CPUExecutionProvider: a dry run)")
    args = parser.parse_args()
    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()  # the CUDA/cuDNN libraries of the nvidia-* wheels torch brought
    print(f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}, "
          f"torch {torch.__version__}, GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
    cases = [(name, dtype) for name in args.layers for dtype in (torch.float32, torch.float16)]
    if not args.no_resnet:
        cases += [("resnet50", torch.float32), ("resnet50", torch.float16)]
    rows = [row for row in ROWS if row in args.rows or row == catalog.NATIVE]
    print(f"{'case':10} {'dtype':8} {'row':15} {'ms':>9} {'x native':>9} {'max|diff|':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for name, dtype in cases:
            model, inputs = resnet_case(dtype) if name == "resnet50" else layer_case(name, dtype)
            results = {}
            for row in rows:
                path = pathlib.Path(folder) / f"{name}_{row}_{dtype}.onnx"
                try:
                    export(name, model, inputs, row, path)
                    names = [i.name for i in onnxruntime.InferenceSession(str(path)).get_inputs()]
                    results[row] = time_session(path, {n: a.numpy() for n, a in zip(names, inputs)},
                                                args.repeat, args.provider)
                except Exception as error:  # noqa: BLE001  (report and go on)
                    results[row] = (float("nan"), None)
                    print(f"{name:10} {str(dtype)[6:]:8} {row:15} failed: {str(error).splitlines()[0][:120]}")
            native_ms, native_out = results[catalog.NATIVE]
            for row, (ms, out) in results.items():
                if out is None:
                    continue
                diff = float(np.abs(out.astype(np.float64) - native_out.astype(np.float64)).max()) \
                    if native_out is not None else float("nan")
                print(f"{name:10} {str(dtype)[6:]:8} {row:15} {ms:9.3f} {ms / native_ms:9.2f} {diff:10.2e}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
