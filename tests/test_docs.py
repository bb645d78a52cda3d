"""Every citation of docs/ in the code resolves: the cited file exists and, for
`docs/reference.md §x.y`, has a heading for that section.

Fails when a comment points at a section that was renamed or never written, or at a file
outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py")]


def test_reference_citations_resolve():
    headings = set(re.findall(r"^## (§[0-9.]+)", (ROOT / "docs/reference.md").read_text(), re.M))
    cited = {}
    for path in SOURCES:
        for match in re.finditer(r"docs/reference\.md\s+(§\d+(?:\.\d+)?)", path.read_text()):
            cited.setdefault(match.group(1), path.name)
    assert cited, "no citation found: the pattern is wrong"
    missing = {section: where for section, where in cited.items() if section not in headings}
    assert not missing, f"cited sections without a heading in docs/reference.md: {missing}"


def test_no_citation_points_outside_the_repository():
    for path in SOURCES:
        text = path.read_text()
        if path.name == "test_docs.py":
            continue
        assert "ADELAIDET.md" not in text, f"{path}: cites a file outside the repository"
        for doc in re.findall(r"docs/[\w./-]+\.md", text):
            assert (ROOT / doc).is_file(), f"{path}: cites {doc}, which does not exist"
