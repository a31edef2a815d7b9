"""``python -m dcn_onnxscript demo``: export a small DCNv2 network with the dynamo exporter, run it on
onnxruntime at a new input size, and print the max error against torchvision, the ops used and the path.

This module holds the command line only (``--help`` imports neither torch nor onnxruntime); the network and
the run are in :mod:`.block`.
"""

from __future__ import annotations

import argparse
import pathlib

from dcn_onnxscript.lowering import table
from dcn_onnxscript.tools.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="keep the .onnx file here (default: a temporary folder, removed at the end)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the exporter's); grid_sample needs "
                             f"{table.LOWERINGS['grid_sample'].min_opset} or more, gather "
                             f"{table.LOWERINGS['gather'].min_opset}")
    parser.add_argument("--impl", default=table.DEFAULT, choices=table.NAMES,
                        help=f"lowering (default: {table.DEFAULT}: grid_sample from opset "
                             f"{table.LOWERINGS['grid_sample'].min_opset}, gather below and for float64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    with progress.step("importing torch, torchvision and onnxruntime"):
        from dcn_onnxscript.tools.demo import block
    return block.run(args, progress)
