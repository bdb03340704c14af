"""The docs hold together: links resolve, the front page stays short and lists every config,
no page narrates history, and the augmentation preset table is the code's ``PRESETS``."""

from __future__ import annotations

import re

import pytest

from mvcli.data.augment import PRESETS
from tests.conftest import REPO
from tests.docs_pages import PAGES, anchors, prose_lines, section

README = REPO / "README.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# Phrases that tell how things were rather than what the tool does.
HISTORY = re.compile(
    r"\b(used to|no longer|any ?more|previously|formerly|before this change|this change|"
    r"since stop|since (?:commit|version|release)|now\b|not yet|earlier run|first run)",
    re.I,
)


def _links(page) -> list[tuple[int, str]]:
    return [
        (number, target)
        for number, line in prose_lines(page.read_text())
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_pages_exist():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    for name in ["README.md", "docs/user-guide.md", "docs/architecture.md",
                 "docs/performance.md", "docs/troubleshooting.md"]:  # fmt: skip
        assert name in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    links = _links(page)
    for number, target in links:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        assert linked.exists(), where
        if anchor:
            assert linked.suffix == ".md", where
            assert anchor in anchors(linked.read_text()), where


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in _links(README)}
    for page in PAGES[1:]:
        if page.name != "README.md":
            assert page.resolve() in linked, page.name


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    setup = section("Set up")
    assert "make demo   #" in setup and "make test   #" in setup
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    for command in ["fit", "validate", "test", "predict", "score", "review", "export", "search",
                    "cache", "lr_find"]:  # fmt: skip
        assert re.search(rf"^mvcli {command} ", section("Commands"), re.M), command


def test_configs_table_lists_every_config():
    table = section("Configs")
    rows = {m for m in re.findall(r"^\| `(configs/[^`]+)` \|", table, re.M)}
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*") if p.is_file()}
    assert files - rows == set(), "configs missing from the README's configs table"
    assert rows - files == set(), "the README's configs table names files that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_history_phrases(page):
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = HISTORY.search(line)
        assert not match, f"{page.relative_to(REPO)}:{number}: {match.group(0)!r} in {line!r}"


def _cell(text: str) -> object:
    values = [float(v) for v in text.split(",")]
    return tuple(values) if len(values) > 1 else values[0]


def test_augmentation_preset_table_is_presets():
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section("Augmentation").splitlines()
        if line.startswith("| ")
    ]
    header, body = rows[0], [r for r in rows[1:] if not set(r[0]) <= set("-")]
    assert header[0] == "field" and header[1:] == list(PRESETS)
    table = {row[0].strip("`"): row[1:] for row in body}
    assert list(table) == list(PRESETS["none"]), "one row per PRESETS field, in its order"
    for field, cells in table.items():
        for preset, cell in zip(header[1:], cells, strict=True):
            expected = PRESETS[preset][field]
            expected = tuple(map(float, expected)) if isinstance(expected, tuple) else expected
            assert _cell(cell) == expected, (field, preset, cell, expected)


def _architecture_tree() -> set[str]:
    """The modules the architecture page's package tree names (``mvcli/task/module.py``)."""
    text = (REPO / "docs/architecture.md").read_text()
    block = text[text.index("## The package") :].split("```")[1]
    folders: list[tuple[int, str]] = []
    paths = set()
    for line in block.splitlines():
        name = line.strip().split(" ")[0] if line.strip() else ""
        if not name:
            continue
        indent = len(line) - len(line.lstrip())
        folders = [(i, f) for i, f in folders if i < indent]
        if name.endswith("/"):
            folders.append((indent, name))
        elif name.endswith(".py"):
            paths.add("".join(f for _, f in folders) + name)
    return paths


def test_architecture_tree_names_every_module_once_in_its_folder():
    package = REPO / "mvcli"
    modules = {
        p.relative_to(REPO).as_posix()
        for p in package.rglob("*.py")
        if p.name != "__init__.py" or p.parent == package
    }
    assert _architecture_tree() == modules
