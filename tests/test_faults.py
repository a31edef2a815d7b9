"""tests/faults.py: an upstream fault is a strict xfail only on the releases where it was seen."""

from __future__ import annotations

import importlib.metadata
import json

from faults import DEPLOY, OPENCV4, WEB, Fault, Limitation, installed_version


def _strict(mark) -> bool:
    return mark.kwargs["strict"]


def test_a_fault_is_strict_up_to_the_release_where_it_was_seen():
    here = importlib.metadata.version("pytest")
    assert _strict(Fault("pytest", here, "seen on this release").mark())
    assert _strict(Fault("pytest", "999", "seen on a later release").mark())


def test_a_fault_on_a_newer_release_than_seen_is_not_strict():
    """A fresh install with a release that may have fixed it passes either way (XPASS or XFAIL)."""
    mark = Fault("pytest", "0.1", "seen long ago").mark()
    assert not _strict(mark) and mark.kwargs["reason"] == "pytest 0.1: seen long ago"


def test_an_extra_venvs_release_is_its_pin():
    """The release of a runtime in a venv of its own is the pin of that venv's requirements file, not the
    test venv's (OpenCV 5 here, 4.x there)."""
    assert str(installed_version("opencv-python-headless", OPENCV4)).startswith("4.")
    assert installed_version("ncnn", DEPLOY) is not None
    assert installed_version("no-such-project", DEPLOY) is None


def test_an_npm_packages_release_is_the_installed_one_else_the_locks_pin(tmp_path):
    """onnxruntime-web's release is the one installed in node_modules beside the lock file (what the browser
    runs), else the lock file's pin."""
    lock = tmp_path / "package-lock.json"
    lock.write_text(json.dumps({"packages": {"node_modules/onnxruntime-web": {"version": "1.31.1"}}}))
    assert str(installed_version("onnxruntime-web", str(lock))) == "1.31.1"
    installed = tmp_path / "node_modules" / "onnxruntime-web" / "package.json"
    installed.parent.mkdir(parents=True)
    installed.write_text(json.dumps({"name": "onnxruntime-web", "version": "1.32.0"}))
    assert str(installed_version("onnxruntime-web", str(lock))) == "1.32.0"
    assert installed_version("no-such-project", str(lock)) is None
    assert installed_version("onnxruntime-web", WEB) is not None


def test_a_limitation_of_this_package_is_always_strict():
    assert _strict(Limitation("documented").mark())
