"""Every reference to the project's documentation points at a file and a heading that exist.

Code and docs cite `docs/<page>.md#<anchor>` (anchors as GitHub renders them from headings);
pages link each other relatively (`variants.md#ubn`). A renamed heading or page fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CITING = ("normbench", "variants", "tests", "suites")
TOP_FILES = ("README.md", "ARCHITECTURE.md")
DOC_REF = re.compile(r"docs/([\w./-]+\.md)(?:#([\w-]+))?")
RELATIVE_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", page.read_text(), flags=re.M)
    return {slug(h) for h in headings}


def citing_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES]
    for folder in CITING:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    return [p for p in files if p.is_file() and p != Path(__file__)]


def references() -> list[tuple[Path, str, str | None]]:
    found = []
    for path in citing_files():
        for page, anchor in DOC_REF.findall(path.read_text(errors="replace")):
            found.append((path, page, anchor or None))
    for path in DOCS.rglob("*.md"):
        for page, anchor in RELATIVE_LINK.findall(path.read_text()):
            found.append((path, str((path.parent / page).relative_to(DOCS)), anchor or None))
    return found


def test_slug_matches_github() -> None:
    assert slug("Ghost BN") == "ghost-bn"
    assert slug("Data parallel, ablation presets, placement") == (
        "data-parallel-ablation-presets-placement"
    )
    assert slug("Pairwise cosine similarity in O(B·D)") == "pairwise-cosine-similarity-in-obd"


def test_the_code_cites_the_docs() -> None:
    cited = {(page, anchor) for _, page, anchor in references()}
    assert ("variants.md", "ubn") in cited  # the scan finds the code's citations at all


@pytest.mark.parametrize("ref", references(), ids=lambda r: f"{r[0].name}->{r[1]}#{r[2]}")
def test_reference_exists(ref: tuple[Path, str, str | None]) -> None:
    source, page, anchor = ref
    target = DOCS / page
    assert target.is_file(), f"{source.relative_to(ROOT)} cites docs/{page}, which does not exist"
    if anchor is not None:
        assert anchor in anchors(target), (
            f"{source.relative_to(ROOT)} cites docs/{page}#{anchor}: no such heading "
            f"(headings: {sorted(anchors(target))})"
        )


def test_no_reference_to_the_old_outside_spec() -> None:
    """The spec the comments once cited ("spec §N") lives outside the repository; docs/ is it."""
    stale = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in citing_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"§\s*\d|shared/spec", line)
    ]
    assert not stale, f"cite docs/<page>.md#<anchor> instead: {stale}"
