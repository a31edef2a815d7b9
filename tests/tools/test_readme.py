"""Every ```python block of README.md and of the docs that hold runnable examples runs as written (each as a
script of its own, in a temp folder), and what the README shows a command printing is what it prints
(``demo``'s output is checked by tests/tools/test_cli.py, which runs it anyway)."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

from helpers import assert_same_output, readme_block

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: Documents whose ```python blocks are whole scripts (docs/known-issues.md: reproductions that assert the
#: faults of other tools); docs/deploy.md's snippets are fragments.
EXAMPLES = ("README.md", "docs/known-issues.md")
BLOCKS = [(f"{name}:{i}", code) for name in EXAMPLES
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.DOTALL))]


def test_readme_has_python_examples() -> None:
    assert sum(name.startswith("README.md:") for name, _ in BLOCKS) >= 3


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_documented_example_runs(code: str, tmp_path) -> None:
    script = tmp_path / "example.py"  # a file, not -c: onnxscript reads the source of @script functions
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", ["upload_race", "split_num_outputs"])
def test_known_issues_shows_the_browser_reproduction_as_the_browser_test_runs_it(name: str) -> None:
    """docs/known-issues.md's reproductions of onnxruntime-web's faults are tests/web/NAME.py's code (its docstring
    aside), which tests/web/test_NAME.py runs in the browser."""
    script = ast.parse((ROOT / "tests" / "web" / f"{name}.py").read_text())
    script.body = script.body[1:]
    shown = [code for label, code in BLOCKS if label.startswith("docs/known-issues.md:") and f'"{name}' in code]
    assert len(shown) == 1 and ast.dump(ast.parse(shown[0])) == ast.dump(script)


def test_readme_rewrite_output_is_what_rewrite_prints(tmp_path) -> None:
    script = re.search(r"```bash\n(# a model holding ONNX's native DeformConv.*?)```", README, flags=re.DOTALL)
    path = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is this one
    result = subprocess.run(["bash", "-c", script.group(1)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_output(readme_block("# a model holding ONNX's native DeformConv"), result.stdout)


def test_ci_runs_the_test_command_of_the_readme() -> None:
    """The second command of Running the tests is the one CI runs, after the first's install."""
    commands = re.search(r"## Running the tests\n+```bash\n(.*?)```", README, flags=re.DOTALL).group(1).splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci and commands[0].endswith(ci[ci.index(commands[1]) - 2])


def _layer_nodes(impl: str, dynamic: bool) -> int:
    """Nodes but ``Constant`` of ``DeformConv2d(64, 64, 3, padding=1)`` at 32×32 exported by dynamo with
    ``impl``, static or with ``Dim.AUTO`` batch, height and width: what README's table of lowerings counts."""
    import warnings

    import torch
    from torchvision.ops import DeformConv2d

    import dcn_onnxscript

    torch.manual_seed(0)
    layer = DeformConv2d(64, 64, 3, padding=1).eval()
    args = (torch.randn(1, 64, 32, 32), torch.randn(1, 18, 32, 32), torch.rand(1, 9, 32, 32))
    auto = torch.export.Dim.AUTO
    shapes = ({0: auto, 2: auto, 3: auto},) * 3 if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(layer, args, dynamo=True, dynamic_shapes=shapes, verbose=False,
                                    custom_translation_table=dcn_onnxscript.translation_table(impl))
    return sum(node.op_type != "Constant" for node in program.model_proto.graph.node)


@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
def test_readme_node_counts_are_measured(impl: str) -> None:
    """The table of lowerings shows the node counts an export writes today (static / dynamic)."""
    row = re.search(rf"^\| `{impl}` \|.*\| (\d+) / (\d+) \|$", README, flags=re.MULTILINE)
    assert row, f"README has no row for {impl} ending in 'static / dynamic' node counts"
    shown = (int(row.group(1)), int(row.group(2)))
    assert shown == (_layer_nodes(impl, False), _layer_nodes(impl, True))
