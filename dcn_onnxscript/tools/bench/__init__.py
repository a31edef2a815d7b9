"""``python -m dcn_onnxscript bench``: graph size, export and session seconds, latency, peak memory and
error of every export path (:data:`.catalog.PATHS`: dcn_onnxscript's lowerings through the dynamo and
TorchScript exporters, its standalone function, native ``DeformConv``, deform_conv2d_onnx_exporter 1.2.0
and its maintained fork) on onnxruntime CPU, against torchvision eager, for single layers, the DCNv2
ResNet-50 of ``examples/dcn_resnet50.py`` and BiRefNet; and the DCNv3/DCNv4 cores at InternImage-T's stage
shapes through both lowerings, against InternImage's pure-PyTorch core exported by plain ``torch.onnx`` and
eager, on onnxruntime and OpenVINO.

The parts: :mod:`.catalog` (names: cases, paths, runtimes), :mod:`.cases` (modules and inputs),
:mod:`.birefnet`, :mod:`.internimage` (the cores and the plain baseline), :mod:`.peers`
(deform_conv2d_onnx_exporter and its fork), :mod:`.exports` (every path; node counts), :mod:`.floors` (a
layer's GEMM and sampling alone), :mod:`.measuring` (latency rounds, session and memory in fresh processes),
:mod:`.runtimes` (OpenVINO, tract), :mod:`.reporting` (tables, JSON, chart), :mod:`.driver` (the run). This
module holds the command line only: ``--help`` imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from dcn_onnxscript.tools.bench.catalog import (
    BIREFNET,
    BLOCK,
    BLOCK_INPUT,
    CASES,
    DCOE,
    DEFAULT_CASES,
    EAGER,
    FORK,
    LAYERS,
    NETWORK,
    RUNTIMES,
    SKIPPABLE,
)
from dcn_onnxscript.tools.progress import Progress

#: Progress lines on stderr, with the seconds since the bench started.
progress = Progress()
#: Environment variables naming the optional checkouts (the options' defaults).
FORK_ENV, BIREFNET_ENV = "DCN_BENCH_FORK", "DCN_BENCH_BIREFNET"


def _path_from(variable: str):
    value = os.environ.get(variable)
    return pathlib.Path(value) if value else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sizes = ", ".join(f"{name} N{c.batch} C{c.channels} {c.size}x{c.size}" for name, c in LAYERS.items())
    parser.add_argument("--layers", nargs="+", default=list(DEFAULT_CASES), choices=CASES, metavar="CASE",
                        help=f"cases to run, of: {', '.join(CASES)}; single modulated 3x3 layers ({sizes}), "
                             f"{NETWORK} (the DCNv2 ResNet-50 of examples/dcn_resnet50.py), {BLOCK} (its first conv3 "
                             f"bottleneck on {'x'.join(map(str, BLOCK_INPUT))}), {BIREFNET} (needs "
                             f"--birefnet), DCNv3/DCNv4 cores dcnvV-S (S×S×C: 56×56×64 G4, 28×28×128 G8, "
                             f"tiny 8×8×8 G2) (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per case (median reported; default 15)")
    parser.add_argument("--birefnet-repeat", type=int, default=3,
                        help=f"timed rounds of {BIREFNET}, whose round takes a minute on 2 cores (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of every latency session (onnxruntime, OpenVINO) and of torch "
                             "(default: all cores)")
    parser.add_argument("--image-size", type=int, default=224,
                        help=f"square input size of {NETWORK} (default: 224)")
    parser.add_argument("--birefnet-size", type=int, default=512,
                        help=f"square input size of {BIREFNET} (default: 512)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SKIPPABLE, metavar="NAME",
                        help=f"leave out export paths or {NETWORK}'s other runtimes, of: {', '.join(SKIPPABLE)}")
    parser.add_argument("--fork", type=pathlib.Path, default=_path_from(FORK_ENV), metavar="PATH",
                        help=f"a checkout of github nusu-github/deform_conv2d_onnx_exporter for the {FORK} rows "
                             f"(default: ${FORK_ENV}; without it they are skipped)")
    parser.add_argument("--birefnet", type=pathlib.Path, default=_path_from(BIREFNET_ENV), metavar="PATH",
                        help=f"a checkout of github ZhengPeng7/BiRefNet for the {BIREFNET} case; its modules "
                             f"need einops, kornia, timm, huggingface_hub, opencv (default: ${BIREFNET_ENV}; "
                             "without it the case is skipped)")
    parser.add_argument("--from-seed", action="store_true",
                        help=f"repair rows: only the files of {DCOE} and its fork (and native, for the ratios; "
                             f"{BIREFNET}: its tutorial's file alone), each followed by the same file after "
                             "`rewrite` (the default lowering at the file's opset, and --impl native --opset 19), "
                             "with a table of each against the file it was rewritten from")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="measure each model in a process of its own, one after the other (session, a warm-up "
                             "run and the timed runs, peak memory, output), so that no model's memory holds "
                             f"another's, instead of interleaved rounds in one process: for {BIREFNET} at "
                             "--birefnet-size 1024, whose tutorial file alone peaks at about 12 GB")
    parser.add_argument("--spinning", action="store_true",
                        help="with --one-at-a-time: onnxruntime's intra-op threads spin while they wait for work "
                             "(onnxruntime's default; interleaved sessions would steal each other's cores, so "
                             "they do not spin otherwise)")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="write a bar chart to this PNG file")
    parser.add_argument("--json", type=pathlib.Path, default=None,
                        help="also write the figures to this JSON file (nothing is written by default)")
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="where to write the models and keep them (default: a temporary directory, removed "
                             "at the end)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--memory-of", choices=[EAGER], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.epilog = (f"Export paths and rows: see the table 'How each model was exported' in the output. "
                     f"{DCOE} 1.2.0 is a pip package; {', '.join(RUNTIMES)} are optional.")


def run(args: argparse.Namespace) -> int:
    if args.spinning and not args.one_at_a_time:
        print("bench: --spinning needs --one-at-a-time: interleaved sessions whose threads spin steal each other's "
              "cores", file=sys.stderr)
        return 2
    if args.memory_of:
        from dcn_onnxscript.tools.bench.measuring import eager_memory_worker

        return eager_memory_worker(args)
    from dcn_onnxscript.tools.bench.driver import bench

    return bench(args)
