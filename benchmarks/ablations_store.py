"""Bookkeeping of `ablations.py`: the results json (read, add a record under a file lock) and
the claim files that let several workers share the list of runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import REPO, json_text

from blendmask.atomic import atomic_write

RESULTS = REPO / "benchmarks" / "results" / "ablations.json"


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
        write_results(results, path)


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
    # indent 1, keys in insertion order: the layout the results files have always had
    text = json_text(results, indent=1, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
