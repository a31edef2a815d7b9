"""Command line: ``python -m dcn_onnxscript {demo,bench,rewrite} ...``, also installed as the
``dcn-onnxscript`` command.

Each sub-command lives in its own module, which provides add_arguments(parser) and run(args) -> int. Only
the chosen command's module is imported, and its argument definitions import neither torch nor
onnxruntime: ``--help`` answers at once; ``run`` imports what the command needs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from dcn_onnxscript._version import __version__

#: The installed console script (pyproject.toml's [project.scripts]).
SCRIPT = "dcn-onnxscript"
#: sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("dcn_onnxscript.tools.demo", "export a small DCNv2 network, run it, compare to torchvision"),
    "bench": ("dcn_onnxscript.tools.bench",
              "nodes, export and session time, latency and memory of every export path against native"),
    "rewrite": ("dcn_onnxscript.rewrite.cli", "replace the deformable convolutions of an ONNX file by standard ops"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    installed = os.path.basename(sys.argv[0]) == SCRIPT
    parser = argparse.ArgumentParser(
        prog=SCRIPT if installed else "python -m dcn_onnxscript",
        description="Portable deformable convolution for ONNX.",
        epilog=f"Also installed as the '{SCRIPT}' command." if not installed else None)
    parser.add_argument("--version", action="version", version=f"dcn_onnxscript {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,rewrite}")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
