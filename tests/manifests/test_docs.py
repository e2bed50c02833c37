"""The repository documents itself: every docs pointer resolves, and none leads outside.

- Every `docs/<page>.md#<anchor>` written anywhere (code comments, docstrings, YAML
  comments, strings the benchmark report writes, markdown) names a page in docs/ and a
  heading on it.
- Every relative markdown link resolves to a file in the repository, and its anchor to a
  heading of that file.
- Outside tests/, nothing sends the reader to design, style, statistics or platform notes
  that are not in the repository: the statistics page is `docs/statistics.md`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".js", ".json", ".cfg"}
TEXT_NAMES = {"Makefile", "Dockerfile"}

DOCS_POINTER = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# Documents that lived beside the repository, never in it.
OUTSIDE = re.compile(
    r"\b(?:DESIGN|STYLE|iter8|platform)\.md\b|reference/(?:statistics|iter8|platform)"
    r"|/work/shared|shared/reference"
)
BARE_STATISTICS = re.compile(r"(?<![\w/.-])statistics\.md")


def _files() -> Iterator[Path]:
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for p in sorted(folder.iterdir()):
            if p.is_dir():
                if p.name not in SKIP_DIRS:
                    stack.append(p)
            elif p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES:
                yield p


FILES = sorted(_files())


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _outside_fences(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def test_slug_matches_github() -> None:
    assert slug("Means: Robbins' normal mixture") == "means-robbins-normal-mixture"
    assert slug("Counts, not point values") == "counts-not-point-values"
    assert slug("A/B and `A/B/n`") == "ab-and-abn"


def test_the_design_and_statistics_pages_exist() -> None:
    for page in ("design.md", "statistics.md"):
        assert anchors(ROOT / "docs" / page), f"docs/{page} has no headings"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_docs_pointers_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = []
    for m in DOCS_POINTER.finditer(text):
        page, anchor = ROOT / "docs" / m.group(1), m.group(2)
        if not page.is_file():
            problems.append(f"{m.group(0)}: no such page")
        elif anchor and anchor not in anchors(page):
            problems.append(f"{m.group(0)}: no heading with that anchor")
    assert not problems, problems


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".md"], ids=_rel)
def test_relative_markdown_links_resolve(path: Path) -> None:
    problems = []
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z][a-z+.-]*:", target):
                continue  # http:, https:, mailto: ...
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{target}: no heading with that anchor")
    assert not problems, problems


@pytest.mark.parametrize("path", [p for p in FILES if not _rel(p).startswith("tests/")], ids=_rel)
def test_no_pointers_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = [m.group(0) for m in OUTSIDE.finditer(text)]
    if path.parent != ROOT / "docs":  # inside docs/, a bare name is the sibling page
        problems += [
            f"bare {m.group(0)} (write docs/statistics.md)" for m in BARE_STATISTICS.finditer(text)
        ]
    assert not problems, problems
