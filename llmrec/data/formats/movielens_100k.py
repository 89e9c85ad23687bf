"""MovieLens-100K in the GroupLens format: `u.data` and `u.item`.

    u.data   tab-separated: user id, item id, rating, unix timestamp (seconds)
    u.item   '|'-separated, latin-1: id | title | release date | video release date | IMDb URL | 19 genre flags

Every rating counts as an interaction (implicit feedback, as LLaRA and RecBole use ML-100K); the rating value
is not kept. The genre flag "unknown" means "no genre" and is not listed as a genre. Item 267 has the title
"unknown" in u.item (and "unkonwn" in RecBole's copy); both loaders give it the title "unknown" so that the two
sources produce the same catalog.
"""

from __future__ import annotations

from llmrec.data.raw import (
    RawData,
    RawFile,
    decode,
    lines,
    make_raw,
    parse_int,
    split_fields,
)
from llmrec.errors import DataError

GENRES: tuple[str, ...] = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                           "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                           "Romance", "Sci-Fi", "Thriller", "War", "Western")
UNKNOWN_TITLES = {"unknown", "unkonwn"}


def read_u_data(f: RawFile) -> tuple[list[str], list[str], list[int]]:
    """Users, items and timestamps of `u.data`, in file order."""
    text = decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")
    users, items, times = [], [], []
    for number, line in lines(text):
        user, item, _rating, ts = split_fields(line, "\t", 4, f.name, number, "user, item, rating, timestamp")
        users.append(str(parse_int(user, f.name, number, "user")))
        items.append(str(parse_int(item, f.name, number, "item")))
        times.append(parse_int(ts, f.name, number, "timestamp"))
    return users, items, times


def read_u_item(f: RawFile) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    """Ids, titles ("Title (Year)" as GroupLens writes them), genre lists and line locations of `u.item`."""
    text = decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")
    ids, titles, genres, where = [], [], [], []
    n_fields = 5 + len(GENRES)
    for number, line in lines(text):
        fields = split_fields(line, "|", n_fields, f.name, number,
                              "id, title, release date, video date, URL and 19 genre flags")
        ids.append(str(parse_int(fields[0], f.name, number, "movie id")))
        title = fields[1].strip()
        titles.append("unknown" if title.lower() in UNKNOWN_TITLES else title)
        flags = fields[5:]
        bad = [x for x in flags if x.strip() not in ("0", "1")]
        if bad:
            raise DataError(f"{f.name} line {number}: genre flags must be 0 or 1, found {bad[0]!r}")
        genres.append([g for g, x in zip(GENRES, flags) if x.strip() == "1" and g != "unknown"])
        where.append(f"{f.name} line {number}")
    return ids, titles, genres, where


def load_grouplens_100k(u_data: RawFile, u_item: RawFile) -> RawData:
    users, items, times = read_u_data(u_data)
    ids, titles, genres, where = read_u_item(u_item)
    return make_raw(users, items, times, ids, titles, genres, where, files=[u_data, u_item])

