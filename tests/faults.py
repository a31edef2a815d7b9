"""Faults of other projects, each tied to the versions where it was seen, and this package's own documented
limitations, as pytest ``xfail`` marks.

A fault is a strict xfail only while the installed release of its project is one where it was seen: a release
that fixes it then flips the case to XPASS, which fails, so that the fix shows up. On a newer release than any
seen, the case is a non-strict xfail: it passes when the fault is gone (reported as XPASS, without failing) and
is reported as XFAIL while the fault is still there. So a fresh install with newer releases never fails
because another project fixed its bug.

The installed release is the test venv's; for a project that lives in a venv of its own (``.ci/deploy``,
``.ci/tflite``), it is that venv's pin in ``.ci/*requirements.txt``; for onnxruntime-web, the release
installed in the browser harness's ``tests/web/node_modules`` (its ``package.json``), else the pin of
``tests/web/package-lock.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import pathlib
import re
from typing import Optional

import pytest
from packaging.version import Version

_CI = pathlib.Path(__file__).resolve().parents[1] / ".ci"
#: The requirements files of the extra venvs (in .ci/), which pin the releases their runtimes' faults were seen in.
DEPLOY, OVEP, TFLITE = "deploy-requirements.txt", "deploy-ovep-requirements.txt", "tflite-requirements.txt"
OPENCV4, RKNN = "deploy-opencv4-requirements.txt", "deploy-rknn-requirements.txt"
#: The browser harness's npm lock file (relative to .ci/), which pins onnxruntime-web; the release installed
#: beside it (node_modules) is read first.
WEB = "../tests/web/package-lock.json"


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def _pins(requirements: str) -> dict[str, str]:
    """The ``name==version`` pins of ``.ci/REQUIREMENTS`` (an extra venv's), by normalised name."""
    pins = {}
    for line in (_CI / requirements).read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+).*", line)
        if match:
            pins[_normalised(match.group(1))] = match.group(2)
    return pins


def installed_version(project: str, requirements: Optional[str] = None) -> Optional[Version]:
    """The release of ``project`` (a distribution name): its pin in ``.ci/REQUIREMENTS`` (the venv of its own
    that runs it), or without ``requirements`` the test venv's; ``None`` where it has none."""
    if requirements and requirements.endswith(".json"):  # an npm lock file
        return _npm_version(project, _CI / requirements)
    if requirements:
        pin = _pins(requirements).get(_normalised(project))
        return Version(pin) if pin else None
    try:
        return Version(importlib.metadata.version(project))
    except importlib.metadata.PackageNotFoundError:
        return None


def _npm_version(project: str, lock: pathlib.Path) -> Optional[Version]:
    """The release of npm package ``project`` installed beside ``lock`` (``node_modules/PROJECT/package.json``),
    else the one ``lock`` pins; ``None`` where it has neither."""
    installed = lock.parent / "node_modules" / project / "package.json"
    if installed.exists():
        return Version(json.loads(installed.read_text())["version"])
    package = json.loads(lock.read_text())["packages"].get(f"node_modules/{project}")
    return Version(package["version"]) if package else None


@dataclasses.dataclass(frozen=True)
class Fault:
    """A fault of ``project`` (a distribution name), seen up to its release ``seen`` (and not known fixed), in
    the test venv or, with ``requirements``, in the extra venv that file pins."""

    project: str
    seen: str
    text: str
    requirements: Optional[str] = None

    def seen_here(self) -> bool:
        """Whether the installed release is one where the fault was seen (or the project is not installed)."""
        version = installed_version(self.project, self.requirements)
        return version is None or version <= Version(self.seen)

    @property
    def reason(self) -> str:
        return f"{self.project} {self.seen}: {self.text}"

    def mark(self, raises: Optional[type] = None) -> pytest.MarkDecorator:
        """Strict xfail where the fault was seen, non-strict on newer releases."""
        return pytest.mark.xfail(strict=self.seen_here(), reason=self.reason, raises=raises)


@dataclasses.dataclass(frozen=True)
class Limitation:
    """A documented limitation of this package (no other project can fix it): always a strict xfail."""

    text: str

    @property
    def reason(self) -> str:
        return self.text

    def mark(self, raises: Optional[type] = None) -> pytest.MarkDecorator:
        return pytest.mark.xfail(strict=True, reason=self.reason, raises=raises)
