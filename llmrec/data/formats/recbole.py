"""RecBole atomic files (`<name>.inter`, `<name>.item`), as shipped for MovieLens-100K inside the recbole wheel.

Tab-separated with a typed header, e.g.
    ml-100k.inter   user_id:token  item_id:token  rating:float  timestamp:float
    ml-100k.item    item_id:token  movie_title:token_seq  release_year:token  class:token_seq
Columns are found by name (the part before ':'), so reordered or extra columns are fine. RecBole stores the
year apart from the title ("Toy Story" + "1995"); the title is rebuilt as "Toy Story (1995)" so both ML-100K
sources give the same titles. `class` is a space-separated genre list. Files are UTF-8 (RecBole reads them so):
a byte that is not UTF-8 is an error naming its line. The format has no quoting; RecBole itself splits lines
on every tab, so a line with more or fewer fields than the header is an error, never a title cut at a tab.
"""

from __future__ import annotations

from llmrec.data.formats.movielens_100k import UNKNOWN_TITLES
from llmrec.data.raw import (
    RawData,
    RawFile,
    decode,
    lines,
    make_raw,
    no_data_rows,
    parse_time,
    require_id,
)
from llmrec.base.errors import DataError


def _header(line: str, f: RawFile, required: tuple[str, ...]) -> dict[str, int]:
    """Column name -> index from a typed RecBole header; a clear error if it is not one."""
    names = [c.split(":", 1)[0].strip() for c in line.split("\t")]
    typed = all(":" in c for c in line.split("\t"))
    missing = [r for r in required if r not in names]
    if not typed or missing:
        raise DataError(f"{f.name} line 1: expected a RecBole header with typed columns such as "
                        f"{', '.join(r + ':token' for r in required)}; found {line[:120]!r}")
    return {n: i for i, n in enumerate(names)}


def _rows(f: RawFile, required: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    text = decode(f.read_bytes(), f.name, "utf-8")
    it = lines(text)
    first = next(it, None)
    if first is None:
        raise no_data_rows(f.name, "a RecBole header line and one line per row", "the file is empty")
    cols = _header(first[1], f, required)
    rows = []
    for number, line in it:
        fields = line.split("\t")
        if len(fields) != len(cols):
            raise DataError(f"{f.name} line {number}: expected {len(cols)} tab-separated fields "
                            f"({', '.join(cols)}), found {len(fields)}: {line[:120]!r}")
        rows.append((number, fields))
    if not rows:
        raise no_data_rows(f.name, "one tab-separated line per row after the header", "only a header line")
    return cols, rows


def load_recbole_ml100k(inter: RawFile, item: RawFile) -> RawData:
    cols, rows = _rows(inter, ("user_id", "item_id", "timestamp"))
    u, i, t = cols["user_id"], cols["item_id"], cols["timestamp"]
    users = [require_id(r[u], inter.name, n, "user_id") for n, r in rows]
    items = [require_id(r[i], inter.name, n, "item_id") for n, r in rows]
    times = [parse_time(r[t], inter.name, n) for n, r in rows]

    cols, rows = _rows(item, ("item_id", "movie_title"))
    ids, titles, genres, where = [], [], [], []
    for number, r in rows:
        ids.append(require_id(r[cols["item_id"]], item.name, number, "item_id"))
        title = r[cols["movie_title"]].strip()
        year = r[cols["release_year"]].strip() if "release_year" in cols else ""
        if title.lower() in UNKNOWN_TITLES:
            title = "unknown"
        elif year.isdigit() and len(year) == 4 and not title.endswith(f"({year})"):
            title = f"{title} ({year})"
        titles.append(title)
        genres.append([g for g in r[cols["class"]].split() if g != "unknown"] if "class" in cols else [])
        where.append(f"{item.name} line {number}")
    return make_raw(users, items, times, ids, titles, genres, where, files=[inter, item])
