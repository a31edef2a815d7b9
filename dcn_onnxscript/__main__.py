"""Command line: python -m dcn_onnxscript {demo,bench,rewrite} ...

Each sub-command lives in its own module, which provides add_arguments(parser) and run(args) -> int.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from dcn_onnxscript._version import __version__

#: sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("dcn_onnxscript.tools.demo", "export a small DCNv2 network, run it, compare to torchvision"),
    "bench": ("dcn_onnxscript.tools.bench", "nodes, export and load time, latency and memory: portable vs native"),
    "rewrite": ("dcn_onnxscript.rewrite.cli", "replace the deformable convolutions of an ONNX file by standard ops"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcn_onnxscript",
                                     description="Portable deformable convolution for ONNX.")
    parser.add_argument("--version", action="version", version=f"dcn_onnxscript {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,rewrite}")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the chosen command's module (bench and demo import torch)
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
