"""The README stays a newcomer's page (at most 700 lines) and every relative link of README.md and docs/*.md
points at a file of this repository, and at a heading of it when the link names one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 700
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """`text` without fenced blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[`*_]", "", heading.strip().lower()).replace("_", "")
    return re.sub(r"[^\w\- ]", "", text, flags=re.U).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^```.*?^```", "", text, flags=re.S | re.M).split("\n"):
        m = re.match(r"^#{1,6} (.+)$", line)
        if m:
            s = slug(m[1])
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(without_code(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z]+:", t)]  # http:, https:, mailto: are not files of the repository


def test_slug_matches_githubs_anchors():
    assert slug("8. Evaluation (metric keys in every metrics.json)") == "8-evaluation-metric-keys-in-every-metricsjson"
    assert slug("Using a real LLaMA / Qwen checkpoint on a GPU") == "using-a-real-llama--qwen-checkpoint-on-a-gpu"
    assert slug("Serving predictions (`llmrec predict`, `llmrec serve`, `Recommender`)") == \
        "serving-predictions-llmrec-predict-llmrec-serve-recommender"


def test_the_readme_is_at_most_700_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to docs/ and link it"


def test_every_relative_link_names_a_file_and_heading_of_the_repository():
    bad = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_relative_to(ROOT) or not dest.exists():
                bad.append(f"{page.name}: {target} (no such file in the repository)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                bad.append(f"{page.name}: {target} (no such heading in {dest.relative_to(ROOT)})")
    assert bad == []


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []
