"""LastFM (HetRec 2011 `hetrec2011-lastfm-2k`): tab-separated files with a header line.

    user_taggedartists-timestamps.dat   userID  artistID  tagID  timestamp (milliseconds)   -- the default order
    user_artists.dat                    userID  artistID  weight                           -- no time at all
    artists.dat                         id  name  url  pictureURL                          -- titles
The tagging log gives one row per (user, artist, tag); the build step keeps each user's first tagging of an
artist. With `--lastfm-source listened` the sequence is the file order of user_artists.dat (its "timestamp"
is the line number), since that file has no times. Files are UTF-8 (latin-1 copies, and files mixing both line
by line, are read too).

The files have no quoting, and an artist name may contain a tab. The name is the only free-text column and the
columns after it are URLs, so the name is everything between the id and the first field from which on every
field is a URL (or empty): a name with a tab is read whole (the tab becomes a space) and the repair is logged.
A line whose URL columns are neither URLs nor empty is an error, never a name cut at the tab.
"""

from __future__ import annotations

import logging

from llmrec.data.raw import (
    RawData,
    RawFile,
    decode,
    lines,
    make_raw,
    no_data_rows,
    parse_int,
    parse_time,
    require_id,
    split_fields,
)
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)


def _body(f: RawFile, header_starts: str, expected: str) -> tuple[list[str], list[tuple[int, str]]]:
    """Header columns and the (line number, line) data rows; `expected` describes a data row for errors."""
    rows = list(lines(decode(f.read_bytes(), f.name, "utf-8", fallback="latin-1")))
    if not rows:
        raise no_data_rows(f.name, f"a header line {header_starts!r}, then {expected}", "the file is empty")
    header = rows[0][1].lstrip("\ufeff")
    if not header.startswith(header_starts):
        raise DataError(f"{f.name} line {rows[0][0]}: expected a header starting with {header_starts!r}, "
                        f"found {rows[0][1][:80]!r}")
    if len(rows) == 1:
        raise no_data_rows(f.name, expected, "only a header line")
    return header.split("\t"), rows[1:]


def _is_url(value: str) -> bool:
    v = value.strip()
    return not v or "://" in v or v.startswith("www.")


def _artist_fields(line: str, n_columns: int, f: RawFile, number: int) -> tuple[str, str, bool]:
    """(id, name, name had a tab) of one artists.dat line (see the module docstring)."""
    fields = line.split("\t")
    if len(fields) < 2:
        split_fields(line, "\t", 2, f.name, number, "id, name, url, pictureURL", at_least=True)  # raises
    n_after = n_columns - 2  # URL columns after the name
    start = next(j for j in range(2, len(fields) + 1) if all(_is_url(x) for x in fields[j:]))
    if start > 2 and len(fields) - start != n_after:
        # the fields after the name are not the URL columns the header announces: cannot tell which tabs
        # belong to the name
        shown = line if len(line) <= 120 else line[:117] + "..."
        raise DataError(f"{f.name} line {number}: expected {n_columns} tab-separated fields (id, name, then "
                        f"{n_after} URL field(s)), found {len(fields)} whose URL fields are not URLs: {shown!r}")
    return fields[0], " ".join(fields[1:start]), start > 2


def load_lastfm(log_file: RawFile, artists: RawFile) -> RawData:
    """`log_file` is user_taggedartists-timestamps.dat or user_artists.dat (chosen by its name)."""
    users, items, times = [], [], []
    name = log_file.name
    if log_file.basename.startswith("user_taggedartists"):
        _, rows = _body(log_file, "userID\tartistID\ttagID\ttimestamp",
                        "one line 'userID<TAB>artistID<TAB>tagID<TAB>timestamp' per tag")
        for number, line in rows:
            u, a, _tag, ts = split_fields(line, "\t", 4, name, number, "userID, artistID, tagID, timestamp")
            users.append(str(parse_int(u, name, number, "userID")))
            items.append(str(parse_int(a, name, number, "artistID")))
            times.append(parse_time(ts, name, number))
    else:
        _, rows = _body(log_file, "userID\tartistID", "one line 'userID<TAB>artistID<TAB>weight' per artist")
        for number, line in rows:
            u, a, _w = split_fields(line, "\t", 3, name, number, "userID, artistID, weight")
            users.append(str(parse_int(u, name, number, "userID")))
            items.append(str(parse_int(a, name, number, "artistID")))
            times.append(number)
    header, rows = _body(artists, "id\tname", "one line 'id<TAB>name<TAB>url<TAB>pictureURL' per artist")
    ids, titles, genres, where = [], [], [], []
    with_tab: list[tuple[int, str]] = []
    for number, line in rows:
        raw_id, title, had_tab = _artist_fields(line, len(header), artists, number)
        if had_tab:
            with_tab.append((number, title))
        ids.append(require_id(str(parse_int(raw_id, artists.name, number, "id")), artists.name, number, "id"))
        titles.append(title)
        genres.append([])
        where.append(f"{artists.name} line {number}")
    if with_tab:
        log.warning("%s: %d artist name(s) contain a tab, the field separator (first: line %d, %r); read the "
                    "fields between the id and the URLs as the name", artists.name, len(with_tab), *with_tab[0])
    return make_raw(users, items, times, ids, titles, genres, where, files=[log_file, artists])
