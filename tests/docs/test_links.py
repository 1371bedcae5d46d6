"""Relative links in the guide pages and README's list resolve to files and anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [
    DOCS / name
    for name in (
        "index.md",
        "quickstart.md",
        "concepts.md",
        "cli.md",
        "operations.md",
        "comparison.md",
        "performance.md",
    )
]
# Pages that may be linked before they are written (none now).
LATER: set[Path] = set()

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set(_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(text):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans hold no links
    return _LINK.findall(text)


def _broken(page: Path, targets: list[str]) -> list[str]:
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            if dest not in LATER:
                broken.append(f"{target}: {dest} does not exist")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading or anchor #{fragment}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_resolve(page: Path) -> None:
    assert page.is_file()
    targets = links(page)
    assert targets, f"{page.name} links nowhere"
    assert _broken(page, targets) == []


def test_readme_lists_every_guide_page() -> None:
    readme = ROOT / "README.md"
    targets = links(readme)
    assert _broken(readme, targets) == []
    listed = {(ROOT / t).resolve() for t in targets if t.startswith("docs/")}
    for page in PAGES:
        assert page in listed, f"README.md does not list {page.name}"


def test_index_links_every_guide_page() -> None:
    index = DOCS / "index.md"
    targets = {(DOCS / t.partition("#")[0]).resolve() for t in links(index)}
    for page in DOCS.glob("*.md"):
        if page != index:
            assert page in targets, f"docs/index.md does not link {page.name}"


def test_slugs_follow_github() -> None:
    assert _slug("`mapperkit twin serve`") == "mapperkit-twin-serve"
    assert _slug("Errors, timeouts and outages") == "errors-timeouts-and-outages"
    assert _slug("Queries (ext)") == "queries-ext"


def test_broken_links_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '# Title\n\n## A `code` heading\n\n<a id="x"></a>\n\n'
        "[ok](#title) [ok](#a-code-heading) [ok](#x) [bad](#nope) [gone](other.md) "
        "[web](https://example.org/x) `[not a link](nowhere.md)`\n\n"
        "```\n[in a fence](fenced.md)\n```\n",
        encoding="utf-8",
    )
    targets = links(page)
    assert targets == [
        "#title",
        "#a-code-heading",
        "#x",
        "#nope",
        "other.md",
        "https://example.org/x",
    ]
    assert [b.split(":")[0] for b in _broken(page, targets)] == ["#nope", "other.md"]
