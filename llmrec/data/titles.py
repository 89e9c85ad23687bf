"""Item titles as the LLM will read and write them (pure functions).

The LLM names items by title, so titles must read naturally and be unique within a catalog:
- whitespace is collapsed and trimmed;
- a trailing article moved behind a comma by catalog convention is put back in front, in the main title and in
  each parenthesised alternative title: "Matrix, The (1999)" -> "The Matrix (1999)",
  "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
  -> "The City of Lost Children (La Cité des enfants perdus) (1995)", "Appartement, L' (1996)" ->
  "L'Appartement (1996)". The year in parentheses is kept (it tells remakes apart);
- an empty title gets the deterministic fallback "item <raw id>" (counted and logged by the caller): dropping
  the item would silently drop its interactions, and an error would make real catalogs with one blank entry
  unusable;
- duplicates (ML-100K has a few films listed twice under different ids) keep the title on the first item in
  id order; later ones get " [2]", " [3]", ... (square brackets, so they cannot be mistaken for a year), never
  colliding with another title.
"""

from __future__ import annotations

import re

ARTICLES: tuple[str, ...] = ("The", "A", "An", "Les", "Le", "La", "L'", "Il", "Lo", "Gli", "Das", "Der", "Die",
                             "Den", "Det", "El", "Los", "Las", "Un", "Une", "Ein", "Eine", "O")
_ARTICLE_AT_END = re.compile(r"^(?P<body>.*\S),\s*(?P<article>" + "|".join(re.escape(a) for a in ARTICLES) + r")$")
_TRAILING_GROUP = re.compile(r"\s*\(([^()]*)\)$")


def move_article(text: str) -> str:
    """"Matrix, The" -> "The Matrix"; "Appartement, L'" -> "L'Appartement"; anything else unchanged."""
    m = _ARTICLE_AT_END.match(text)
    if not m:
        return text
    article, body = m.group("article"), m.group("body")
    return f"{article}{body}" if article.endswith("'") else f"{article} {body}"


def normalize_title(title: str) -> str:
    """Collapse whitespace and put catalog-style trailing articles back in front (see module docstring)."""
    text = " ".join(str(title).split())
    groups: list[str] = []
    while True:  # peel trailing "(...)" groups: the year and alternative titles
        m = _TRAILING_GROUP.search(text)
        if m is None or m.start() == 0:
            break
        groups.insert(0, m.group(1).strip())
        text = text[:m.start()].rstrip()
    parts = [move_article(text)]
    for g in groups:
        # an "a.k.a." group is not a title that can carry an article of its own at the end
        parts.append(f"({g if g.lower().startswith('a.k.a') else move_article(g)})")
    return " ".join(p for p in parts if p)


def fallback_title(raw_id: str) -> str:
    return f"item {raw_id}"


def unique_titles(titles: list[str]) -> list[str]:
    """Make `titles` unique, deterministically: the first keeps its title, later copies get " [k]"."""
    originals = set(titles)
    taken: set[str] = set()
    out = []
    for t in titles:
        if t in taken:
            k = 2
            while f"{t} [{k}]" in taken or f"{t} [{k}]" in originals:
                k += 1
            t = f"{t} [{k}]"
        taken.add(t)
        out.append(t)
    return out
