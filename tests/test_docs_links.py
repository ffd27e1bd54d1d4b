"""README and docs/ link to each other's sections; a renamed heading or moved file must not leave a reader at a dead
link. Anchors follow GitHub's rule: the heading lower-cased, punctuation dropped, spaces to hyphens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def heading_anchor(heading: str) -> str:
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    in_code = False
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(heading_anchor(line))
    return found


def test_heading_anchor_follows_githubs_rule() -> None:
    assert heading_anchor("## Sampler defaults and what they match") == "sampler-defaults-and-what-they-match"
    assert heading_anchor("## The target, with 95 % intervals") == "the-target-with-95--intervals"
    assert heading_anchor("## How much class evidence the pooling leaves: a classifier trained on A⁺A x") == (
        "how-much-class-evidence-the-pooling-leaves-a-classifier-trained-on-aa-x")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target, fragment in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target}#{fragment}: no such heading")
    assert not broken, broken


def test_readme_links_each_reference_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/job.md", "docs/guarantees.md", "docs/api.md", "docs/benchmarks.md", "docs/results.md"):
        assert f"]({page}" in readme, page
