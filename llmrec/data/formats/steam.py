"""Steam (Kang & McAuley, "Self-attentive sequential recommendation", 2018): `steam_reviews.json.gz` and
`steam_games.json.gz`, gzip files with one Python-literal dict per line (single quotes, True/False), so each
line is parsed with `ast.literal_eval` -- never `eval`.

    reviews   {'username': ..., 'product_id': '725280', 'date': '2017-12-17', ...}   user, item, day
    games     {'id': '761140', 'app_name': ..., 'title': ..., 'genres': [...], ...}
A review's time is its day (unix seconds at 00:00 UTC); reviews of the same day keep file order. A game's title
is `app_name`, else `title`; a game line without an `id` cannot be linked to reviews and is skipped (counted as
`games_without_id`), and so is a review without a username, product_id or date (`reviews_missing_fields`); both
counts are logged and stored in meta.json. A line that is not a dict literal, or a malformed date, is an error.
Parsing the full 7.8M-review file takes a few minutes (literal_eval is slow but safe).
"""

from __future__ import annotations

import ast
import gzip
import logging
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from llmrec.data.raw import RawData, RawFile, make_raw, no_data_rows
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)


def _records(f: RawFile) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, dict) per non-blank line; DataError names the file and line of anything else."""
    try:
        with f.open_binary() as fb, gzip.open(fb, "rb") as gz:
            for number, raw in enumerate(gz, 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{f.name} line {number}: byte 0x{raw[e.start]:02x} is not valid UTF-8 "
                                    f"text; expected UTF-8") from None
                try:
                    value = ast.literal_eval(text.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                    shown = text.strip()[:100]
                    raise DataError(f"{f.name} line {number}: not a Python-literal dict ({shown!r}...); "
                                    f"expected one {{'key': value, ...}} per line") from None
                if not isinstance(value, dict):
                    raise DataError(f"{f.name} line {number}: expected a dict, found a "
                                    f"{type(value).__name__}")
                yield number, value
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{f.name}: not a readable gzip file ({e}); expected the gzip-compressed file as "
                        f"downloaded") from None


REVIEW_FIELDS = ("username", "product_id", "date")


def _text(value: Any) -> str:
    """A field as text; a missing value (absent, None, empty) is "" (0 is a value, not a missing one)."""
    return "" if value is None else str(value).strip()


def load_steam(reviews: RawFile, games: RawFile) -> RawData:
    users, items, times = [], [], []
    day_seconds: dict[str, int] = {}
    incomplete, first_incomplete = 0, ""
    n_reviews = 0
    for number, rec in _records(reviews):
        n_reviews += 1
        values = [_text(rec.get(k)) for k in REVIEW_FIELDS]
        if not all(values):  # cannot be placed in a sequence: counted, reported, skipped
            incomplete += 1
            first_incomplete = first_incomplete or (
                f"{reviews.name} line {number} has no {REVIEW_FIELDS[values.index('')]!r}")
            continue
        user, item, day = values
        users.append(user)
        items.append(item)
        if day not in day_seconds:
            try:
                d = date.fromisoformat(day)
            except ValueError:
                raise DataError(f"{reviews.name} line {number}: field 'date' is {day!r}, expected YYYY-MM-DD") \
                    from None
            day_seconds[day] = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
        times.append(day_seconds[day])
    if not users:
        raise no_data_rows(reviews.name, "one review dict with 'username', 'product_id' and 'date' per line",
                           f"all {n_reviews} review(s) lack one of them; first: {first_incomplete}" if n_reviews
                           else "the file holds no review")
    ids, titles, genres, where = [], [], [], []
    no_id = 0
    n_games = 0
    for number, rec in _records(games):
        n_games += 1
        gid = _text(rec.get("id"))
        if not gid:
            no_id += 1
            continue
        ids.append(gid)
        title = _text(rec.get("app_name")) or _text(rec.get("title"))
        titles.append(title)
        g = rec.get("genres") or []
        genres.append([str(x) for x in g if x is not None] if isinstance(g, (list, tuple)) else [str(g)])
        where.append(f"{games.name} line {number}")
    if not ids:
        raise no_data_rows(games.name, "one game dict with an 'id' per line",
                           f"all {n_games} game(s) lack an 'id'" if n_games else "the file holds no game")
    if incomplete:
        log.warning("skipped %d review(s) without a username, product_id or date (first: %s)", incomplete,
                    first_incomplete)
    if no_id:
        log.warning("skipped %d game(s) without an id in %s", no_id, games.name)
    dropped = {k: v for k, v in (("reviews_missing_fields", incomplete), ("games_without_id", no_id)) if v}
    return make_raw(users, items, times, ids, titles, genres, where, files=[reviews, games], dropped=dropped)
