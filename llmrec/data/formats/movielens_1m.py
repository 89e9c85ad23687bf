"""MovieLens-1M in the GroupLens format: `ratings.dat` and `movies.dat`.

    ratings.dat   user::item::rating::timestamp
    movies.dat    id::title::genre|genre|...      (latin-1; UTF-8 copies, and files mixing both, are read too)
Every rating counts as an interaction; the rating value is not kept.

The format has no quoting, so a title containing '::' gives a line with too many fields. The last field is the
genre list and every title ends with its year, so when the last field still reads as a genre list (words such
as "Children's" or "Sci-Fi" joined by '|') and the field before it ends with "(1995)", the extra fields belong
to the title: it is read whole and the repair is logged; otherwise the line is an error.
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

log = logging.getLogger(__name__)

# a genre list: "Animation|Children's|Comedy", "(no genres listed)", or empty; never digits or a "(1995)" year
_GENRE_LIST = re.compile(r"^\s*(\(no genres listed\)|[A-Za-z][A-Za-z' -]*(\|[A-Za-z][A-Za-z' -]*)*)?\s*$")
_ENDS_WITH_YEAR = re.compile(r"\(\d{4}\)\s*$")


def _movie_fields(line: str, f: RawFile, number: int) -> tuple[list[str], bool]:
    """id, title, genres of one movies.dat line; a title containing '::' is joined back (module docstring)."""
    fields = line.split("::")
    if len(fields) > 3 and _GENRE_LIST.match(fields[-1]) and _ENDS_WITH_YEAR.search(fields[-2]):
        return [fields[0], "::".join(fields[1:-1]), fields[-1]], True
    return split_fields(line, "::", 3, f.name, number, "id, title, genres"), False


def load_movielens_1m(ratings: RawFile, movies: RawFile) -> RawData:
    text = decode(ratings.read_bytes(), ratings.name, "utf-8", fallback="latin-1")
    users, items, times = [], [], []
    for number, line in lines(text):
        user, item, _rating, ts = split_fields(line, "::", 4, ratings.name, number,
                                               "user, item, rating, timestamp")
        users.append(str(parse_int(user, ratings.name, number, "user")))
        items.append(str(parse_int(item, ratings.name, number, "item")))
        times.append(parse_time(ts, ratings.name, number, integer=True))
    if not users:
        raise no_data_rows(ratings.name, "one line 'user::item::rating::timestamp' per rating")
    text = decode(movies.read_bytes(), movies.name, "utf-8", fallback="latin-1")
    ids, titles, genres, where = [], [], [], []
    joined: list[tuple[int, str]] = []
    for number, line in lines(text):
        (mid, title, g), was_joined = _movie_fields(line, movies, number)
        if was_joined:
            joined.append((number, title))
        ids.append(str(parse_int(mid, movies.name, number, "movie id")))
        titles.append(title)
        genres.append([x for x in g.strip().split("|") if x and x != "(no genres listed)"])
        where.append(f"{movies.name} line {number}")
    if not ids:
        raise no_data_rows(movies.name, "one line 'id::title::genre|genre|...' per movie")
    if joined:
        log.warning("%s: %d title(s) contain '::', the field separator (first: line %d, %r); read the fields "
                    "between the id and the genre list as the title", movies.name, len(joined), *joined[0])
    return make_raw(users, items, times, ids, titles, genres, where, files=[ratings, movies])
