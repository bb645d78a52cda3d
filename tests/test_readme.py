"""README and docs/ code blocks marked `<!-- runnable -->` run as written, every `blendmask`
command of their bash blocks parses with the CLI's own parser and names existing presets, every
preset the model-zoo table names exists, and the README stays a short guide (the two commands
in its first 40 lines, under 250 lines).

Fails when the docs' Python API drifts from the code (a renamed function, a changed
signature), a documented command uses a flag the CLI does not have, or a page names a preset the
package does not have.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"<!-- runnable -->\s*```python\n(.*?)```", re.S)
BASH = re.compile(r"```bash\n(.*?)```", re.S)


def runnable_blocks() -> list[str]:
    return [code for page in PAGES for code in RUNNABLE.findall(page.read_text())]


def documented_commands(text: str) -> list[list[str]]:
    """The `blendmask ...` (or `torchrun ... -m blendmask ...`) command lines of the bash
    blocks of `text`: continuations joined, comments and optional `[...]` parts dropped."""
    commands = []
    for block in BASH.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*", "", line)
            line = re.sub(r"\[[^\]]*\]", "", line)
            words = shlex.split(line)
            if words[:1] == ["blendmask"]:
                commands.append(words[1:])
            elif words[:1] == ["torchrun"] and "blendmask" in words:
                commands.append(words[words.index("blendmask") + 1 :])
    return commands


def test_readme_has_runnable_blocks():
    assert runnable_blocks(), "no block marked <!-- runnable --> in README.md"


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    code = runnable_blocks()[index]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_model_zoo_presets_exist():
    from blendmask.presets import PRESETS

    table = (ROOT / "docs" / "model_zoo.md").read_text()
    presets = re.findall(r"--preset (\S+)", table)
    assert len(presets) >= 7
    assert set(presets) <= set(PRESETS), set(presets) - set(PRESETS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_commands_parse(page):
    """Each command parses as written (argparse exits on an unknown flag or a missing
    argument), and a preset it names is a current preset, not an old name."""
    from blendmask.cli.main import build_parser
    from blendmask.presets import PRESETS

    parser = build_parser()
    for words in documented_commands(page.read_text()):
        args = parser.parse_args(words)
        if getattr(args, "preset", None):
            assert args.preset in PRESETS, (page.name, words)


def test_readme_commands_parse_and_come_first():
    """The README: what it is, install, then train and predict within its first 40 lines; the
    details live in docs/, so it stays under 250 lines."""
    lines = README.read_text().splitlines()
    assert len(lines) < 250, len(lines)
    first = documented_commands("\n".join(lines[:40]) + "\n```")
    assert {words[0] for words in first} >= {"train", "predict"}, first
