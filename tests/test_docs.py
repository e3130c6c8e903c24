"""The docs/ pages the code cites exist, down to the heading anchor; nothing cites the old design notes.

Anchors are computed the way GitHub renders them from a heading: link and code marks dropped, lower
case, every character that is not a letter, digit, `_`, `-` or space removed, spaces turned into `-`,
and a repeated heading numbered `-1`, `-2`, ...
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE = [ROOT / d for d in ("lib", "stages", "tests", "bench", "tools")] + [ROOT / "README.md"]
PROJECT_FILES = [ROOT / f for f in ("dvc.yaml", "params.yaml", "pyproject.toml", "Makefile")]

CITATION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown [text](target)
# The notes the project was planned from; users never have them (spelled as a pattern so this file
# does not match itself).
OLD_NOTES = re.compile(r"\b(?:DESIGN|REFERENCE)\.md\b")


def text_files(places: list[Path]) -> list[tuple[Path, str]]:
    """(path, text) of every UTF-8 text file under `places`; binary fixtures, caches and egg-info left out."""
    files = []
    for place in places:
        for path in sorted(place.rglob("*")) if place.is_dir() else [place]:
            if not path.is_file() or any(p == "__pycache__" or p.endswith(".egg-info") for p in path.parts):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if "\0" not in text:
                files.append((path, text))
    return files


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown page."""
    anchors, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "")
        anchor = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(anchor, 0)
        seen[anchor] = n + 1
        anchors.add(anchor if n == 0 else f"{anchor}-{n}")
    return anchors


def broken(page_name: str, anchor: str | None) -> str | None:
    page = DOCS / page_name
    if not page.is_file():
        return f"no page docs/{page_name}"
    if anchor and anchor not in heading_anchors(page):
        return f"no heading for #{anchor} in docs/{page_name}"
    return None


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def test_code_cites_docs_that_exist():
    problems, citations = [], 0
    for path, text in text_files(CODE + PROJECT_FILES):
        for m in CITATION.finditer(text):
            citations += 1
            if why := broken(m.group(1), m.group(2)):
                problems.append(f"{path.relative_to(ROOT)}:{line_of(text, m.start())}: {why}")
    assert citations > 20, "the citation pattern no longer finds the code's docs/ citations"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_links_resolve(page: Path):
    problems = []
    text = page.read_text(encoding="utf-8")
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        where = f"{page.relative_to(ROOT)}:{line_of(text, m.start())}"
        if not resolved.exists():
            problems.append(f"{where}: no file {target}")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            problems.append(f"{where}: no heading for #{anchor} in {file or page.name}")
    assert not problems, "\n".join(problems)


def test_nothing_mentions_the_old_design_notes():
    hits = [
        f"{path.relative_to(ROOT)}:{line_of(text, m.start())}: {m.group(0)}"
        for path, text in text_files(CODE + PROJECT_FILES + [DOCS])
        for m in OLD_NOTES.finditer(text)
    ]
    assert not hits, "cite the docs/ pages instead:\n" + "\n".join(hits)


def test_heading_anchors_follow_github(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "# The `note_seq` encoding\n"
        "## Measured\n"
        "```\n# not a heading\n```\n"
        "## Measured\n"
        "### See [Data pipeline](#data-pipeline): 1.2 s, 388 ids!\n"
    )
    assert heading_anchors(page) == {
        "the-note_seq-encoding", "measured", "measured-1", "see-data-pipeline-12-s-388-ids",
    }
