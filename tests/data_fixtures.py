"""Tiny synthetic datasets written in each real raw format (for the tests of `llmrec.data`).

One toy log, written in every format, so every loader must produce the same counts:
- users 1..10 have 8 interactions each with distinct items, at days 0..7, written to the file newest first
  (so the loaders must sort by time);
- user 11 has 3 interactions (dropped by the default --min-interactions 5);
- user 1's last two interactions share one timestamp (ties keep file order: item written first comes first);
- 40 catalog items; titles include "Matrix, The (1999)", a duplicated "Chasing Amy (1997)" and "Misérables, Les
  (1995)" (latin-1 in the GroupLens/ML-1M files).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd

from llmrec.data.dataset import ProcessedDataset
from llmrec.data.prepare import PrepareConfig, prepare

N_ITEMS = 40
N_USERS = 10
LENGTH = 8
DAY = 86400
T0 = 1_000_000_000 - 1_000_000_000 % DAY  # midnight UTC, so day-granular formats (Steam) keep the same order

TITLES: dict[int, str] = {i: f"Movie {i} (2000)" for i in range(1, N_ITEMS + 1)}
TITLES.update({1: "Toy Story (1995)", 2: "Matrix, The (1999)", 3: "Chasing Amy (1997)", 4: "Chasing Amy (1997)",
               5: "Misérables, Les (1995)", 6: "City of Lost Children, The (Cité des enfants perdus, La) (1995)"})
GENRES: dict[int, list[str]] = {i: (["Comedy"] if i % 2 else ["Drama", "Romance"]) for i in range(1, N_ITEMS + 1)}


def user_items(u: int) -> list[int]:
    """User u's items in time order (distinct, since 3 and 40 are coprime)."""
    n = LENGTH if u <= N_USERS else 3
    return [((u * 7 + j * 3) % N_ITEMS) + 1 for j in range(n)]


def toy_rows() -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) in file order: each user's interactions newest first."""
    rows = []
    for u in range(1, N_USERS + 2):
        items = user_items(u)
        times = [T0 + j * DAY for j in range(len(items))]
        if u == 1:  # a tie: the last two share a time; file order decides (item of j=6 written before j=7)
            times[7] = times[6]
            ordered = [(items[6], times[6]), (items[7], times[7])] + [(items[j], times[j]) for j in range(5, -1, -1)]
        else:
            ordered = [(items[j], times[j]) for j in range(len(items) - 1, -1, -1)]
        rows += [(u, i, 1 + (u + i) % 5, t) for i, t in ordered]
    return rows


def expected_sequences() -> dict[int, list[int]]:
    """Raw user id -> raw item ids in time order, for users kept at min_interactions 5."""
    return {u: user_items(u) for u in range(1, N_USERS + 1)}


def expected_items() -> set[int]:
    return {i for u in range(1, N_USERS + 1) for i in user_items(u)}


