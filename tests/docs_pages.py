"""The Markdown pages (README.md and docs/*.md): their lines outside code, headings, sections."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

PAGES: list[Path] = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, '-' for spaces;
    a repeated heading gets -1, -2, ...)."""
    result: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in prose_lines(text):
        if match := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def section(title: str) -> str:
    """The text of the one section headed ``title`` (any level) in README.md or docs/*.md,
    up to the next heading of the same or a higher level."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = text.splitlines()
        prose = prose_lines(text)
        for i, (number, line) in enumerate(prose):
            match = HEADING.match(line)
            if not match or match.group(2) != title:
                continue
            level = len(match.group(1))
            end = len(lines)
            for later, other in prose[i + 1 :]:
                heading = HEADING.match(other)
                if heading and len(heading.group(1)) <= level:
                    end = later - 1
                    break
            found.append("\n".join(lines[number - 1 : end]))
    assert len(found) == 1, f"{len(found)} sections titled {title!r} in {[p.name for p in PAGES]}"
    return found[0]
