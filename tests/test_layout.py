"""The code's shape, checked: imports only go down the layers of docs/architecture.md, no
function over 80 lines, no module over 400 lines (tests excluded).

Fails when someone adds an upward import (e.g. predictor -> training), a circle of imports
between modules (lazy ones included), a package of more than 16 modules, or lets a function
or module grow past the size the project allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blendmask"

# Top to bottom; a module may import its own layer's modules or any lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "__main__", "cli"),
    ("training", "convert", "export", "explain", "adapter", "serve"),
    ("prediction",),
    ("evaluation",),
    ("predictor", "input_images", "factory", "checkpoint_io", "checkpoint_reader", "interop"),
    ("modeling", "data", "metrics", "visualization", "painting"),
    (
        "config",
        "presets",
        "structures",
        "io",
        "image_checks",
        "atomic",
        "onnx_runtime",
        "runtime",
    ),
]
# A package holds one job a newcomer can read through; past this it should split.
MAX_MODULES_PER_PACKAGE = 16
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


def _module_name(path: Path) -> str:
    """src/blendmask/training/loop.py -> "blendmask.training.loop"; a package's __init__.py ->
    the package."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except those under `if TYPE_CHECKING:` (never imported at run time)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _module_edges(tree: ast.AST, known: set[str]) -> set[str]:
    """The blendmask modules an AST imports: `from a.b import c` is a.b.c when that is a
    module, else a.b (at any depth: a lazy import closes a circle as well)."""
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def test_no_import_circle():
    paths = {_module_name(p): p for p in modules()}
    known = set(paths)
    graph = {
        name: _module_edges(ast.parse(p.read_text()), known) - {name} for name, p in paths.items()
    }
    # A package's __init__ re-exporting its own modules is not a circle: drop the edges from a
    # module to the packages above it.
    for name, edges in graph.items():
        edges.difference_update(n for n in list(edges) if name.startswith(n + "."))
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_package_over_16_modules():
    for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir())]:
        count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        assert count <= MAX_MODULES_PER_PACKAGE, f"{folder}: {count} modules"
