"""The code's shape, checked: imports only go down the layers of docs/architecture.md, no
function over 80 lines, no module over 400 lines (tests excluded).

Fails when someone adds an upward import (e.g. predictor -> engine), a cycle between two
modules, or lets a function or module grow past the size the project allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blendmask"

# Top to bottom; a module may import its own layer's modules or any lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "__main__", "cli"),
    ("engine", "export", "explain", "adapter", "serve"),
    ("predictor", "input_images", "factory", "checkpoint_io", "checkpoint_reader", "interop"),
    ("modeling", "data", "evaluation", "visualization", "painting"),
    (
        "config",
        "config_checks",
        "config_yaml",
        "presets",
        "structures",
        "io",
        "image_checks",
        "atomic",
        "onnx_runtime",
    ),
]
# Same-layer imports that would close a circle or mix concerns, forbidden explicitly.
FORBIDDEN = {
    ("config", "presets"),  # presets is a table built from config, never the reverse
    ("interop", "factory"),
    ("interop", "predictor"),
    ("interop", "checkpoint_io"),
    ("factory", "predictor"),
    ("io", "config"),
    ("io", "structures"),
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def top_name(path: Path) -> str:
    """src/blendmask/modeling/blender.py -> "modeling"; src/blendmask/io.py -> "io"."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def layer_of(name: str) -> int:
    for rank, names in enumerate(LAYERS):
        if name in names:
            return rank
    raise AssertionError(f"blendmask.{name} is in no layer of tests/test_layout.py: add it")


def _is_module(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def imported_names(tree: ast.AST) -> set[str]:
    """First component after `blendmask.` of every import, at any depth (lazy ones too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "blendmask":
                if len(parts) > 1:
                    names.add(parts[1])
                else:  # `from blendmask import x`: a submodule, or a name of __init__.py
                    names.update(
                        alias.name if _is_module(alias.name) else "__init__" for alias in node.names
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "blendmask" and len(parts) > 1:
                    names.add(parts[1])
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path):
    here = top_name(path)
    tree = ast.parse(path.read_text())
    for name in imported_names(tree):
        if name == here:
            continue
        assert layer_of(name) >= layer_of(here), (
            f"{path.name}: {here} imports {name}, a higher layer"
        )
        assert (here, name) not in FORBIDDEN, f"{path.name}: {here} must not import {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_fit_on_a_screen_and_modules_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{path}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}:{node.lineno} {node.name} is {length} lines"