# ---------------------------------------------------------------------------------------------- writers
def write_grouplens_100k(folder: Path, rows=None, titles=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows), encoding="ascii")
    genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                   "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                   "Thriller", "War", "Western"]
    lines = []
    for i, title in titles.items():
        flags = ["1" if g in GENRES.get(i, []) else "0" for g in genre_names]
        lines.append("|".join([str(i), title, "01-Jan-1995", "", f"http://us.imdb.com/M/title-exact?{i}"] + flags))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def write_recbole_100k(folder: Path, rows=None, titles=None) -> Path:
    """RecBole atomic files exactly as in the recbole 1.2.1 wheel: typed header, year in its own column."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    (folder / "ml-100k.inter").write_text(inter, encoding="utf-8")
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    for i, title in titles.items():
        name, year = (title[:-7], title[-5:-1]) if title.endswith(")") and title[-5:-1].isdigit() else (title, "")
        item += f"{i}\t{name}\t{year}\t{' '.join(GENRES.get(i, []))}\n"
    (folder / "ml-100k.item").write_text(item, encoding="utf-8")
    return folder


def write_ml1m(folder: Path, rows=None, titles=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows), encoding="ascii")
    (folder / "movies.dat").write_bytes("".join(f"{i}::{t}::{'|'.join(GENRES.get(i, []))}\n"
                                                for i, t in titles.items()).encode("latin-1"))
    return folder


def steam_product(i: int) -> str:
    return str(10000 + i)


def write_steam(folder: Path, rows=None, titles=None, extra_games: list[dict] | None = None) -> Path:
    import datetime as dt

    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    with gzip.open(folder / "steam_reviews.json.gz", "wt", encoding="utf-8") as f:
        for u, i, _r, t in rows:
            day = dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat()
            rec = {"username": f"gamer {u}", "hours": 1.5, "products": 3, "product_id": steam_product(i),
                   "page_order": 0, "date": day, "text": "It's 'fun'", "early_access": False, "page": 1}
            f.write(repr(rec) + "\n")
    with gzip.open(folder / "steam_games.json.gz", "wt", encoding="utf-8") as f:
        for i, title in titles.items():
            rec = {"publisher": "Kotoshiro", "genres": GENRES.get(i, []), "app_name": title, "title": title,
                   "url": "http://store.steampowered.com/app/1", "release_date": "2018-01-04", "tags": ["Indie"],
                   "price": 4.99, "early_access": False, "id": steam_product(i), "developer": "K"}
            f.write(repr(rec) + "\n")
        for rec in extra_games or []:
            f.write(repr(rec) + "\n")
    return folder


def write_lastfm(folder: Path, rows=None, titles=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    tagged = "userID\tartistID\ttagID\ttimestamp\n"
    for u, i, _r, t in rows:  # two tags per (user, artist), as the real log has: one row per tag
        tagged += f"{u}\t{i}\t{7}\t{t * 1000}\n{u}\t{i}\t{9}\t{t * 1000}\n"
    (folder / "user_taggedartists-timestamps.dat").write_text(tagged, encoding="utf-8")
    # user_artists.dat: listening counts, no time; sequence = file order (oldest first here)
    listened = "userID\tartistID\tweight\n"
    for u in range(1, N_USERS + 2):
        listened += "".join(f"{u}\t{i}\t{100 + i}\n" for i in user_items(u))
    (folder / "user_artists.dat").write_text(listened, encoding="utf-8")
    artists = "id\tname\turl\tpictureURL\n" + "".join(
        f"{i}\t{t}\thttp://www.last.fm/music/{i}\thttp://userserve-ak.last.fm/{i}.jpg\n" for i, t in titles.items())
    (folder / "artists.dat").write_text(artists, encoding="utf-8")
    return folder


def write_custom(folder: Path, fmt: str = "csv", rows=None, titles=None) -> tuple[Path, Path]:
    """interactions.<fmt> (columns uid, iid, when: ISO dates) and items.<fmt> (iid, name, tags)."""
    import datetime as dt

    folder.mkdir(parents=True, exist_ok=True)
    rows = toy_rows() if rows is None else rows
    titles = TITLES if titles is None else titles
    inter = pd.DataFrame({"uid": [f"u{u:03d}" for u, *_ in rows], "iid": [str(i) for _, i, _, _ in rows],
                          "when": [dt.datetime.fromtimestamp(t, dt.UTC).isoformat() for *_, t in rows]})
    items = pd.DataFrame({"iid": [str(i) for i in titles], "name": list(titles.values()),
                          "tags": ["|".join(GENRES.get(i, [])) for i in titles]})
    paths = folder / f"interactions.{fmt}", folder / f"items.{fmt}"
    for df, p in zip((inter, items), paths):
        if fmt == "parquet":
            df.to_parquet(p, index=False)
        else:
            df.to_csv(p, sep="\t" if fmt == "tsv" else ",", index=False)
    return paths


CUSTOM_COLUMNS = {"user_column": "uid", "item_column": "iid", "time_column": "when", "title_column": "name",
                  "genres_column": "tags"}


def prepare_offline(dataset: str, raw: Path, out: Path, **options) -> ProcessedDataset:
    """`llmrec prepare` of the files in `raw` (never a download) into `out`, with any other `PrepareConfig` options."""
    return prepare(PrepareConfig(dataset=dataset, raw=raw, out=out, download=False, **options))


def write_text_id_log(folder: Path, n_items: int = 250, n_users: int = 60, length: int = 10) -> Path:
    """A custom log (interactions.csv, items.csv) whose item ids are text, `B00001` ... (never integers): n_users
    users of `length` items each, movie titles (one with an accent). Item B00040 is titled "B00003", another
    item's id, so that id-before-title resolution has something to decide."""
    words = ["Red", "Blue", "Night", "River", "Storm", "Garden", "City", "Moon", "Fire", "Glass", "Stone", "Wolf"]
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,time"] + [f"u{u},B{(u * 7 + j * 3) % n_items + 1:05d},{1_000_000 + j * 3600}"
                                 for u in range(n_users) for j in range(length)]
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    titles = {i: f"{words[i % 12]} {words[(i * 5 + 3) % 12]} ({1900 + i})" for i in range(1, n_items + 1)}
    titles.update({7: "Amélie (2001)", 40: "B00003"})
    items = ["item,title"] + [f"B{i:05d},{t}" for i, t in titles.items()]
    (folder / "items.csv").write_text("\n".join(items) + "\n", encoding="utf-8")
    return folder
