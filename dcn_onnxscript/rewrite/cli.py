"""``python -m dcn_onnxscript rewrite IN.onnx OUT.onnx``: the command line of :mod:`dcn_onnxscript.rewrite`.

The arguments only: ``--help`` answers without importing onnx_ir, onnxruntime or torch; :func:`run` hands
over to :mod:`dcn_onnxscript.rewrite.command`."""

from __future__ import annotations

import argparse
import pathlib

from dcn_onnxscript.lowering import table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=pathlib.Path, help="the ONNX model to rewrite")
    parser.add_argument("output", type=pathlib.Path, nargs="?", default=None,
                        help="where to write the rewritten model (leave out with --in-place)")
    parser.add_argument("--impl", default=table.DEFAULT,
                        help=f"lowering: {', '.join(table.IMPLS)} (default: {table.DEFAULT}: grid_sample from "
                             f"opset 16, gather below and for float64; {table.NATIVE}: ONNX DeformConv, opset >= "
                             f"{table.NATIVE_MIN_OPSET}, for runtimes that have it)")
    parser.add_argument("--opset", type=int, default=None,
                        help="convert the result to this ONNX opset (default: keep the model's)")
    # the names of targets.TARGETS, written out: --help imports no onnx_ir
    parser.add_argument("--for", dest="target", choices=("ncnn", "opencv4", "rknn"), default=None,
                        help="also write the lowerings' patterns that this deployment target reads (ncnn: the "
                             "far-position guard as a Clip; opencv4: each GridSample of static sizes as a "
                             "Gather, for OpenCV 4.x, which has no GridSample; rknn: the Gather nodes that read "
                             "one tensor as one Gather, which rknn-toolkit2 would merge wrongly, static or dynamic "
                             "sizes alike); for models "
                             "exported by this package too")
    parser.add_argument("--check", action="store_true",
                        help="run onnx.checker (full check) on the result and, where the original runs on "
                             "onnxruntime, compare both on random inputs")
    parser.add_argument("--in-place", action="store_true", help="overwrite the input")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="--check: largest |difference| allowed, relative to max(1, max |original|) "
                             "(default: 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="--check: seed of the random inputs")


def run(args: argparse.Namespace) -> int:
    from dcn_onnxscript.rewrite import command

    return command.run(args)
