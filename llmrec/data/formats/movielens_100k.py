"""MovieLens-100K in the GroupLens format: `u.data` and `u.item`.

    u.data   tab-separated: user id, item id, rating, unix timestamp (seconds)
    u.item   '|'-separated, latin-1: id | title | release date | video release date | IMDb URL | 19 genre flags

Every rating counts as an interaction (implicit feedback, as LLaRA and RecBole use ML-100K); the rating value
is not kept. The genre flag "unknown" means "no genre" and is not listed as a genre. Item 267 has the title
"unknown" in u.item (and "unkonwn" in RecBole's copy); both loaders give it the title "unknown" so that the two
sources produce the same catalog.

The format has no quoting, so a title containing '|' gives a line with too many fields. The fields after the
title are fixed (two dates, a URL, 19 flags), so when they still read as dates, a URL and flags, the extra
fields belong to the title: it is read whole and the repair is logged; otherwise the line is an error. Each
line is decoded by itself (UTF-8 if valid, else latin-1), so a file mixing both reads correctly.
"""

from __future__ import annotations

import logging
import re

from llmrec.data.raw import (
    RawData,
    RawFile,
    decode,
    lines,
    make_raw,
    no_data_rows,
    parse_int,
    parse_time,
    split_fields,
)
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)

GENRES: tuple[str, ...] = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                           "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                           "Romance", "Sci-Fi", "Thriller", "War", "Western")
UNKNOWN_TITLES = {"unknown", "unkonwn"}
_FLAGS = frozenset({"0", "1"})
_DATE = re.compile(r"^\s*(\d{1,2}-[A-Za-z]{3}-\d{4})?\s*$")  # "01-Jan-1995" or empty


def read_u_data(f: RawFile) -> tuple[list[str], list[str], list[int]]:
    """Users, items and timestamps of `u.data`, in file order."""
    text = decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")
    users, items, times = [], [], []
    for number, line in lines(text):
        user, item, _rating, ts = split_fields(line, "\t", 4, f.name, number, "user, item, rating, timestamp")
        users.append(str(parse_int(user, f.name, number, "user")))
        items.append(str(parse_int(item, f.name, number, "item")))
        times.append(parse_time(ts, f.name, number, integer=True))
    if not users:
        raise no_data_rows(f.name, "one line 'user<TAB>item<TAB>rating<TAB>timestamp' per rating")
    return users, items, times


def _u_item_fields(line: str, f: RawFile, number: int, n_fields: int) -> tuple[list[str], bool]:
    """The fields of one u.item line, a title containing '|' joined back (see the module docstring)."""
    fields = line.split("|")
    extra = len(fields) - n_fields
    if extra == 0:
        return fields, False
    if extra > 0:
        release, video, url = fields[-22], fields[-21], fields[-20]
        if (_DATE.match(release) and _DATE.match(video) and (not url.strip() or "://" in url)
                and all(x.strip() in ("0", "1") for x in fields[-19:])):
            return [fields[0], "|".join(fields[1:2 + extra])] + fields[2 + extra:], True
    # the right count, or too many fields that do not fit the pattern above: a clear field-count error
    return split_fields(line, "|", n_fields, f.name, number, _U_ITEM_FIELDS), False


_U_ITEM_FIELDS = "id, title, release date, video date, URL and 19 genre flags"


def read_u_item(f: RawFile) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    """Ids, titles ("Title (Year)" as GroupLens writes them), genre lists and line locations of `u.item`."""
    text = decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")
    ids, titles, genres, where = [], [], [], []
    n_fields = 5 + len(GENRES)
    joined: list[tuple[int, str]] = []  # (line, title) of titles that contained the separator
    for number, line in lines(text):
        fields, was_joined = _u_item_fields(line, f, number, n_fields)
        if was_joined:
            joined.append((number, fields[1]))
        ids.append(str(parse_int(fields[0], f.name, number, "movie id")))
        title = fields[1].strip()
        titles.append("unknown" if title.lower() in UNKNOWN_TITLES else title)
        flags = [x.strip() for x in fields[5:]]
        if not _FLAGS.issuperset(flags):
            bad = next(x for x in flags if x not in _FLAGS)
            raise DataError(f"{f.name} line {number}: genre flags must be 0 or 1, found {bad!r}")
        genres.append([g for g, x in zip(GENRES, flags) if x == "1" and g != "unknown"])
        where.append(f"{f.name} line {number}")
    if not ids:
        raise no_data_rows(f.name, "one line 'id|title|release date|video date|URL|19 genre flags' per movie")
    if joined:
        log.warning("%s: %d title(s) contain '|', the field separator (first: line %d, %r); read the fields "
                    "between the id and the release date as the title", f.name, len(joined), *joined[0])
    return ids, titles, genres, where


def load_grouplens_100k(u_data: RawFile, u_item: RawFile) -> RawData:
    users, items, times = read_u_data(u_data)
    ids, titles, genres, where = read_u_item(u_item)
    return make_raw(users, items, times, ids, titles, genres, where, files=[u_data, u_item])

