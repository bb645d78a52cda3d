"""Packaging: a dependency range (not a pin) that holds the installed torch and newer releases,
one version source, the licence and type marker shipped.

Fails if pyproject.toml goes back to an exact torch pin (which forces a multi-gigabyte
reinstall on users with another torch), or if `blendmask --version` and the package metadata
disagree.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import torch
import torchvision
from packaging.requirements import Requirement
from packaging.version import Version

import blendmask

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not a dependency")


def test_torch_and_torchvision_are_ranges_holding_installed_and_newer():
    for name, installed in (("torch", torch.__version__), ("torchvision", torchvision.__version__)):
        spec = requirement(name).specifier
        assert not any(s.operator in ("==", "===", "~=") for s in spec), f"{name} is pinned: {spec}"
        version = Version(installed.split("+")[0])
        assert spec.contains(version), f"{name} {version} outside {spec}"
        newer = Version(f"{version.major}.{version.minor + 1}.0")
        assert spec.contains(newer) and spec.contains(Version(f"{version.major + 1}.0.0"))


@pytest.mark.slow
def test_one_version_source():
    assert blendmask.__version__ == metadata.version("blendmask") == PYPROJECT["project"]["version"]
    out = subprocess.run(
        [sys.executable, "-m", "blendmask", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"blendmask {blendmask.__version__}"


def test_licence_and_type_marker_ship():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert (Path(blendmask.__file__).parent / "py.typed").is_file()
    meta = metadata.metadata("blendmask")
    assert meta["License-Expression"] == "Apache-2.0"
    assert any("Typing :: Typed" in c for c in meta.get_all("Classifier"))
