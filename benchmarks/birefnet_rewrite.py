"""BiRefNet exported as its tutorial does, before and after ``rewrite``, on onnxruntime CPU.

The model: the bench's BiRefNet (swin_v1_t, 20 DCNv2 layers, random weights; ``--birefnet PATH`` or
``DCN_BENCH_BIREFNET``, a checkout of github ZhengPeng7/BiRefNet). The "before" file: the tutorial's export
(``tutorials/BiRefNet_pth2onnx.ipynb``): deform_conv2d_onnx_exporter 1.2.0 with the tutorial's patch, TorchScript,
opset 17, input ``input_image``. The "after" files: that file rewritten with the default lowering, and with
``--impl native --opset 19``.

Per file: node count (without ``Constant``), file size, session creation (``--threads`` intra-op threads),
median latency of ``--repeat`` interleaved rounds (``--one-at-a-time``: one model after the other), peak memory
(a fresh process: session creation and three runs, the bench's ``onnx_figures``), and the largest difference of
the tutorial's output (the last one) from the "before" file and from eager PyTorch, relative to max(1, max
|reference|). Run from the repository root:

    python benchmarks/birefnet_rewrite.py --birefnet PATH --sizes 512 --repeat 5
    python benchmarks/birefnet_rewrite.py --birefnet PATH --sizes 1024 --repeat 3 --one-at-a-time
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx
import onnx_ir as ir
import torch

from dcn_onnxscript.rewrite import rewrite
from dcn_onnxscript.rewrite.seed import relative_difference as relative
from dcn_onnxscript.tools.bench import birefnet, cases, measuring


def rewritten(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, float, str]:
    """``model`` rewritten with ``rewrite``'s ``options``, the seconds it took, and the lowering written."""
    start = time.perf_counter()
    result = rewrite(ir.from_proto(model), **options)
    seconds = time.perf_counter() - start
    if result.notes or not result.counts:
        raise RuntimeError(f"nothing rewritten: {result.notes}")
    return ir.to_proto(result.model), seconds, ", ".join(sorted(result.lowerings))


def session_seconds(path: pathlib.Path, threads: int) -> float:
    """Seconds to create an onnxruntime session of the model at ``path``."""
    start = time.perf_counter()
    measuring.session(path, threads)
    return time.perf_counter() - start


def last_output_runner(path: pathlib.Path, image: np.ndarray, threads: int):
    """A closure running the model at ``path`` and returning its last output (the tutorial's prediction)."""
    session = measuring.session(path, threads)
    return lambda: session.run(None, {birefnet.TUTORIAL_NAMES[0][0]: image})[-1]


#: The rewrites measured: row label, file suffix, rewrite options.
REWRITES = (("rewrite", "default", {}), ("rewrite --impl native --opset 19", "native", dict(impl="native", opset=19)))


def files_of(size: int, module: torch.nn.Module, image: torch.Tensor, args: argparse.Namespace,
             folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, float]]:
    """Row -> (file, rewrite seconds): the tutorial's file and its rewrites, written to ``folder`` (``--reuse``:
    the files an earlier run left there, without rewrite seconds)."""
    before = folder / f"birefnet_{size}_tutorial.onnx"
    files = {"tutorial (seed 1.2.0 + patch, TorchScript 17)": (before, 0.0)}
    if args.reuse and before.exists():
        for label, suffix, _ in REWRITES:
            files[f"{label} ({'native' if suffix == 'native' else 'grid_sample'})"] = (
                folder / f"birefnet_{size}_{suffix}.onnx", float("nan"))
        return files
    start = time.perf_counter()
    birefnet.tutorial_export(module, image, before)
    print(f"{size}: exported in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    original = onnx.load(str(before))
    for label, suffix, options in REWRITES:
        model, seconds, lowering = rewritten(original, **options)
        path = folder / f"birefnet_{size}_{suffix}.onnx"
        onnx.save(model, str(path))
        files[f"{label} ({lowering})"] = (path, seconds)
        print(f"{size}: {label} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return files


def measure(size: int, module: torch.nn.Module, args: argparse.Namespace, folder: pathlib.Path) -> list[str]:
    """The table rows of one image size. Peak memory first, from fresh processes, while this one holds no
    session; eager PyTorch last."""
    image = cases.image(size, args.seed)
    files = files_of(size, module, image, args, folder)
    saved = folder / f"birefnet_{size}.npz"
    np.savez(saved, image.numpy())
    peaks = {row: measuring.onnx_figures(path, saved)["peak_mb"] for row, (path, _) in files.items()}
    print(f"{size}: peaks {peaks}", file=sys.stderr, flush=True)
    created = {row: session_seconds(path, args.threads) for row, (path, _) in files.items()}
    if args.one_at_a_time:
        outputs, seconds = {}, {}
        for row, (path, _) in files.items():
            run = {row: last_output_runner(path, image.numpy(), args.threads)}
            outputs[row] = run[row]()
            seconds.update(measuring.interleaved_medians(run, args.repeat, warmup=1))
            del run
    else:
        run = {row: last_output_runner(path, image.numpy(), args.threads) for row, (path, _) in files.items()}
        outputs = {row: function() for row, function in run.items()}
        seconds = measuring.interleaved_medians(run, args.repeat)
        del run
    with torch.inference_mode():
        eager = module(image)[-1].numpy()
    base = next(iter(files))
    lines = []
    for row, (path, rewrite_seconds) in files.items():
        model = onnx.load(str(path), load_external_data=False)
        nodes = sum(node.op_type != "Constant" for node in model.graph.node)
        lines.append(f"| {size} | {row} | {nodes} | {path.stat().st_size / 2**20:.1f} | {rewrite_seconds:.1f} | "
                     f"{created[row]:.2f} | {1e3 * seconds[row]:.0f} | {seconds[row] / seconds[base]:.2f} | "
                     f"{peaks[row]:.0f} | {peaks[row] / peaks[base]:.2f} | "
                     f"{relative(outputs[row], outputs[base]):.1e} | {relative(outputs[row], eager):.1e} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--birefnet", type=pathlib.Path, default=os.environ.get("DCN_BENCH_BIREFNET"),
                        help="a checkout of github ZhengPeng7/BiRefNet (default: $DCN_BENCH_BIREFNET)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="measure the files an earlier run left in --workdir instead of exporting again")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="time one model after the other, each session released before the next (less memory "
                             "than interleaved rounds, which hold every session: for 1024x1024)")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where to write and keep the models (default: a temporary directory)")
    args = parser.parse_args()
    module = birefnet.build(pathlib.Path(args.birefnet) if args.birefnet else None, args.seed)
    load_before = os.getloadavg()
    lines = ["| size | model | nodes | MB | rewrite s | session s | median ms | x before | peak MB | x before | "
             "rel. diff vs before | rel. diff vs eager |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="dcn_birefnet_") as scratch:
        folder = args.workdir or pathlib.Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            lines += measure(size, module, args, folder)
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, median of {args.repeat} interleaved "
          f"rounds; load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
