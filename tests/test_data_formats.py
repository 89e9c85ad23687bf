"""Raw-format loaders: each reads the same toy log written in its real format (tests/data_fixtures.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    CUSTOM_COLUMNS,
    N_USERS,
    T0,
    expected_items,
    expected_sequences,
    steam_product,
    toy_rows,
    write_custom,
    write_grouplens_100k,
    write_lastfm,
    write_ml1m,
    write_recbole_100k,
    write_steam,
)

from llmrec.data.formats.custom import CustomColumns, load_custom
from llmrec.data.formats.lastfm import load_lastfm
from llmrec.data.formats.movielens_1m import load_movielens_1m
from llmrec.data.formats.movielens_100k import load_grouplens_100k
from llmrec.data.formats.recbole import load_recbole_ml100k
from llmrec.data.formats.steam import load_steam
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.data.raw import RawFile
from llmrec.base.errors import DataError


def _f(path: Path) -> RawFile:
    return RawFile.from_path(path)


# ------------------------------------------------------------------------------------------- each format
def test_grouplens_100k_reads_u_data_and_latin1_u_item(tmp_path):
    d = write_grouplens_100k(tmp_path)
    raw = load_grouplens_100k(_f(d / "u.data"), _f(d / "u.item"))
    assert len(raw.interactions) == len(toy_rows()) == 83
    assert raw.interactions.iloc[0].tolist() == ["1", str(expected_sequences()[1][6]), T0 + 6 * 86400]
    items = raw.items.set_index("item")
    assert len(items) == 40
    assert items.loc["5", "title"] == "Misérables, Les (1995)"  # latin-1 decoded, normalised later
    assert items.loc["2", "genres"] == ["Drama", "Romance"]
    assert items.loc["1", "genres"] == ["Comedy"]


def test_recbole_atomic_files_typed_header_and_separate_year(tmp_path):
    d = write_recbole_100k(tmp_path)
    raw = load_recbole_ml100k(_f(d / "ml-100k.inter"), _f(d / "ml-100k.item"))
    assert len(raw.interactions) == 83
    items = raw.items.set_index("item")
    assert items.loc["2", "title"] == "Matrix, The (1999)"  # "Matrix, The" + release_year 1999
    assert items.loc["6", "title"] == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert items.loc["2", "genres"] == ["Drama", "Romance"]


def test_recbole_real_header_style_first_lines(tmp_path):
    """The exact first lines of the files in the recbole 1.2.1 wheel, including item 267's typo'd title."""
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                            "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        "267\tunkonwn\tunkonwn\tunknown\n")
    raw = load_recbole_ml100k(_f(tmp_path / "ml-100k.inter"), _f(tmp_path / "ml-100k.item"))
    assert raw.interactions.values.tolist() == [["196", "242", 881250949], ["186", "302", 891717742]]
    assert raw.items["title"].tolist() == ["Kolya (1996)", "L.A. Confidential (1997)", "unknown"]
    assert raw.items["genres"].tolist() == [["Comedy"], ["Crime", "Film-Noir", "Mystery", "Thriller"], []]


def test_movielens_1m(tmp_path):
    d = write_ml1m(tmp_path)
    raw = load_movielens_1m(_f(d / "ratings.dat"), _f(d / "movies.dat"))
    assert len(raw.interactions) == 83 and len(raw.items) == 40
    assert raw.items.set_index("item").loc["5", "title"] == "Misérables, Les (1995)"


def test_steam_python_literal_lines(tmp_path):
    d = write_steam(tmp_path, extra_games=[{"app_name": "No id game", "genres": ["Indie"]}])
    raw = load_steam(_f(d / "steam_reviews.json.gz"), _f(d / "steam_games.json.gz"))
    assert len(raw.interactions) == 83
    assert raw.interactions.iloc[0]["user"] == "gamer 1"
    assert raw.interactions.iloc[0]["timestamp"] == T0 + 6 * 86400  # the day at 00:00 UTC
    assert len(raw.items) == 40 and raw.dropped == {"games_without_id": 1}
    assert raw.items.set_index("item").loc[steam_product(2), "title"] == "Matrix, The (1999)"


def test_steam_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    d = write_steam(tmp_path)
    with gzip.open(d / "steam_games.json.gz", "at", encoding="utf-8") as f:
        f.write(f"__import__('pathlib').Path({str(marker)!r}).touch()\n")
    with pytest.raises(DataError, match=r"steam_games.json.gz line 41: not a Python-literal dict"):
        load_steam(_f(d / "steam_reviews.json.gz"), _f(d / "steam_games.json.gz"))
    assert not marker.exists()


def test_lastfm_tagged_and_listened(tmp_path):
    d = write_lastfm(tmp_path)
    tagged = load_lastfm(_f(d / "user_taggedartists-timestamps.dat"), _f(d / "artists.dat"))
    assert len(tagged.interactions) == 2 * 83  # one row per tag; repeats are removed by the build step
    assert tagged.interactions.iloc[0]["timestamp"] == (T0 + 6 * 86400) * 1000  # milliseconds kept
    listened = load_lastfm(_f(d / "user_artists.dat"), _f(d / "artists.dat"))
    assert len(listened.interactions) == 83
    assert listened.interactions["timestamp"].is_monotonic_increasing  # file order
    assert len(tagged.items) == 40


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_custom_formats(tmp_path, fmt):
    inter, items = write_custom(tmp_path, fmt)
    raw = load_custom(inter, items, CustomColumns(user="uid", item="iid", time="when", title="name",
                                                  genres="tags"))
    assert len(raw.interactions) == 83 and len(raw.items) == 40
    assert raw.interactions.iloc[0]["timestamp"] == T0 + 6 * 86400  # ISO text -> unix seconds
    assert raw.items.set_index("item").loc["2", "genres"] == ["Drama", "Romance"]


# --------------------------------------------------- the same data through every format gives the same tables
@pytest.mark.parametrize("dataset,writer,extra", [
    ("ml-100k", write_grouplens_100k, {}), ("ml-100k", write_recbole_100k, {}), ("ml-1m", write_ml1m, {}),
    ("steam", write_steam, {}), ("lastfm", write_lastfm, {}), ("lastfm", write_lastfm, {"lastfm_source": "listened"}),
    ("custom", lambda d: write_custom(d, "csv"), CUSTOM_COLUMNS)])
def test_every_format_gives_the_same_sequences(tmp_path, dataset, writer, extra):
    writer(tmp_path / "raw")
    ds = prepare(PrepareConfig(dataset=dataset, raw=tmp_path / "raw", out=tmp_path / "out", protocol="loo",
                               download=False, **extra))
    assert (ds.n_users, ds.n_items, ds.meta["n_interactions"]) == (N_USERS, len(expected_items()), 80)
    assert ds.meta["dropped"]["users_below_min_interactions"] == 1
    titles = ds.titles()
    # compare sequences by title (ids differ between formats, titles do not)
    raw_titles = dict(zip(ds.items["raw_id"], ds.items["title"]))
    got = sorted(tuple(titles[i] for i in seq) for seq in ds.user_sequences().values())
    ref = prepare(PrepareConfig(dataset="ml-100k", raw=write_grouplens_100k(tmp_path / "ref"),
                                out=tmp_path / "ref-out", protocol="loo", download=False))
    want = sorted(tuple(ref.titles()[i] for i in seq) for seq in ref.user_sequences().values())
    assert got == want
    assert "The Matrix (1999)" in raw_titles.values()


def test_ties_keep_file_order(tmp_path):
    ds = prepare(PrepareConfig(dataset="ml-100k", raw=write_grouplens_100k(tmp_path / "raw"),
                               out=tmp_path / "out", protocol="loo", download=False))
    # raw ids are numeric, so contiguous ids follow them: ML ids are kept (user 1 -> 1, item i -> i)
    assert ds.user_sequence(1).tolist() == expected_sequences()[1]
    assert ds.interactions["timestamp"].dtype == np.int64
