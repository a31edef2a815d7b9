"""The command line (dcn_onnxscript.__main__ and its sub-commands), run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import onnx


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcn_onnxscript", *args], capture_output=True, text=True,
                          timeout=600)


def test_demo_exports_runs_and_reports(tmp_path) -> None:
    output = tmp_path / "demo.onnx"
    result = run_cli("demo", "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert lines["wrote"].strip() == str(output)
    assert "DeformConv" not in lines["ops"] and "Gather" in lines["ops"]
    assert float(result.stdout.split("max |error|")[1].split()[0]) < 1e-4
    model = onnx.load(str(output))
    onnx.checker.check_model(model, full_check=True)
    assert "DeformConv" not in {node.op_type for node in model.graph.node}


def test_unknown_command_fails_with_usage() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "usage:" in result.stderr
