"""The code's shape, checked: imports only go down the layers of docs/architecture.md, no
function over 80 lines, no module over 400 lines (tests excluded), no import circle, no package
over 16 modules; tests share code only through tests/helpers/ (no test file imports another,
none edits sys.path); no citation of a file that is not in the repository; no path of the
machine in committed benchmark results.

Fails when someone adds an upward import (e.g. predictor -> training), a circle of imports
between modules (lazy ones included), a package of more than 16 modules, lets a function or
module grow past the size the project allows, imports a test file from another, or cites a file
that is gone (or never was in the repository).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "blendmask"

# Top to bottom; a module may import its own layer's modules or any lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "__main__", "cli"),
    ("training", "convert", "export", "explain", "adapter", "serve"),
    ("prediction",),
    ("evaluation",),
    ("predictor", "factory", "checkpoint_io", "checkpoint_reader", "interop"),
    ("modeling", "data", "metrics"),
    (
        "config",
        "presets",
        "structures",
        "io",
        "image_checks",
        "atomic",
        "onnx_runtime",
        "runtime",
        # Drawing and image loading sit with the structures: `Detections.plot` uses them.
        "visualization",
        "painting",
        "input_images",
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


ROOT = PACKAGE.parents[1]


# ---------------------------------------------------------------------------------------------
# Tests: shared code lives in tests/helpers/, no test file imports another

TESTS = ROOT / "tests"
TEST_SOURCES = sorted(TESTS.rglob("*.py"))


def _top_imports(tree: ast.AST) -> set[str]:
    """The first component of every absolute import, at any depth (lazy ones too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", TEST_SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_file_imports_another_test_file(path: Path) -> None:
    """What two tests share lives in tests/helpers/ (`from helpers.models import ...`); a test
    importing another test file runs that file's module-level code and couples the two."""
    local = {p.stem for p in TESTS.glob("*.py")}  # test_*.py and conftest.py
    wrong = sorted(_top_imports(ast.parse(path.read_text())) & local)
    assert not wrong, f"{path.name} imports {wrong}: move what it needs into tests/helpers/"


def test_tests_top_level_holds_only_test_files() -> None:
    """A shared module next to the tests (not in helpers/) would be a second place to look."""
    stray = [p.name for p in TESTS.glob("*.py") if not p.name.startswith("test_")]
    assert stray == ["conftest.py"], f"shared code goes into tests/helpers/: {stray}"


# Imports third-party reference scripts from a folder only the test knows, for the test's time.
SYS_PATH_ALLOWED = {"test_vision_references.py"}


@pytest.mark.parametrize("path", TEST_SOURCES, ids=lambda p: str(p.relative_to(TESTS)))
def test_tests_do_not_edit_sys_path(path: Path) -> None:
    """tests/ and benchmarks/ are importable through pyproject.toml's pytest `pythonpath`, the
    package through its install; one way, so an import means the same in every test."""
    if path.name in SYS_PATH_ALLOWED:
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                raise AssertionError(f"{path.name}:{node.lineno} uses sys.path")


# ---------------------------------------------------------------------------------------------
# No citation of a file that is not in the repository

# Paths of AdelaiDet / detectron2, the reference repositories, which the docs cite by name.
UPSTREAM = ("tools/", "configs/")
REPO_DIRS = ("src", "tests", "docs", "benchmarks")
# `tests/x.py`, `benchmarks/y.json`, ... anywhere in the text (the whole path up to a space or a quote).
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|tests|docs|benchmarks)/[\w./-]*[\w/])")
# `engine/video.py`, `data/preprocess.py`: backticked paths of the package, the tests, the repo.
TICKED_PATH = re.compile(r"`([\w.-]+/[\w./-]+\.(?:py|md|sh))`")
BARE_MD = re.compile(r"(?<![\w./\\-])([\w-]+\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"\.\./shared\b")


def _cited_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in REPO_DIRS:
        files += (ROOT / folder).rglob("*.*")
    # This file is left out: its examples of wrong citations are meant to be wrong.
    return sorted(
        p
        for p in files
        if p.suffix in (".py", ".md", ".sh") and p.is_file() and p != Path(__file__).resolve()
    )


def _repo_names() -> set[str]:
    return {p.name for folder in REPO_DIRS for p in (ROOT / folder).rglob("*")} | {
        p.name for p in ROOT.iterdir()
    }


def missing_citations(path: Path, names: set[str]) -> list[str]:
    """The citations in `path` of a file that does not exist: a path under src/, tests/,
    docs/ or benchmarks/ (not a glob, a template or an output given to a --flag), a backticked
    path found neither from the root, src/, src/blendmask/, tests/ nor the file's folder, a bare
    `NAME.md` (not a string literal of code) that no file of the repository is called, a
    markdown link that leads nowhere, or anything under ../shared/."""
    found = []
    bases = (ROOT, ROOT / "src", PACKAGE, TESTS, path.parent)
    shown = path.relative_to(ROOT) if ROOT in path.parents else path.name
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{shown}:{number}"
        for m in REPO_PATH.finditer(line):
            after, before = line[m.end() : m.end() + 1], line[: m.start()]
            if after in "*<{\\" and after or re.search(r"--[\w-]+[ =]$", before):
                continue
            if not (ROOT / m.group(1).rstrip(".")).exists():
                found.append(f"{where}: {m.group(1)}")
        for m in TICKED_PATH.finditer(line):
            cited = m.group(1)
            if cited.startswith(UPSTREAM) or "*" in cited or "<" in cited:
                continue
            if not any((base / cited).exists() for base in bases):
                found.append(f"{where}: `{cited}`")
        for m in BARE_MD.finditer(line):
            quoted = line[m.start() - 1 : m.start()] in "\"'" and m.start() > 0
            if m.group(1) not in names and not (path.suffix == ".py" and quoted):
                found.append(f"{where}: {m.group(1)}")
        if path.suffix == ".md":
            for m in LINK.finditer(line):
                target = m.group(1).split("#")[0]
                if not target or re.match(r"[a-z]+:", target):
                    continue  # a URL or an anchor of the same page
                resolved = (path.parent / target).resolve()
                if ROOT not in resolved.parents or not resolved.exists():
                    found.append(f"{where}: link {target}")
        if OUTSIDE.search(line):
            found.append(f"{where}: ../shared/ is outside the repository")
    return found


def test_citation_finder_finds_missing_files(tmp_path: Path) -> None:
    """The rule below can fail, and passes the legitimate forms."""
    doc, gone = tmp_path / "cites.md", "nowhere"  # (`gone`: no wrong citation in this file)
    doc.write_text(
        f"See STYLE.md, docs/{gone}.md, `engine/{gone}.py`, [x]({gone}.md) and ../shared/data.\n"
        "Fine: README.md, docs/architecture.md, `data/preprocess.py`, tests/data/keys/*.json,\n"
        "`tools/train_net.py`, --json benchmarks/results/new.json, [y](https://x.org/a.md).\n"
    )
    found = missing_citations(doc, _repo_names())
    assert [f.split(": ", 1)[1] for f in found] == [
        f"docs/{gone}.md",
        f"`engine/{gone}.py`",
        "STYLE.md",
        "nowhere.md",
        "link nowhere.md",
        "../shared/ is outside the repository",
    ]


def test_no_citation_of_a_missing_file() -> None:
    names = _repo_names()
    found = [f for path in _cited_files() for f in missing_citations(path, names)]
    assert not found, "citations of files not in the repository:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# Committed results hold no path of the machine they ran on

MACHINE_PATH = re.compile(
    r"(?<![\w.:/~-])/(?:root|home|tmp|work|Users|mnt|var|opt|srv|private|data|scratch)/[^\s\"']*"
)


def test_results_hold_no_absolute_path() -> None:
    """benchmarks/results/*.json: paths relative to the repository, so the files read the same
    on any machine and name no one's home directory."""
    assert MACHINE_PATH.search('"weights": "/home/me/runs/model.pt"')  # the rule can fail
    assert not MACHINE_PATH.search('"url": "https://x.org/home/a", "file": "runs/demo/x.pt"')
    found = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.name}:{number}: {m.group(0)}" for m in MACHINE_PATH.finditer(line)]
    assert not found, "absolute paths in committed results:\n" + "\n".join(found[:30])
