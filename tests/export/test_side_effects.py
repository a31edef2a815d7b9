"""Importing the package never changes what torch.onnx does with models that hold no deformable
convolution: each model of ``no_deform_models.py`` is exported at opsets 12 … 18 (a sample of them by
default) in a fresh process without the package and in one with it imported, and the outcomes must be the
same (or better: converted to the requested opset where torch alone could not), never a new failure."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).resolve().parent / "no_deform_models.py"
OPSETS = [str(opset) for opset in range(12, 19)]
#: The default suite's sample of OPSETS: the lowest, one in the middle, the highest; the slow test runs them all.
SAMPLED_OPSETS = ["12", "15", "18"]


def _outcomes(models: list[str], opsets: list[str]) -> tuple[dict, dict]:
    """(without the package, with it): both processes run side by side."""
    runs = [subprocess.Popen([sys.executable, str(WORKER), *flag, "--models", *models, "--opsets", *opsets],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for flag in ([], ["--import-package"])]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results[0], results[1]


def _assert_same_or_better(without: dict, with_package: dict) -> None:
    assert without.keys() == with_package.keys()
    for key, alone in without.items():
        imported = with_package[key]
        opset = int(key.split("/")[1])
        if alone["exported"]:
            assert imported["exported"], f"{key}: exports without the package, fails with it: {imported['error']}"
            assert imported["opset"] in (alone["opset"], opset), f"{key}: {alone} then {imported}"
        if imported["exported"]:
            assert imported["difference"] <= 1e-4, f"{key}: {imported}"


def test_importing_the_package_changes_no_export_without_deformable_convolution():
    without, with_package = _outcomes(["conv_relu_mul"], SAMPLED_OPSETS)
    _assert_same_or_better(without, with_package)


@pytest.mark.slow
def test_importing_the_package_changes_no_export_without_deformable_convolution_more_models():
    without, with_package = _outcomes(["conv_relu_mul", "small_resnet", "norm_attention", "upsample"], OPSETS)
    _assert_same_or_better(without, with_package)
