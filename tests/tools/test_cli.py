"""The command line (dcn_onnxscript.__main__ and its sub-commands), run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from dcn_onnxscript.lowering import table
from dcn_onnxscript.tools.bench import catalog
from helpers import assert_same_output, readme_block


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcn_onnxscript", *args], capture_output=True, text=True,
                          timeout=600)


def test_demo_exports_runs_and_reports_what_readme_shows(tmp_path) -> None:
    """One run of ``demo`` (an export, a check and a session) serves both the command's behaviour and README's
    copy of its output; only the ``wrote`` line differs, as ``--output`` keeps the file."""
    output = tmp_path / "demo.onnx"
    result = run_cli("demo", "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert lines["wrote"].strip() == str(output)
    shown = readme_block("`demo` exports")
    kept = "\n".join(f"wrote        {output}" if line.startswith("wrote ") else line for line in shown.splitlines())
    assert_same_output(kept, result.stdout)
    assert "DeformConv" not in lines["ops"] and "Gather" in lines["ops"]
    assert float(result.stdout.split("max |error|")[1].split()[0]) < 1e-4
    model = onnx.load(str(output))
    onnx.checker.check_model(model, full_check=True)
    assert "DeformConv" not in {node.op_type for node in model.graph.node}
    chosen = table.resolve(table.DEFAULT, int(lines["opset"]), onnx.TensorProto.FLOAT)
    assert ("GridSample" in lines["ops"]) == (chosen == "grid_sample")
    assert "importing torch" in result.stderr and "exporting with impl=auto" in result.stderr  # progress


#: What a sub-command's --help must not import, and what it must list.
HELP = {
    "demo": (("torch", "onnxruntime"), table.NAMES),
    "bench": (("torch", "onnxruntime"), (*catalog.CASES, *catalog.SKIPPABLE)),
    "rewrite": (("torch", "onnxruntime", "onnx_ir"), table.NAMES),
}
_PARSE_HELP = """
import json, sys
from dcn_onnxscript.__main__ import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("command", list(HELP))
def test_help_lists_every_choice_without_importing_torch(command: str) -> None:
    heavy, choices = HELP[command]
    result = subprocess.run([sys.executable, "-c", _PARSE_HELP, command], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "COLUMNS": "400"})  # no line broken at a hyphen
    assert result.returncode == 0, result.stderr
    *help_lines, modules = result.stdout.splitlines()
    imported = set(json.loads(modules))
    assert [name for name in heavy if name in imported] == []
    text = " ".join(" ".join(help_lines).split())
    assert text.startswith("usage:") and all(choice in text for choice in choices)


def test_the_top_level_help_names_the_installed_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "dcn-onnxscript" in result.stdout


def test_unknown_command_fails_with_usage() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "usage:" in result.stderr
