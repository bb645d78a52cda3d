"""Bookkeeping of `ablations.py`: the results json (read, add a record under a file lock) and
the claim files that let several workers share the list of runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import REPO

from blendmask.atomic import atomic_write

RESULTS = REPO / "benchmarks" / "results" / "ablations.json"


def to_json(results: dict[str, Any]) -> str:
    """The results as standard JSON: an undefined value (the specificity ratio of maps that
    are all identical, 0 / 0) is null, not Python's NaN, which JSON parsers refuse."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(results), indent=1, allow_nan=False) + "\n"


def read_results(path: Path = RESULTS) -> dict[str, Any]:
    if not path.is_file():
        return {"runs": {}}
    return json.loads(path.read_text())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path.lock` (one writer of the results json at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_record(
    key: str, record: dict[str, Any], budget: dict[str, Any], path: Path = RESULTS
) -> None:
    """Add (or replace) run `key` and the budget it ran under."""
    with locked(path):
        results = read_results(path)
        results.setdefault("runs", {})[key] = record
        results["budget"] = budget
        results["runs"] = dict(sorted(results["runs"].items()))
        text = to_json(results)
        atomic_write(path, lambda f: f.write(text.encode()))


def claim(folder: Path) -> bool:
    """Take the run in `folder` for this process; False when a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                os.kill(pid, 0)
                return False  # alive: someone else's run
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale claim of a killed process
                continue
            except PermissionError:
                return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def write_results(results: dict[str, Any], path: Path = RESULTS) -> None:
    """Write the whole json (call inside `locked(path)`)."""
    text = to_json(results)
    atomic_write(path, lambda f: f.write(text.encode()))
