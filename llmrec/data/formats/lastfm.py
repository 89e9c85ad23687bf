"""LastFM (HetRec 2011 `hetrec2011-lastfm-2k`): tab-separated files with a header line.

    user_taggedartists-timestamps.dat   userID  artistID  tagID  timestamp (milliseconds)   -- the default order
    user_artists.dat                    userID  artistID  weight                           -- no time at all
    artists.dat                         id  name  url  pictureURL                          -- titles
The tagging log gives one row per (user, artist, tag); the build step keeps each user's first tagging of an
artist. With `--lastfm-source listened` the sequence is the file order of user_artists.dat (its "timestamp"
is the line number), since that file has no times. Files are UTF-8 (latin-1 copies are read too).
"""

from __future__ import annotations

from llmrec.data.raw import (
    RawData,
    RawFile,
    decode,
    lines,
    make_raw,
    parse_int,
    parse_number,
    require_id,
    split_fields,
)
from llmrec.errors import DataError


def _body(f: RawFile, header_starts: str) -> list[tuple[int, str]]:
    rows = list(lines(decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")))
    if not rows:
        raise DataError(f"{f.name} is empty; expected a header line and data lines")
    if not rows[0][1].lstrip("\ufeff").startswith(header_starts):
        raise DataError(f"{f.name} line {rows[0][0]}: expected a header starting with {header_starts!r}, "
                        f"found {rows[0][1][:80]!r}")
    return rows[1:]


def load_lastfm(log: RawFile, artists: RawFile) -> RawData:
    """`log` is user_taggedartists-timestamps.dat or user_artists.dat (chosen by its header)."""
    users, items, times = [], [], []
    tagged = log.basename.startswith("user_taggedartists")
    if tagged:
        for number, line in _body(log, "userID\tartistID\ttagID\ttimestamp"):
            u, a, _tag, ts = split_fields(line, "\t", 4, log.name, number, "userID, artistID, tagID, timestamp")
            users.append(str(parse_int(u, log.name, number, "userID")))
            items.append(str(parse_int(a, log.name, number, "artistID")))
            times.append(parse_number(ts, log.name, number, "timestamp"))
    else:
        for number, line in _body(log, "userID\tartistID"):
            u, a, _w = split_fields(line, "\t", 3, log.name, number, "userID, artistID, weight")
            users.append(str(parse_int(u, log.name, number, "userID")))
            items.append(str(parse_int(a, log.name, number, "artistID")))
            times.append(number)
    ids, titles, genres, where = [], [], [], []
    for number, line in _body(artists, "id\tname"):
        fields = split_fields(line, "\t", 2, artists.name, number, "id, name, url, pictureURL", at_least=True)
        ids.append(require_id(str(parse_int(fields[0], artists.name, number, "id")), artists.name, number, "id"))
        titles.append(fields[1])
        genres.append([])
        where.append(f"{artists.name} line {number}")
    return make_raw(users, items, times, ids, titles, genres, where, files=[log, artists])
