"""README code blocks marked `<!-- runnable -->` run as written, and every preset the model-zoo
table names exists.

Fails when the README's Python API drifts from the code (a renamed function, a changed
signature) or names a preset the package does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = re.compile(r"<!-- runnable -->\s*```python\n(.*?)```", re.S)


def runnable_blocks() -> list[str]:
    return RUNNABLE.findall(README.read_text())


def test_readme_has_runnable_blocks():
    assert runnable_blocks(), "no block marked <!-- runnable --> in README.md"


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    code = runnable_blocks()[index]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_model_zoo_presets_exist():
    from blendmask.presets import PRESETS

    table = README.read_text().split("## Model zoo", 1)[1].split("\n## ", 1)[0]
    presets = re.findall(r"--preset (\S+)", table)
    assert len(presets) >= 7
    assert set(presets) <= set(PRESETS), set(presets) - set(PRESETS)
