"""MovieLens-1M in the GroupLens format: `ratings.dat` and `movies.dat`.

    ratings.dat   user::item::rating::timestamp
    movies.dat    id::title::genre|genre|...      (latin-1; UTF-8 copies are read too)
Every rating counts as an interaction; the rating value is not kept.
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


def load_movielens_1m(ratings: RawFile, movies: RawFile) -> RawData:
    text = decode(ratings.read_bytes(), ratings.name, "utf-8", fallback="latin-1")
    users, items, times = [], [], []
    for number, line in lines(text):
        user, item, _rating, ts = split_fields(line, "::", 4, ratings.name, number,
                                               "user, item, rating, timestamp")
        users.append(str(parse_int(user, ratings.name, number, "user")))
        items.append(str(parse_int(item, ratings.name, number, "item")))
        times.append(parse_int(ts, ratings.name, number, "timestamp"))
    text = decode(movies.read_bytes(), movies.name, "utf-8", fallback="latin-1")
    ids, titles, genres, where = [], [], [], []
    for number, line in lines(text):
        mid, title, g = split_fields(line, "::", 3, movies.name, number, "id, title, genres")
        ids.append(str(parse_int(mid, movies.name, number, "movie id")))
        titles.append(title)
        genres.append([x for x in g.strip().split("|") if x and x != "(no genres listed)"])
        where.append(f"{movies.name} line {number}")
    return make_raw(users, items, times, ids, titles, genres, where, files=[ratings, movies])
