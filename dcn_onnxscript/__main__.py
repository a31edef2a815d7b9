"""Command line: ``python -m dcn_onnxscript {demo,bench,rewrite} ...``.

Each sub-command lives in its own module, which provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("dcn_onnxscript.demo", "export a small DCNv2 network, run it on onnxruntime, compare to torchvision"),
    "bench": ("dcn_onnxscript.bench", "latency and peak memory on onnxruntime CPU: portable vs native DeformConv vs eager"),
    "rewrite": ("dcn_onnxscript.rewrite", "replace the deformable convolutions of an ONNX file by portable ONNX ops"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcn_onnxscript", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(commands.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
